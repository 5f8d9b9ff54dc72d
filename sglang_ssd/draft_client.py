"""Worker-side handle on the draft process: spawn it, talk to it, stop it.

The socket is bound by the worker (an ipc:// endpoint in a private 0700 directory unless the user
chose one) and the draft connects. A round that gets no valid answer in time returns None and the
worker serves that round without speculation; late answers are recognised by their round number
and dropped. The draft dies with its parent (PR_SET_PDEATHSIG) and is killed on close().
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
from typing import Optional

import zmq

from sglang_ssd import wire

logger = logging.getLogger(__name__)


class DraftStartError(RuntimeError):
    pass


class DraftClient:
    def __init__(self, *, model_path: str, k: int, fanout: list[int], backup: str,
                 backup_batch_threshold: int, device: str, dtype: str, kv_tokens: int,
                 threads: Optional[int], endpoint: Optional[str], timeout_s: float,
                 start_timeout_s: float, saguaro_c: float = 1.0):
        self.timeout_s = timeout_s
        self._dir = None
        if endpoint is None:
            self._dir = tempfile.mkdtemp(prefix="sglang-ssd-")
            os.chmod(self._dir, 0o700)
            endpoint = f"ipc://{os.path.join(self._dir, 'draft.sock')}"
        self.endpoint = endpoint
        self._ctx = zmq.Context()
        self._sock = self._ctx.socket(zmq.PAIR)
        self._sock.setsockopt(zmq.LINGER, 0)
        self._sock.bind(endpoint)
        conf = dict(endpoint=endpoint, model_path=model_path, k=k, fanout=fanout, backup=backup,
                    backup_batch_threshold=backup_batch_threshold, device=device, dtype=dtype,
                    kv_tokens=kv_tokens, threads=threads, saguaro_c=saguaro_c)
        self.proc = subprocess.Popen([sys.executable, "-m", "sglang_ssd.draft_process", json.dumps(conf)])
        self.pid = self.proc.pid
        self._closed = False
        atexit.register(self.close)
        self.ready = self._await_ready(start_timeout_s)

    def _await_ready(self, timeout_s: float) -> wire.Ready:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self._sock.poll(200):
                msg = wire.decode_from_draft(self._sock.recv())
                if isinstance(msg, wire.Ready):
                    return msg
                if isinstance(msg, wire.Fatal):
                    self.close()
                    raise DraftStartError(f"SSD draft process failed to start: {msg.error}")
            elif self.proc.poll() is not None:
                code = self.proc.returncode
                self.close()
                raise DraftStartError(f"SSD draft process exited with code {code} while loading")
        self.close()
        raise DraftStartError(
            f"SSD draft process did not load within --ssd-draft-start-timeout={timeout_s:g}s"
        )

    @property
    def alive(self) -> bool:
        return not self._closed and self.proc.poll() is None

    def step(self, msg: wire.Step) -> Optional[wire.StepReply]:
        """Send one round; the reply for it, or None (dead, late or malformed draft)."""
        if not self.alive:
            return None
        try:
            self._sock.send(wire.encode(msg), zmq.NOBLOCK)
        except zmq.ZMQError as e:
            logger.error("SSD draft unreachable: %s", e)
            return None
        if not msg.reply:
            return None
        deadline = time.monotonic() + self.timeout_s
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                logger.warning("SSD draft gave no answer for round %d within %.3gs",
                               msg.round, self.timeout_s)
                return None
            if not self._sock.poll(min(int(left * 1000) + 1, 200)):
                if self.proc.poll() is not None:
                    logger.error("SSD draft process died (exit code %s)", self.proc.returncode)
                    return None
                continue
            try:
                reply = wire.decode_from_draft(self._sock.recv())
            except wire.WireError as e:
                logger.error("%s", e)
                return None
            if isinstance(reply, wire.StepReply) and reply.round == msg.round:
                return reply
            if isinstance(reply, wire.Fatal):
                logger.error("SSD draft reported: %s", reply.error)
                return None
            # An answer to an earlier, timed-out round: drop it.

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        try:
            if self.proc.poll() is None:
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
            self._sock.close(0)
            self._ctx.term()
            if self._dir:
                shutil.rmtree(self._dir, ignore_errors=True)
