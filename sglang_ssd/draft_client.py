"""Worker-side handle on the draft process: spawn it, talk to it, restart it, stop it.

The socket is bound by the worker (an ipc:// endpoint in a private 0700 directory unless the user
chose one) and the draft connects. A round that gets no valid answer in time returns None and the
worker serves it without the draft. A draft that died or stopped answering is killed and started
again with exponential backoff, on a fresh socket, so nothing the old process sent can arrive
later; `generation` counts the processes that became ready, so the worker knows to resync.
The draft dies with its parent (PR_SET_PDEATHSIG) and is killed on close().
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
                 fanout_budget: Optional[int] = None, engine: str = "hf",
                 check_ready: Optional[Callable[[wire.Ready], Optional[str]]] = None):
        self.timeout_s = timeout_s
        self._dir = None
        if endpoint is None:
            self._dir = tempfile.mkdtemp(prefix="sglang-ssd-")
            os.chmod(self._dir, 0o700)
            endpoint = f"ipc://{os.path.join(self._dir, 'draft.sock')}"
        self.endpoint = endpoint
        self._conf = dict(endpoint=endpoint, model_path=model_path, k=k, fanout=fanout, backup=backup,
                          backup_batch_threshold=backup_batch_threshold, device=device, dtype=dtype,
                          kv_tokens=kv_tokens, threads=threads, saguaro_c=saguaro_c,
                          fanout_budget=fanout_budget, engine=engine)
        self._check_ready = check_ready
        self._ctx = zmq.Context()
        self._sock = None
        self.proc = None
        self._closed = False
        self.generation = 0  # draft processes that became ready so far
        self.restarts = 0
        self._backoff = BACKOFF_START_S
        self._restart_at: Optional[float] = None
        self._ready = False
        atexit.register(self.close)
        self._spawn()
        self.ready = self._await_ready(start_timeout_s)

    # ---- process lifecycle -------------------------------------------------------------------
    def _spawn(self) -> None:
        if self._sock is not None:
            self._sock.close(0)
        self._sock = self._ctx.socket(zmq.PAIR)
        self._sock.setsockopt(zmq.LINGER, 0)
        self._sock.bind(self.endpoint)
        self.proc = subprocess.Popen([sys.executable, "-m", "sglang_ssd.draft_process", json.dumps(self._conf)])
        self.pid = self.proc.pid
        self._ready = False

    def _take_ready(self, msg) -> wire.Ready:
        if isinstance(msg, wire.Fatal):
            raise DraftStartError(f"SSD draft process failed to start: {msg.error}")
        if not isinstance(msg, wire.Ready):
            raise DraftStartError(f"SSD draft process sent {type(msg).__name__} before Ready")
        if msg.protocol != wire.PROTOCOL_VERSION:
            raise DraftStartError(f"SSD draft speaks protocol {msg.protocol}, worker {wire.PROTOCOL_VERSION}")
        problem = self._check_ready(msg) if self._check_ready else None
        if problem:
            raise DraftStartError(problem)
        self._ready = True
        self.generation += 1
        self.pid = msg.pid
        self._backoff = BACKOFF_START_S
        return msg

    def _await_ready(self, timeout_s: float) -> wire.Ready:
        deadline = time.monotonic() + timeout_s
        try:
            while time.monotonic() < deadline:
                if self._sock.poll(200):
                    return self._take_ready(wire.decode_from_draft(self._sock.recv()))
                if self.proc.poll() is not None:
                    raise DraftStartError(
                        f"SSD draft process exited with code {self.proc.returncode} while loading")
            raise DraftStartError(
                f"SSD draft process did not load within --ssd-draft-start-timeout={timeout_s:g}s")
        except (DraftStartError, wire.WireError):
            self.close()
            raise

    def _fail(self, why: str) -> None:
        """Kill the current draft (dead, hung or lying) and schedule a restart."""
        if self._restart_at is None:
            logger.error("SSD draft unavailable (%s): serving without it, restart in %.0fs", why, self._backoff)
            if self.proc is not None and self.proc.poll() is None:
                self.proc.kill()
                try:
                    self.proc.wait(timeout=5)
                except subprocess.TimeoutExpired:
                    pass
            self._ready = False
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
            self._spawn()
            return False
        if self.proc.poll() is not None:
            self._fail(f"exit code {self.proc.returncode} while loading")
            return False
        if self._sock.poll(0):
            try:
                self._take_ready(wire.decode_from_draft(self._sock.recv()))
                logger.info("SSD draft process %d ready again (restart %d)", self.pid, self.restarts)
                return True
            except (DraftStartError, wire.WireError) as e:
                self._fail(str(e))
        return False

    @property
    def alive(self) -> bool:
        return not self._closed and self._ready and self.proc.poll() is None

    # ---- rounds ------------------------------------------------------------------------------
    def step(self, msg: wire.Step) -> Optional[wire.StepReply]:
        """Send one round; the reply for it, or None (dead, late, restarting or malformed draft)."""
        if self._closed:
            return None
        if not self._recover():
            return None
        if self.proc.poll() is not None:
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
                if self.proc.poll() is not None:
                    self._fail(f"exit code {self.proc.returncode}")
                    return None
                continue
            try:
                reply = wire.decode_from_draft(self._sock.recv())
            except wire.WireError as e:
                self._fail(str(e))
                return None
            if isinstance(reply, wire.StepReply) and reply.round == msg.round:
                return reply
            if isinstance(reply, wire.Fatal):
                self._fail(f"draft reported: {reply.error}")
                return None
            logger.warning("SSD draft: dropped a stale %s", type(reply).__name__)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        try:
            if self.proc is not None and self.proc.poll() is None:
                try:
                    self._sock.send(wire.encode(wire.Shutdown()), zmq.NOBLOCK)
                except zmq.ZMQError:
                    pass
                try:
                    self.proc.wait(timeout=3)
                except subprocess.TimeoutExpired:
                    self.proc.kill()
                    self.proc.wait(timeout=5)
        finally:
            if self._sock is not None:
                self._sock.close(0)
            self._ctx.term()
            if self._dir:
                shutil.rmtree(self._dir, ignore_errors=True)
