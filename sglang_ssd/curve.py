"""CurveZMQ for a draft reached over TCP: encryption, and only the holder of the client key may talk.

One key directory serves both ends (copy it to the draft's node): `server.key` / `server.key_secret`
for the draft server, `client.key` / `client.key_secret` for the SSD worker, made by
`python -m sglang_ssd.draft_server --make-curve-keys DIR`. The draft server runs a ZAP
authenticator that admits only the public client keys found in DIR.
"""

from __future__ import annotations

import os
from pathlib import Path

import zmq

FILES = ("server.key", "server.key_secret", "client.key", "client.key_secret")


class CurveKeyError(ValueError):
    pass


def make_keys(directory: str) -> list[str]:
    """Create a fresh server and client key pair in `directory` (0700; secrets 0600)."""
    import zmq.auth

    if not zmq.has("curve"):
        raise CurveKeyError("this libzmq has no CURVE support")
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    os.chmod(d, 0o700)
    for name in ("server", "client"):
        _, secret = zmq.auth.create_certificates(str(d), name)
        os.chmod(secret, 0o600)
    return [str(d / f) for f in FILES]


def check_dir(directory: str, flag: str, side: str) -> None:
    """Raise CurveKeyError naming `flag` when `directory` lacks what `side` needs."""
    need = ("server.key_secret", "client.key") if side == "server" else ("server.key", "client.key_secret")
    missing = [n for n in need if not (Path(directory) / n).is_file()]
    if missing:
        raise CurveKeyError(f"{flag}={directory!r}: missing {', '.join(missing)} "
                            "(make them with python -m sglang_ssd.draft_server --make-curve-keys DIR)")


def _load(path: Path):
    import zmq.auth

    return zmq.auth.load_certificate(str(path))


def as_server(ctx: zmq.Context, sock: zmq.Socket, directory: str):
    """Make `sock` a CURVE server admitting only DIR's client keys; returns the authenticator
    (keep it alive; stop() it on close)."""
    from zmq.auth.thread import ThreadAuthenticator

    d = Path(directory)
    auth = ThreadAuthenticator(ctx)
    auth.start()
    auth.configure_curve(domain="*", location=_client_keys_dir(d))
    public, secret = _load(d / "server.key_secret")
    sock.curve_secretkey = secret
    sock.curve_publickey = public
    sock.curve_server = True
    return auth


def _client_keys_dir(d: Path) -> str:
    """A directory holding only the public client key, so the server key is not also admitted."""
    sub = d / ".authorized"
    sub.mkdir(mode=0o700, exist_ok=True)
    target = sub / "client.key"
    target.write_bytes((d / "client.key").read_bytes())
    return str(sub)


def as_client(sock: zmq.Socket, directory: str) -> None:
    d = Path(directory)
    public, secret = _load(d / "client.key_secret")
    server_public, _ = _load(d / "server.key")
    sock.curve_publickey = public
    sock.curve_secretkey = secret
    sock.curve_serverkey = server_public
