"""Start and stop a real CPU SGLang server (through sglang_ssd.cpu_serve) for tests, demo, bench."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from typing import Optional

import requests


def pin_threads(pid: int, cpus: set[int]) -> str:
    """sched_setaffinity on every thread of `pid` (a process already running, e.g. the SSD draft
    process a server spawned); returns its Cpus_allowed_list afterwards."""
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            os.sched_setaffinity(int(tid), cpus)
        except (ProcessLookupError, PermissionError):
            pass
    for line in open(f"/proc/{pid}/status").read().splitlines():
        if line.startswith("Cpus_allowed_list"):
            return line.split(":", 1)[1].strip()
    return "?"


def mem_available_gb() -> float:
    """MemAvailable from /proc/meminfo, in GiB (inf where there is no /proc)."""
    try:
        for line in open("/proc/meminfo"):
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) / (1 << 20)
    except OSError:
        pass
    return float("inf")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class CPUServer:
    """A `python -m sglang_ssd.cpu_serve ...` subprocess in its own process group."""

    def __init__(self, model_path: str, args: list[str] = (), *, port: Optional[int] = None,
                 log_path: Optional[str] = None, startup_timeout: float = 300.0,
                 env: Optional[dict] = None, cpus: Optional[set[int]] = None):
        from sglang_ssd.cpu_serve import cpu_env

        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        cmd = [sys.executable, "-m", "sglang_ssd.cpu_serve", "--model-path", str(model_path),
               "--host", "127.0.0.1", "--port", str(self.port), *map(str, args)]
        self._log = open(log_path, "w") if log_path else subprocess.DEVNULL
        self.proc = subprocess.Popen(cmd, env=cpu_env(env), stdout=self._log, stderr=subprocess.STDOUT,
                                     start_new_session=True)
        if cpus:
            os.sched_setaffinity(self.proc.pid, cpus)
        self._wait_healthy(startup_timeout)

    def _wait_healthy(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited with code {self.proc.returncode} during startup")
            try:
                if requests.get(self.url + "/health", timeout=2).status_code == 200:
                    return
            except requests.RequestException:
                pass
            time.sleep(1.0)
        self.stop()
        raise TimeoutError(f"server did not become healthy within {timeout}s")

    def generate(self, input_ids, sampling_params: dict, timeout: float = 1800, **extra) -> dict:
        """One request; `timeout` seconds (a CPU prefills an 8k-token prompt in about 6 minutes)."""
        body = {"input_ids": input_ids, "sampling_params": sampling_params, **extra}
        r = requests.post(self.url + "/generate", json=body, timeout=timeout)
        r.raise_for_status()
        return r.json()

    def server_info(self) -> dict:
        return requests.get(self.url + "/server_info", timeout=30).json()

    def ssd_stats(self) -> dict:
        return self.server_info()["internal_states"][0].get("ssd") or {}

    def stop(self, grace_s: float = 30.0) -> None:
        """SIGTERM to the server (it stops its own children), then after `grace_s` SIGKILL to
        whatever is left (SGLang takes 4-10 s to exit cleanly here; benchmarks do not wait)."""
        if self.proc.poll() is None:
            try:
                self.proc.send_signal(signal.SIGTERM)
                self.proc.wait(timeout=grace_s)
            except subprocess.TimeoutExpired:
                pass
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        self.proc.wait(timeout=30)
        if self._log not in (None, subprocess.DEVNULL):
            self._log.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.stop()
