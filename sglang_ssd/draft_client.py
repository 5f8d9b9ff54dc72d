"""Worker-side handle on the draft: start or reach it, talk to it, restart it, stop it.

Two ways to have a draft:
- spawned (default): the worker binds an ipc:// socket in a fresh private 0700 directory, starts
  `python -m sglang_ssd.draft_process` which connects, and removes the socket file and directory
  as soon as the draft said Ready (the connection outlives them), so nothing is left on disk even
  if the server is killed. The draft dies with its parent (PR_SET_PDEATHSIG) and on close().
- external (`--ssd-draft-endpoint`): the worker connects to a draft server started apart
  (draft_server.py), optionally over CurveZMQ, and opens a session with a Hello.
A round that gets no valid answer in time returns None and the worker serves it without the
draft. A draft that died or stopped answering is dropped (killed, or disconnected) and reached
again with exponential backoff on a fresh socket, so nothing the old one sent can arrive later;
`generation` counts drafts that became ready, so the worker knows to resync. Malformed or stale
messages from the draft are dropped and counted (`rejected`), never trusted and never fatal.
"""

from __future__ import annotations

import atexit
import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from typing import Callable, Optional

import zmq

from sglang_ssd import wire

logger = logging.getLogger(__name__)

BACKOFF_START_S = 1.0
BACKOFF_MAX_S = 30.0


class DraftStartError(RuntimeError):
    pass


