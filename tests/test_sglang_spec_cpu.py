"""SGLang's own speculative decoding served on CPU through sglang_ssd.cpu_serve: STANDALONE (a
separate draft model; chain, topk 1, and tree, topk 2) and NGRAM.

Greedy outputs must equal the target's greedy tokens (Hugging Face), alone and 4 at a time, and
the speculation must really run and accept drafts (SGLang's meta_info spec_* counters). Without
sglang_ssd.patches.torch_draft_attention STANDALONE does not start on CPU; without
torch_verify_attention no configuration verifies correctly.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import torch

from conftest import SERVER_ARGS, hf_greedy
from sglang_ssd.patches.cpu_standin import sgl_kernel as _standin  # noqa: F401  (registers the ops)
from sglang_ssd.testing.server import CPUServer

PROMPTS = ["The quick brown fox", "def add(a, b):\n", "Numbers: 0 1 2 3 4 5 6 7",
           "Once upon a time there was a small model"]
NEW_TOKENS = 24
STEPS = 3
GREEDY = {"temperature": 0, "max_new_tokens": NEW_TOKENS, "ignore_eos": True}


def _standalone(draft: str, topk: int) -> list[str]:
    return ["--speculative-algorithm", "STANDALONE", "--speculative-draft-model-path", draft,
            "--speculative-num-steps", str(STEPS), "--speculative-eagle-topk", str(topk),
            "--speculative-num-draft-tokens", "4"]


# name -> server flags (given the tiny model paths)
CONFIGS = {
    # the draft equals the target: its acceptance is checked round by round (see below)
    "standalone_chain": lambda m: _standalone(str(m["draft_same"]), 1),
    # a perturbed draft and a token tree (topk 2): tree-mask verify and per-branch draft decode
    "standalone_tree": lambda m: _standalone(str(m["draft_perturbed"]), 2),
    "ngram": lambda m: ["--speculative-algorithm", "NGRAM", "--speculative-num-draft-tokens", "4",
                        "--speculative-ngram-max-bfs-breadth", "2"],
}


@pytest.fixture(scope="module")
def cases(models, hf_target) -> list[tuple[list[int], list[int]]]:
    """(prompt ids, target greedy continuation of NEW_TOKENS + STEPS tokens) per prompt."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(models["target"]))
    return [(ids, hf_greedy(hf_target, ids, NEW_TOKENS + STEPS)) for ids in (tok(p).input_ids for p in PROMPTS)]


@pytest.fixture(scope="module", params=list(CONFIGS))
def spec_server(request, models, log_dir):
    """One server per configuration; pytest finishes one before starting the next."""
    name = request.param
    server = CPUServer(models["target"], SERVER_ARGS + CONFIGS[name](models),
                       log_path=str(log_dir / f"sglang_spec_{name}.log"))
    yield name, server
    server.stop()


def standalone_chain_histogram(model, prompt: list[int], continuation: list[int]) -> list[int]:
    """Rounds by number of accepted draft tokens that SGLang 0.5.23's STANDALONE worker (topk 1,
    STEPS steps) produces with the TARGET as its draft, computed with Hugging Face.

    STANDALONE reuses EAGLE's worker, whose draft input is shifted left by one token
    (eagle_worker_v2._draft_extend_for_prefill rotates input_ids; draft extend feeds the target's
    predictions), so the draft sees the sequence without its first token. Each round it drafts
    STEPS greedy tokens after the pending one; the target accepts the longest matching prefix.
    Valid for a request with no cached prefix (the draft KV at a cached boundary differs).
    """
    seq, committed, emitted, hist = prompt + continuation, len(prompt), 1, [0] * (STEPS + 1)
    with torch.no_grad():
        while emitted < NEW_TOKENS:
            chain = []
            for _ in range(STEPS):
                ctx = seq[1 : committed + 1] + chain
                chain.append(int(model(torch.tensor([ctx])).logits[0, -1].argmax()))
            k = 0
            while k < STEPS and chain[k] == seq[committed + 1 + k]:
                k += 1
            hist[k] += 1
            committed += k + 1
            emitted += k + 1
    return hist


def _generate_all(server, cases, concurrency: int, params=GREEDY) -> list[dict]:
    with ThreadPoolExecutor(concurrency) as ex:
        return list(ex.map(lambda c: server.generate(c[0], params), cases))


def _histogram(meta: dict) -> list[int]:
    h = list(meta["spec_correct_drafts_histogram"])
    return h + [0] * (STEPS + 1 - len(h))


