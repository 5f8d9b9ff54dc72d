"""SGLangDraftModel (the draft run by SGLang's own ModelRunner) against Hugging Face transformers.

SGLang's CPU engine needs SGLANG_USE_CPU_ENGINE=1 and the sgl_kernel stand-in first on sys.path
before sglang is imported, and init_parallel_runtime() runs once per process: so the checks run
in one subprocess (this file run as a script, with sglang_ssd.cpu_serve.cpu_env()), which reports
each check's outcome as JSON; the tests below assert on that report.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

ATOL = 1e-3
NUM_SLOTS = 512


# ---- the checks (run in the subprocess) ---------------------------------------------------------
def _hf(path):
    import torch
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()


def _hf_logits(hf, ids):
    import torch

    with torch.no_grad():
        return hf(torch.tensor([ids])).logits[0]


def _diff(a, b) -> float:
    return float((a.float() - b.float()).abs().max())


def check_interleaved(m, hf) -> dict:
    """Two requests interleaved in one forward over scattered slots."""
    from sglang_ssd.draft_batch import Group, run, slot_tensor

    a, b = [5, 6, 7, 8, 9, 10], [20, 21, 22]
    pool = m.pool
    holes = pool.alloc(20)
    pool.free(holes[::2])  # free slots are now 0, 2, 4, ...: allocations interleave with the held ones
    sa, sb = pool.alloc(6), pool.alloc(3)
    order = [0, 6, 1, 2, 7, 3, 8, 4, 5]  # a and b interleaved, each in its own order
    toks = [(a + b)[i] for i in order]
    pos = [(list(range(6)) + list(range(3)))[i] for i in order]
    slots = [(sa + sb)[i] for i in order]
    vis = [([sa[: i + 1] for i in range(6)] + [sb[: i + 1] for i in range(3)])[i] for i in order]
    out = m.forward([Group(slot_tensor([]), toks, pos, slots, vis)])  # one group, each query its own list
    inv = [order.index(i) for i in range(9)]
    out = out[inv]
    res = {"shape": list(out.shape), "vocab": m.vocab_size,
           "diff_a": _diff(out[:6], _hf_logits(hf, a)), "diff_b": _diff(out[6:], _hf_logits(hf, b))}
    pool.free(sa + sb + holes)
    res["used_after"] = pool.num_used
    return res


def check_branches(m, hf) -> dict:
    """Two branches off a prefix at the same logical position, sharing its KV in place."""
    from sglang_ssd.draft_batch import Group, run, slot_tensor

    a = [5, 6, 7, 8, 9, 10]
    pool = m.pool
    sa = pool.alloc(6)
    m.forward([run(slot_tensor([]), a, 0, sa)], logits=False)
    br = pool.alloc(2)
    out = m.forward([Group(slot_tensor(sa), [33, 44], [6, 6], br, [[br[0]], [br[1]]])])
    # A second level: each branch continues, seeing the prefix and its own branch slot only.
    br2 = pool.alloc(2)
    out2 = m.forward([Group(slot_tensor(sa), [55, 66], [7, 7], br2, [[br[0], br2[0]], [br[1], br2[1]]])])
    res = {"diff_33": _diff(out[0], _hf_logits(hf, a + [33])[-1]),
           "diff_44": _diff(out[1], _hf_logits(hf, a + [44])[-1]),
           "diff_33_55": _diff(out2[0], _hf_logits(hf, a + [33, 55])[-1]),
           "diff_44_66": _diff(out2[1], _hf_logits(hf, a + [44, 66])[-1])}
    pool.free(sa + br + br2)
    res["used_after"] = pool.num_used
    return res


def check_chunked(m, hf) -> dict:
    """A call split into several SGLang batches: later chunks see KV written by earlier ones (a
    run cut in three goes on over a prefix grown by the chunks before it)."""
    from sglang_ssd.draft_batch import Group, run, slot_tensor

    a = [7, 3, 9, 11, 13, 2, 4, 8, 16, 1]
    saved, m.max_rows = m.max_rows, 3
    try:
        s = m.pool.alloc(len(a))
        m.forward([run(slot_tensor([]), a[:2], 0, s[:2])], logits=False)
        out = m.forward([run(slot_tensor(s[:2]), a[2:], 2, s[2:])])
        m.pool.free(s)
    finally:
        m.max_rows = saved
    return {"diff": _diff(out, _hf_logits(hf, a)[2:])}


def check_speculator(m, hf) -> dict:
    """With the target as its own draft: every lookup hits and specs are the true continuation."""
    import torch

    from sglang_ssd import wire
    from sglang_ssd.speculator import Speculator

    def greedy(ids, n):
        out = list(ids)
        with torch.no_grad():
            for _ in range(n):
                out.append(int(hf(torch.tensor([out])).logits[0, -1].argmax()))
        return out[len(ids):]

    k = 3
    sp = Speculator(m, k, [1, 1, 1, 2], "neural", 8)
    prompt = [5, 6, 7, 8]
    truth = greedy(prompt, 1 + 3 * (k + 1) + k)
    problems = []
    if sp.begin([wire.Begin(rid="r", prompt=prompt, pending=truth[0])]) != []:
        problems.append("begin refused")
    specs, refusals, _ = sp.lookup([wire.Outcome(rid="r", k=-1, t_star=truth[0], committed_len=len(prompt))])
    if refusals or specs[0].tokens != truth[1: 1 + k]:
        problems.append(f"first spec {specs[0].tokens if specs else None} != {truth[1: 1 + k]} ({refusals})")
    pos, committed = 1 + k, len(prompt)
    for r in range(3):
        sp.speculate()
        committed += k + 1
        specs, refusals, _ = sp.lookup([wire.Outcome(rid="r", k=k, t_star=truth[pos], committed_len=committed)])
        if refusals or not specs[0].hit or specs[0].tokens != truth[pos + 1: pos + 1 + k]:
            problems.append(f"round {r}: hit={specs[0].hit if specs else None} "
                            f"{specs[0].tokens if specs else None} != {truth[pos + 1: pos + 1 + k]} ({refusals})")
        pos += k + 1
    used = m.pool.num_used
    sp.release(["r"])
    sp.prefix.clear()
    return {"problems": problems, "used_before_release": used, "used_after": m.pool.num_used}


def _main(model_path: str) -> None:
    import time
    import traceback

    report = {}
    t0 = time.perf_counter()
    from sglang_ssd.draft_model_sglang import SGLangDraftModel

    m = SGLangDraftModel(model_path, "cpu", "float32", NUM_SLOTS)
    report["load_s"] = time.perf_counter() - t0
    report["device"] = str(m.device)
    hf = _hf(model_path)
    for name, fn in [("interleaved", check_interleaved), ("branches", check_branches),
                     ("chunked", check_chunked), ("speculator", check_speculator)]:
        try:
            report[name] = fn(m, hf)
        except Exception:
            report[name] = {"error": traceback.format_exc()}
    print("REPORT " + json.dumps(report), flush=True)


# ---- the tests ---------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def report(models):
    from sglang_ssd.cpu_serve import cpu_env

    env = cpu_env()
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env["PYTHONPATH"] = os.pathsep.join([env["PYTHONPATH"], root])
    env.setdefault("OMP_NUM_THREADS", "2")
    proc = subprocess.run([sys.executable, os.path.abspath(__file__), str(models["target"])],
                          env=env, capture_output=True, text=True, timeout=240)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("REPORT ")]
    assert proc.returncode == 0 and lines, f"rc={proc.returncode}\n{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}"
    return json.loads(lines[-1][len("REPORT "):])


def _ok(r: dict) -> dict:
    assert "error" not in r, r["error"]
    return r


def test_interleaved_requests_match_hf(report):
    r = _ok(report["interleaved"])
    assert r["shape"] == [9, r["vocab"]]
    assert r["diff_a"] < ATOL and r["diff_b"] < ATOL, r
    assert r["used_after"] == 0


def test_branches_share_prefix_kv(report):
    r = _ok(report["branches"])
    assert max(r["diff_33"], r["diff_44"], r["diff_33_55"], r["diff_44_66"]) < ATOL, r
    assert r["used_after"] == 0


def test_chunked_forward_matches_hf(report):
    r = _ok(report["chunked"])
    assert r["diff"] < ATOL, r


def test_speculator_round_trip_on_sglang_draft(report):
    r = _ok(report["speculator"])
    assert r["problems"] == [], r["problems"]
    assert r["used_before_release"] > 0 and r["used_after"] == 0


if __name__ == "__main__":
    _main(sys.argv[1])
