"""GPU-only paths with a real SGLang server (skipped without CUDA, and without SGLang): SSD on a
GPU target against Hugging Face greedy and seeded references, with and without CUDA graphs, on a
one-GPU machine (target and draft share cuda:0) as on a two-GPU one (the draft on cuda:1); the
compiled Triton kernels against their references; draft placement on the real device count.

bench/gpu_check.sh runs these on a lent GPU; there SGLang is not installed (its CUDA stack cannot
travel to the device machine), so the server tests skip saying so and the draft side is checked
against a Hugging Face target instead (tests/test_gpu_draft.py, bench/gpu_draft_check.py).
"""

from __future__ import annotations

import importlib.util

import pytest

from conftest import K, hf_greedy, hf_seeded

pytestmark = pytest.mark.gpu

needs_sglang = pytest.mark.skipif(importlib.util.find_spec("sglang") is None,
                                  reason="needs SGLang (not on the GPU device machine: sglang pins torch 2.14.1 "
                                         "and sgl-kernel's CUDA build is 1.2 GB; the draft side is checked by "
                                         "tests/test_gpu_draft.py instead)")

PROMPTS = ([5, 6, 7, 8, 9], [20, 21, 22], [100, 200, 300, 17])


def _expected_draft_device() -> str:
    import torch

    return "cuda:1" if torch.cuda.device_count() >= 2 else "cuda:0"


@needs_sglang
@pytest.mark.parametrize("graphs", [False, True], ids=["eager", "cuda-graphs"])
def test_gpu_server_ssd_matches_hf(models, log_dir, hf_target, graphs):
    """Greedy and seeded requests equal the Hugging Face references token for token; unseeded
    sampled requests are served with speculation (accepted drafts reported) and full length. The
    draft's device is the default one: its own GPU on two GPUs, the target's on one."""
    import os
    import subprocess
    import sys
    import time

    import requests

    from sglang_ssd.testing.server import free_port

    port = free_port()
    cmd = [sys.executable, "-m", "sglang.launch_server", "--model-path", str(models["target"]),
           "--port", str(port), "--host", "127.0.0.1", "--dtype", "float32",
           "--mem-fraction-static", "0.3", "--speculative-algorithm", "SSD",
           "--speculative-draft-model-path", str(models["draft_perturbed"]),
           "--speculative-num-steps", str(K), "--ssd-mode", "ssd"]
    if not graphs:
        cmd.append("--disable-cuda-graph")
    log = open(log_dir / f"gpu_server_{'graphs' if graphs else 'eager'}.log", "w")
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

        def gen(prompt, sp):
            return requests.post(url + "/generate", json={"input_ids": prompt, "sampling_params": {
                "max_new_tokens": 32, "ignore_eos": True, **sp}}, timeout=120).json()

        for prompt in PROMPTS:
            assert gen(prompt, {"temperature": 0})["output_ids"] == hf_greedy(hf_target, prompt, 32)
            sp = {"temperature": 0.8, "top_p": 0.9, "sampling_seed": 17}
            assert gen(prompt, sp)["output_ids"] == hf_seeded(hf_target, prompt, 32, sp)
        vocab = hf_target.config.vocab_size
        accepted = 0
        for prompt in PROMPTS:
            r = gen(prompt, {"temperature": 0.8, "top_k": 20})
            assert len(r["output_ids"]) == 32 and all(0 <= t < vocab for t in r["output_ids"])
            accepted += sum(r["meta_info"].get("ssd_accepted", []))
        assert accepted > 0  # sampled rounds were speculated, not only served plainly
        info = requests.get(url + "/server_info", timeout=10).json()
        assert info["internal_states"][0]["ssd"]["config"]["draft_device"] == _expected_draft_device()
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
    """The placement rule on the real device count: the first GPU after the target's when there
    is one, the target's own GPU on a one-GPU machine."""
    import torch

    from sglang_ssd.config import choose_draft_device

    n = torch.cuda.device_count()
    assert choose_draft_device(None, "cuda", n, 0, 1) == _expected_draft_device()
    assert choose_draft_device("cuda:0", "cuda", n, 0, 1) == "cuda:0"