def test_greedy_alone_equals_target(spec_server, cases, hf_target):
    name, server = spec_server
    exact_checked = 0
    for (ids, cont), out in zip(cases, _generate_all(server, cases, 1)):
        meta = out["meta_info"]
        assert out["output_ids"] == cont[:NEW_TOKENS]
        assert meta["spec_verify_ct"] > 0  # the speculative path served it
        if name == "standalone_chain" and meta["cached_tokens"] == 0:
            # a draft equal to the target, through SGLang's own draft path on CPU: every round
            # accepts exactly what the Hugging Face model of that path predicts
            assert _histogram(meta) == standalone_chain_histogram(hf_target, ids, cont)
            exact_checked += 1
    if name == "standalone_chain":
        assert exact_checked >= 2


def test_greedy_concurrent_equals_target(spec_server, cases):
    name, server = spec_server
    for attempt in range(2):  # NGRAM's corpus holds these continuations after the first batch
        outs = _generate_all(server, cases, len(cases))
        for (ids, cont), out in zip(cases, outs):
            assert out["output_ids"] == cont[:NEW_TOKENS]
    for out in outs:
        meta = out["meta_info"]
        assert meta["spec_verify_ct"] > 0
        assert meta["spec_accept_length"] > (2.0 if name == "ngram" else 1.0), meta


def test_sampled_request_served(spec_server, cases):
    _, server = spec_server
    params = {"temperature": 0.8, "top_p": 0.9, "max_new_tokens": 16, "ignore_eos": True}
    outs = _generate_all(server, cases[:2], 2, params)
    assert [len(o["output_ids"]) for o in outs] == [16, 16]


# ---------------------------------------------------------------- the stand-in op


def test_build_draft_decode_metadata_rows():
    r2t = torch.arange(60, dtype=torch.int32).view(3, 20)
    table = torch.ops.sgl_kernel.build_draft_decode_metadata_cpu(r2t, torch.tensor([2, 0]), torch.tensor([4, 2]), 2, 3, 20)
    assert table.shape == (4, 20) and table.dtype == torch.int32
    assert table[0, :7].tolist() == [40, 41, 42, 43, 44, 45, 46]  # prefix 40..43, branch 0 at 44..46
    assert table[1, :7].tolist() == [40, 41, 42, 43, 47, 48, 49]  # branch 1 at 4 + 1*3
    assert table[2, :5].tolist() == [0, 1, 2, 3, 4] and table[3, :5].tolist() == [0, 1, 5, 6, 7]


def test_build_draft_decode_metadata_matches_sglang_triton_kernel():
    """Per step and candidate, the table's first seq_len + step + 1 entries are exactly the KV
    indices of SGLang's Triton generate_draft_decode_kv_indices (run by the Triton interpreter)."""
    script = textwrap.dedent(
        """
        import torch
        import sgl_kernel  # the stand-in (first on PYTHONPATH)
        from sglang.kernels.ops.speculative.cache_locs import generate_draft_decode_kv_indices
        from sglang.srt.utils import next_power_of_2

        torch.manual_seed(0)
        reqs, pool_len, steps = 6, 40, 3
        r2t = torch.randperm(reqs * pool_len).to(torch.int32).view(reqs, pool_len)
        rpi, seq = torch.tensor([4, 1, 3]), torch.tensor([5, 9, 2])
        for topk in (1, 2, 3):
            bs = 3 * topk
            kv_indices = torch.full((steps, 512), -1, dtype=torch.int64)
            kv_indptr = torch.zeros((steps, bs + 1), dtype=torch.int32)
            generate_draft_decode_kv_indices[(steps, 3, topk)](
                rpi, r2t, seq, kv_indices, kv_indptr, seq.repeat_interleave(topk), pool_len,
                kv_indices.shape[1], kv_indptr.shape[1], next_power_of_2(3),
                next_power_of_2(steps), next_power_of_2(bs), 1)
            table = torch.ops.sgl_kernel.build_draft_decode_metadata_cpu(r2t, rpi, seq, topk, steps, pool_len)
            for i in range(steps - 1):
                for row in range(bs):
                    ref = kv_indices[i, kv_indptr[i, row] : kv_indptr[i, row + 1]].tolist()
                    assert table[row, : int(seq[row // topk]) + i + 1].tolist() == ref, (topk, i, row)
        print("OK")
        """
    )
    from sglang_ssd.cpu_serve import cpu_env

    env = cpu_env()
    env["TRITON_INTERPRET"] = "1"
    res = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True,
                         timeout=300, cwd=str(Path(__file__).parent))
    assert res.returncode == 0 and res.stdout.strip().endswith("OK"), res.stderr[-3000:]
