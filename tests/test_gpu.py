"""GPU-only paths (skipped without CUDA): the full-prefix verify mask for FlashInfer, a CUDA draft.

Run on a lent GPU by bench/gpu_check.sh.
"""

from __future__ import annotations

import pytest

from conftest import K, hf_greedy

pytestmark = pytest.mark.gpu


def test_gpu_server_ssd_matches_hf_greedy(models, log_dir, hf_target):
    import subprocess
    import sys

    from sglang_ssd.testing.server import free_port

    import os
    import time

    import requests

    port = free_port()
    cmd = [sys.executable, "-m", "sglang.launch_server", "--model-path", str(models["target"]),
           "--port", str(port), "--host", "127.0.0.1", "--dtype", "float32",
           "--mem-fraction-static", "0.3", "--speculative-algorithm", "SSD",
           "--speculative-draft-model-path", str(models["draft_perturbed"]),
           "--speculative-num-steps", str(K), "--disable-cuda-graph"]
    log = open(log_dir / "gpu_server.log", "w")
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline:
            assert proc.poll() is None, "GPU server exited during startup"
            try:
                if requests.get(url + "/health", timeout=2).status_code == 200:
                    break
            except requests.RequestException:
                time.sleep(2)
        for prompt in ([5, 6, 7, 8, 9], [20, 21, 22], [100, 200, 300, 17]):
            r = requests.post(url + "/generate", json={"input_ids": prompt, "sampling_params": {
                "temperature": 0, "max_new_tokens": 32, "ignore_eos": True}}, timeout=120).json()
            assert r["output_ids"] == hf_greedy(hf_target, prompt, 32)
    finally:
        os.killpg(proc.pid, 9)
        proc.wait()
        log.close()
