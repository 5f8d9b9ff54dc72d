"""The draft runs in its own OS process over ZeroMQ, dies with the server, and its death loses nothing."""

from __future__ import annotations

import os
import signal
import time

import psutil
import pytest

from conftest import K, SERVER_ARGS, hf_greedy
from sglang_ssd.testing.server import CPUServer


@pytest.fixture(scope="module")
def own_server(models, log_dir):
    args = SERVER_ARGS + ["--speculative-algorithm", "SSD", "--speculative-draft-model-path",
                          str(models["draft_same"]), "--speculative-num-steps", str(K),
                          "--ssd-draft-timeout", "5"]
    srv = CPUServer(models["target"], args, log_path=str(log_dir / "process_test.log"))
    yield srv
    srv.stop()


def _descendants(pid):
    return {p.pid: p for p in psutil.Process(pid).children(recursive=True)}


def test_draft_is_a_separate_process_over_zmq(own_server):
    pid = own_server.ssd_stats()["draft_pid"]
    kids = _descendants(own_server.proc.pid)
    assert pid != own_server.proc.pid and pid != os.getpid()
    assert pid in kids
    cmd = " ".join(kids[pid].cmdline())
    assert "sglang_ssd.draft_process" in cmd and '"endpoint": "ipc://' in cmd
    # Its endpoint lives in a private directory only its owner can enter.
    endpoint = cmd.split('"endpoint": "ipc://', 1)[1].split('"', 1)[0]
    assert os.stat(os.path.dirname(endpoint)).st_mode & 0o077 == 0


def test_killed_draft_loses_no_request(own_server, hf_target):
    prompt = [5, 6, 7, 8, 9]
    want = hf_greedy(hf_target, prompt, 20)
    sp = {"temperature": 0, "max_new_tokens": 20, "ignore_eos": True}
    assert own_server.generate(prompt, sp)["output_ids"] == want
    os.kill(own_server.ssd_stats()["draft_pid"], signal.SIGKILL)
    time.sleep(0.5)
    for _ in range(2):
        assert own_server.generate(prompt, sp)["output_ids"] == want
    assert own_server.ssd_stats()["draft_failures"] > 0


@pytest.mark.slow
def test_no_process_left_after_server_stops(models, log_dir):
    args = SERVER_ARGS + ["--speculative-algorithm", "SSD", "--speculative-draft-model-path",
                          str(models["draft_random"])]
    srv = CPUServer(models["target"], args, log_path=str(log_dir / "orphan_test.log"))
    try:
        draft = srv.ssd_stats()["draft_pid"]
        tree = set(_descendants(srv.proc.pid)) | {srv.proc.pid}
        assert draft in tree
        srv.proc.send_signal(signal.SIGTERM)  # the server's own shutdown path, not a group kill
        srv.proc.wait(timeout=60)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and any(psutil.pid_exists(p) and
                                                  psutil.Process(p).status() != psutil.STATUS_ZOMBIE
                                                  for p in tree):
            time.sleep(0.5)
        alive = [p for p in tree if psutil.pid_exists(p) and psutil.Process(p).status() != psutil.STATUS_ZOMBIE]
        assert alive == []
    finally:
        srv.stop()
