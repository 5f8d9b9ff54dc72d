"""Standalone draft server, for a draft on another node (or started apart from the target server).

    python -m sglang_ssd.draft_server --model-path DRAFT --endpoint tcp://0.0.0.0:5557 \\
        --allow-remote --curve-keys KEYDIR
    python -m sglang_ssd.launch_server ... --speculative-algorithm SSD \\
        --speculative-draft-model-path DRAFT --ssd-draft-endpoint tcp://DRAFT_HOST:5557 \\
        --ssd-curve-keys KEYDIR

It binds the endpoint and waits for a worker's Hello, which carries K, the fan-out and the backup
policy; the model, device and KV pool are this server's own. One worker at a time: a new Hello
(a restarted target) starts a clean session. With `--replicas N` it serves N data-parallel target
replicas, replica i on endpoint_for_replica(ENDPOINT, i), each by its own process and model.
"""

from __future__ import annotations

import argparse
import ipaddress
import logging
import os
import signal
import subprocess
import sys

import zmq

from sglang_ssd import wire
from sglang_ssd.config import choose_draft_dtype, endpoint_arg, endpoint_for_replica, parse_endpoint

logger = logging.getLogger("sglang_ssd.draft")


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m sglang_ssd.draft_server", description=__doc__.split("\n\n")[0])
    p.add_argument("--model-path", help="draft model directory (same tokenizer as the target)")
    p.add_argument("--endpoint", type=endpoint_arg("--endpoint"), help="ipc://PATH or tcp://HOST:PORT to bind")
    p.add_argument("--device", default=None, help="cpu, cuda or cuda:N (default: cuda:0 if present, else cpu)")
    p.add_argument("--dtype", default=None, choices=["float32", "float16", "bfloat16", "int8"])
    p.add_argument("--kv-tokens", type=int, default=65536, help="KV slots in the draft's pool")
    p.add_argument("--threads", type=int, default=None, help="torch threads (CPU)")
    p.add_argument("--engine", default="hf", choices=["hf", "sglang"])
    p.add_argument("--curve-keys", default=None, metavar="DIR",
                   help="require CurveZMQ with the keys in DIR (made by --make-curve-keys)")
    p.add_argument("--allow-remote", action="store_true", help="allow binding a non-loopback address")
    p.add_argument("--replicas", type=int, default=1, help="serve N data-parallel target replicas")
    p.add_argument("--make-curve-keys", metavar="DIR", default=None,
                   help="write a server and a client key pair into DIR and exit")
    return p


def _is_loopback(endpoint: str) -> bool:
    kind, host, _ = parse_endpoint(endpoint)
    if kind == "ipc" or host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _check(args, p: argparse.ArgumentParser) -> None:
    if not args.model_path or not args.endpoint:
        p.error("--model-path and --endpoint are required")
    if not os.path.isdir(args.model_path):
        p.error(f"--model-path={args.model_path!r}: no such directory")
    if args.replicas < 1:
        p.error(f"--replicas={args.replicas}: must be >= 1")
    if args.kv_tokens < 256:
        p.error(f"--kv-tokens={args.kv_tokens}: must be >= 256")
    if not _is_loopback(args.endpoint) and not args.allow_remote:
        p.error(f"--endpoint={args.endpoint!r}: not a loopback address; pass --allow-remote to opt in")
    if args.curve_keys:
        from sglang_ssd.curve import CurveKeyError, check_dir

        try:
            check_dir(args.curve_keys, "--curve-keys", "server")
        except CurveKeyError as e:
            p.error(str(e))


def _serve_one(args) -> int:
    import torch

    from sglang_ssd.draft_process import load_model
    from sglang_ssd.draft_service import DraftService, serve

    device = args.device or ("cuda:0" if torch.cuda.is_available() else "cpu")
    dtype = choose_draft_dtype(args.dtype, device, "bfloat16", args.model_path, args.engine)
    if dtype == "int8" and (args.engine != "hf" or device != "cpu"):
        raise SystemExit(f"--dtype int8 is a CPU draft's dtype with --engine hf (got --engine {args.engine}, "
                         f"--device {device})")
    if args.threads:
        torch.set_num_threads(args.threads)
    elif device == "cpu":
        torch.set_num_threads(1)
    model = load_model(args.model_path, device, dtype, args.kv_tokens, args.engine)
    ctx = zmq.Context()
    sock = ctx.socket(zmq.PAIR)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.MAXMSGSIZE, wire.MAX_TO_DRAFT_BYTES)
    auth = None
    if args.curve_keys:
        from sglang_ssd.curve import as_server

        auth = as_server(ctx, sock, args.curve_keys)
    elif not _is_loopback(args.endpoint):
        logger.warning("serving %s without --curve-keys: traffic is unencrypted and unauthenticated",
                       args.endpoint)
    sock.bind(args.endpoint)
    service = DraftService(model, args.model_path)
    print(f"sglang-ssd draft server ready on {args.endpoint} (pid {os.getpid()}, {device})", flush=True)
    try:
        return serve(sock, service, exit_on_shutdown=False)
    finally:
        sock.close(0)
        if auth is not None:
            auth.stop()
        ctx.term()


def _serve_replicas(args, base: list[str]) -> int:
    procs = []
    for i in range(args.replicas):
        argv = _replace(base, "--endpoint", endpoint_for_replica(args.endpoint, i))
        argv = _replace(argv, "--replicas", "1")
        procs.append(subprocess.Popen([sys.executable, "-m", "sglang_ssd.draft_server", *argv]))

    def stop(signum, frame):
        for pr in procs:
            if pr.poll() is None:
                pr.terminate()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    codes = [pr.wait() for pr in procs]
    return max(codes)


def _replace(argv: list[str], flag: str, value: str) -> list[str]:
    out, skip = [], False
    for i, a in enumerate(argv):
        if skip:
            skip = False
            continue
        if a == flag:
            skip = True
            continue
        if a.startswith(flag + "="):
            continue
        out.append(a)
    return out + [flag, value]


def main(argv=None) -> int:
    p = _parser()
    raw = sys.argv[1:] if argv is None else list(argv)
    args = p.parse_args(raw)
    if args.make_curve_keys:
        from sglang_ssd.curve import make_keys

        for f in make_keys(args.make_curve_keys):
            print(f)
        return 0
    _check(args, p)
    logging.basicConfig(level=logging.INFO, format="[%(asctime)s ssd-draft-server] %(message)s")

    def on_term(signum, frame):
        raise SystemExit(0)

    signal.signal(signal.SIGTERM, on_term)
    if args.replicas > 1:
        return _serve_replicas(args, raw)
    return _serve_one(args)


if __name__ == "__main__":
    sys.exit(main())
