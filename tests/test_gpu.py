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


def test_triton_kernels_on_cuda_match_their_references():
    """The compiled kernels (not the interpreter) against the torch references, on the GPU.
    n accepted and the fork candidates must be equal; t* may differ only where a float64 partial
    sum rounds differently in a tree reduction (allowed: 1 row in 200)."""
    import torch

    from sglang_ssd.kernels.dispatch import chain_accept, fork_topf, saguaro_rescale
    from sglang_ssd.kernels.fork_triton import fork_topf_ref
    from sglang_ssd.kernels.rejection import chain_accept_ref, saguaro_rescale_ref

    g = torch.Generator(device="cuda").manual_seed(0)
    b, k, v = 200, 4, 32000
    p = torch.softmax(torch.randn(b, k + 1, v, device="cuda", generator=g) * 3, -1)
    q = torch.softmax(torch.randn(b, k, v, device="cuda", generator=g) * 3, -1)
    d = torch.multinomial(q.view(-1, v), 1, generator=g).view(b, k)
    ua, ur = torch.rand(b, k, device="cuda", generator=g), torch.rand(b, device="cuda", generator=g)
    n_ref, t_ref = chain_accept_ref(p, q, d, ua, ur)
    n_got, t_got = chain_accept(p, q, d, ua, ur)
    assert torch.equal(n_ref, n_got)
    assert int((t_ref != t_got).sum()) <= 1
    tn = torch.randint(0, 6, (b,), device="cuda", generator=g)
    assert torch.allclose(saguaro_rescale(q[:, 0], tn, 0.3), saguaro_rescale_ref(q[:, 0], tn, 0.3), rtol=1e-5, atol=1e-8)
    logits = torch.randn(8, k + 1, v, device="cuda", generator=g)
    spec = logits[:, :k].argmax(-1)
    depth = [4, 3, 3, 2, 3]
    assert torch.equal(fork_topf(logits, spec, depth), fork_topf_ref(logits, spec, depth))


def test_default_draft_device_on_this_machine():
    """The placement rule on the real device count: the draft's own GPU when there is one,
    else the error that says so."""
    import torch

    from sglang_ssd.config import SSDConfigError, choose_draft_device

    n = torch.cuda.device_count()
    if n >= 2:
        assert choose_draft_device(None, "cuda", n, 0, 1) == "cuda:1"
    else:
        with pytest.raises(SSDConfigError, match="this machine has 1"):
            choose_draft_device(None, "cuda", n, 0, 1)