class DraftClient:
    def __init__(self, *, model_path: str, k: int, fanout: list[int], backup: str,
                 backup_batch_threshold: int, device: str, dtype: str, kv_tokens: int,
                 threads: Optional[int], endpoint: Optional[str], timeout_s: float,
                 start_timeout_s: float, saguaro_c: float = 1.0,
                 fanout_budget: Optional[int] = None, auto_budget: bool = False, engine: str = "hf",
                 curve_keys: Optional[str] = None, max_reply_bytes: int = -1,
                 check_ready: Optional[Callable[[wire.Ready], Optional[str]]] = None,
                 cpus: Optional[list[int]] = None):
        self.timeout_s = timeout_s
        self.external = endpoint is not None
        self.endpoint = endpoint
        self._curve_keys = curve_keys
        self._max_reply = max_reply_bytes
        self._conf = dict(model_path=model_path, k=k, fanout=fanout, backup=backup,
                          backup_batch_threshold=backup_batch_threshold, device=device, dtype=dtype,
                          kv_tokens=kv_tokens, threads=threads, saguaro_c=saguaro_c,
                          fanout_budget=fanout_budget, auto_budget=auto_budget, engine=engine,
                          cpus=list(cpus) if cpus else None)  # a spawned CPU draft's cores (cpu_cores.py)
        self._check_ready = check_ready
        self._ctx = zmq.Context()
        self._sock = None
        self._dir: Optional[str] = None
        self.proc: Optional[subprocess.Popen] = None
        self.pid: Optional[int] = None
        self._closed = False
        self.generation = 0  # drafts that became ready so far
        self.restarts = 0
        self.rejected = 0  # messages from the draft dropped as malformed or stale
        self._backoff = BACKOFF_START_S
        self._restart_at: Optional[float] = None
        self._ready = False
        self._session = ""
        self._hello_pending = False
        atexit.register(self.close)
        self._start()
        self.ready = self._await_ready(start_timeout_s)

    # ---- reaching a draft ----------------------------------------------------------------------
    def _new_socket(self) -> zmq.Socket:
        if self._sock is not None:
            self._sock.close(0)
        sock = self._ctx.socket(zmq.PAIR)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.MAXMSGSIZE, self._max_reply)
        self._sock = sock
        return sock

    def _start(self) -> None:
        self._ready = False
        if self.external:
            self._connect()
        else:
            self._spawn()

    def _spawn(self) -> None:
        self._remove_dir()
        self._dir = tempfile.mkdtemp(prefix="sglang-ssd-")
        os.chmod(self._dir, 0o700)
        endpoint = f"ipc://{os.path.join(self._dir, 'draft.sock')}"
        self._new_socket().bind(endpoint)
        conf = dict(self._conf, endpoint=endpoint, socket_dir=self._dir)
        self.proc = subprocess.Popen([sys.executable, "-m", "sglang_ssd.draft_process", json.dumps(conf)])
        self.pid = self.proc.pid

    def _connect(self) -> None:
        sock = self._new_socket()
        if self._curve_keys:
            from sglang_ssd.curve import as_client

            as_client(sock, self._curve_keys)
        sock.connect(self.endpoint)
        self._session = uuid.uuid4().hex
        self._hello_pending = True
        self._send_hello()

    def _send_hello(self) -> None:
        """Queue the Hello; under CURVE the socket takes it only once the handshake is done."""
        c = self._conf
        hello = wire.Hello(protocol=wire.PROTOCOL_VERSION, session=self._session, k=c["k"],
                           fanout=list(c["fanout"]), backup=c["backup"],
                           backup_batch_threshold=c["backup_batch_threshold"],
                           saguaro_c=c["saguaro_c"], fanout_budget=c["fanout_budget"],
                           auto_budget=bool(c["auto_budget"]))
        try:
            self._sock.send(wire.encode(hello), zmq.NOBLOCK)
            self._hello_pending = False
        except zmq.Again:
            pass

    def _remove_dir(self) -> None:
        if self._dir:
            shutil.rmtree(self._dir, ignore_errors=True)
            self._dir = None

    def _exited(self) -> Optional[int]:
        return None if self.external else self.proc.poll()

    def _take_ready(self, msg) -> Optional[wire.Ready]:
        """The Ready that ends a start, None for a message to ignore; raises for a refusal."""
        if isinstance(msg, wire.Fatal):
            raise DraftStartError(f"SSD draft failed to start: {msg.error}")
        if not isinstance(msg, wire.Ready) or (self.external and msg.session != self._session):
            self.rejected += 1
            return None
        if msg.protocol != wire.PROTOCOL_VERSION:
            raise DraftStartError(f"SSD draft speaks protocol {msg.protocol}, worker {wire.PROTOCOL_VERSION}")
        problem = self._check_ready(msg) if self._check_ready else None
        if problem:
            raise DraftStartError(problem)
        self._ready = True
        self.generation += 1
        self.pid = msg.pid
        self._backoff = BACKOFF_START_S
        if not self.external:
            self._remove_dir()  # connected: the socket file has done its job
        return msg

    def _poll_ready(self, timeout_ms: int) -> Optional[wire.Ready]:
        if self._hello_pending:
            self._send_hello()
        if not self._sock.poll(timeout_ms):
            return None
        try:
            return self._take_ready(wire.decode_from_draft(self._sock.recv()))
        except wire.WireError:
            self.rejected += 1
            return None

    def _await_ready(self, timeout_s: float) -> wire.Ready:
        deadline = time.monotonic() + timeout_s
        where = f" at {self.endpoint}" if self.external else ""
        try:
            while time.monotonic() < deadline:
                ready = self._poll_ready(200)
                if ready is not None:
                    return ready
                if self._exited() is not None:
                    raise DraftStartError(
                        f"SSD draft process exited with code {self.proc.returncode} while loading")
            raise DraftStartError(
                f"SSD draft{where} not ready within --ssd-draft-start-timeout={timeout_s:g}s")
        except DraftStartError:
            self.close()
            raise

    def _fail(self, why: str) -> None:
        """Drop the current draft (dead, hung or lying) and schedule reaching it again."""
        if self._restart_at is not None:
            return
        logger.error("SSD draft unavailable (%s): serving without it, retry in %.0fs", why, self._backoff)
        if not self.external and self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                pass
        self._ready = False
        # Close the socket now: left open, a TCP PAIR socket reconnects by itself to a draft server
        # restarted on the same port and delivers the Steps still queued in it, before any Hello
        # (the server refuses them, "no session", and its one PAIR peer is then the stale socket).
        if self._sock is not None:
            self._sock.close(0)
            self._sock = None
        self._restart_at = time.monotonic() + self._backoff
        self._backoff = min(self._backoff * 2, BACKOFF_MAX_S)

    def _recover(self) -> bool:
        """Progress a restart without blocking; True once a draft is ready."""
        if self._ready:
            return True
        if self._restart_at is not None:
            if time.monotonic() < self._restart_at:
                return False
            self._restart_at = None
            self.restarts += 1
            self._start()
            return False
        if self._exited() is not None:
            self._fail(f"exit code {self.proc.returncode} while loading")
            return False
        try:
            if self._poll_ready(0) is not None:
                logger.info("SSD draft %s ready again (restart %d)", self.pid, self.restarts)
                return True
        except DraftStartError as e:
            self._fail(str(e))
        return False

    @property
    def alive(self) -> bool:
        return not self._closed and self._ready and self._exited() is None

    # ---- rounds ------------------------------------------------------------------------------
    def step(self, msg: wire.Step) -> Optional[wire.StepReply]:
        """Send one round; the reply for it, or None (dead, late, restarting draft)."""
        if self._closed or not self._recover():
            return None
        if self._exited() is not None:
            self._fail(f"exit code {self.proc.returncode}")
            return None
        try:
            self._sock.send(wire.encode(msg), zmq.NOBLOCK)
        except zmq.ZMQError as e:
            self._fail(f"unreachable: {e}")
            return None
        if not msg.reply:
            return None
        deadline = time.monotonic() + self.timeout_s
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                self._fail(f"no answer to round {msg.round} within {self.timeout_s * 1e3:.0f} ms")
                return None
            if not self._sock.poll(min(int(left * 1000) + 1, 100)):
                if self._exited() is not None:
                    self._fail(f"exit code {self.proc.returncode}")
                    return None
                continue
            try:
                reply = wire.decode_from_draft(self._sock.recv())
            except wire.WireError as e:
                self._drop(str(e))
                continue
            if isinstance(reply, wire.StepReply) and reply.round == msg.round:
                return reply
            if isinstance(reply, wire.Fatal):
                self._fail(f"draft reported: {reply.error}")
                return None
            self._drop(f"unexpected {type(reply).__name__} (round {getattr(reply, 'round', '-')}) "
                       f"while waiting for round {msg.round}")

    def _drop(self, why: str) -> None:
        self.rejected += 1
        if self.rejected & (self.rejected - 1) == 0:  # log the 1st, 2nd, 4th, ... one
            logger.warning("SSD draft: dropped a message: %s (%d so far)", why, self.rejected)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        try:
            if self._sock is not None and (self.external or (self.proc is not None and self.proc.poll() is None)):
                try:
                    self._sock.send(wire.encode(wire.Shutdown()), zmq.NOBLOCK)
                except zmq.ZMQError:
                    pass
            if not self.external and self.proc is not None and self.proc.poll() is None:
                try:
                    self.proc.wait(timeout=3)
                except subprocess.TimeoutExpired:
                    self.proc.kill()
                    self.proc.wait(timeout=5)
        finally:
            if self._sock is not None:
                self._sock.close(linger=200 if self.external else 0)  # let Shutdown leave
            self._ctx.term()
            self._remove_dir()
