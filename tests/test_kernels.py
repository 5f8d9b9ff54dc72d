"""Each Triton kernel equals its torch reference, run under the Triton interpreter on CPU.

Triton reads TRITON_INTERPRET when it is first imported, and sglang imports it early in this
process, so the comparisons run once in a child process (this file run as a script) with
TRITON_INTERPRET=1 and SGLANG_SSD_FORCE_TRITON=1; the tests here check its per-case report.
Integer outputs must be equal; probabilities allclose (the kernel's row sum is a tree).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch

# (B, K, V): B = 1 and B > 1, K = 1, V below / not a multiple of / several times the block.
CHAIN_SHAPES = [(1, 1, 7), (4, 1, 33), (3, 4, 100), (2, 6, 300)]
SMALL_BLOCK = 32


def _dist(g: torch.Generator, shape, kind: str) -> torch.Tensor:
    """Probability rows: 'rand' (with zeros) or 'ties' (few distinct values, many zeros)."""
    if kind == "ties":
        w = torch.randint(0, 3, shape, generator=g).float()
    else:
        w = torch.rand(shape, generator=g)
        w[torch.rand(shape, generator=g) < 0.3] = 0
    w[..., 0] += (w.sum(-1) == 0).float()  # no all-zero row
    return w / w.sum(-1, keepdim=True)


def _chain_cases(b: int, k: int, v: int, g: torch.Generator):
    """Named (p, q, drafts, u_accept, u_residual) covering accept, reject, bonus and fallback."""
    for kind in ("rand", "ties"):
        p = _dist(g, (b, k + 1, v), kind)
        q = _dist(g, (b, k, v), kind)
        drafts = torch.multinomial(q.view(-1, v), 1, generator=g).view(b, k)
        ua, ur = torch.rand(b, k, generator=g), torch.rand(b, generator=g)
        yield f"{kind}", p, q, drafts, ua, ur
        yield f"{kind}/any-draft", p, q, torch.randint(0, v, (b, k), generator=g), ua, ur
        yield f"{kind}/q=p(bonus)", p, p[:, :k].clone(), drafts, ua, ur
        yield f"{kind}/u=0", p, q, drafts, torch.zeros(b, k), torch.zeros(b)
        # u = 1 (outside [0, 1)) puts u * total at the top end: the clamp to the last nonzero weight.
        yield f"{kind}/u=1", p, q, drafts, ua, torch.ones(b)
        # q = 2p: every ratio is 1/2 and every residual is empty, so t* falls back to p.
        yield f"{kind}/empty-residual", p, 2 * p[:, :k], drafts, ua, ur
        one_hot = torch.zeros(b, k, v).scatter_(2, drafts.view(b, k, 1), 1.0)
        yield f"{kind}/one-hot-q", p, one_hot, drafts, ua, ur


def _rounding_case():
    """A bonus draw whose index depends on float64 summation order across a block boundary.

    Sequentially, 0.5 + 2^-55 rounds back to 0.5, so the tiny weights after the first 0.5 never
    count and u = 0.5 lands on the second 0.5 (index 41); summing block 1 before adding the carry
    lifts the total by 2^-52 and lands on a tiny weight instead.
    """
    v = 2 * SMALL_BLOCK
    w = torch.zeros(v)
    w[0], w[1:41], w[41] = 0.5, 2.0 ** -55, 0.5
    p = torch.stack([torch.full((v,), 1.0 / v), w]).unsqueeze(0)
    return "carry-rounding(bonus)", p, p[:, :1].clone(), torch.zeros(1, 1, dtype=torch.int64), \
        torch.zeros(1, 1), torch.tensor([0.5])


def _check_chain(g: torch.Generator) -> list[dict]:
    from sglang_ssd.kernels.chain_accept_triton import chain_accept_triton
    from sglang_ssd.kernels.dispatch import chain_accept
    from sglang_ssd.kernels.rejection import chain_accept_ref

    out = []
    cases = [c for b, k, v in CHAIN_SHAPES for c in _chain_cases(b, k, v, g)] + [_rounding_case()]
    for name, p, q, d, ua, ur in cases:
        b, k1, v = p.shape
        want = chain_accept_ref(p, q, d, ua, ur)
        for path, got in (("dispatch", chain_accept(p, q, d, ua, ur)),
                          (f"block{SMALL_BLOCK}", chain_accept_triton(p, q, d, ua, ur, block_v=SMALL_BLOCK))):
            ok = all(torch.equal(x, y) for x, y in zip(want, got))
            out.append({"kernel": "chain_accept", "case": f"B{b} K{k1 - 1} V{v} {name} {path}", "ok": ok,
                        "detail": "" if ok else f"ref k={want[0].tolist()} t={want[1].tolist()}; "
                                                f"triton k={got[0].tolist()} t={got[1].tolist()}"})
    return out


def _check_saguaro(g: torch.Generator) -> list[dict]:
    from sglang_ssd.kernels.dispatch import saguaro_rescale
    from sglang_ssd.kernels.rejection import saguaro_rescale_ref
    from sglang_ssd.kernels.saguaro_triton import saguaro_rescale_triton

    out = []
    for r, v, top_n in [(1, 7, [3]), (3, 33, [0, 2, 40]), (4, 100, [1, 5, 5, 9])]:
        for kind in ("rand", "ties"):
            q = _dist(g, (r, v), kind)
            for c in (0.25, 0.7):
                tn = torch.tensor(top_n)
                want = saguaro_rescale_ref(q, tn, c)
                for path, got in (("dispatch", saguaro_rescale(q, tn, c)),
                                  (f"block{SMALL_BLOCK}", saguaro_rescale_triton(q, tn, c, block_v=SMALL_BLOCK))):
                    ok = torch.allclose(got, want, rtol=1e-6, atol=1e-8)
                    out.append({"kernel": "saguaro", "case": f"R{r} V{v} {kind} c={c} {path}", "ok": ok,
                                "detail": "" if ok else f"max abs diff {(got - want).abs().max().item():.3g}"})
    return out


def _check_fork(g: torch.Generator) -> list[dict]:
    from sglang_ssd.kernels.dispatch import fork_topf
    from sglang_ssd.kernels.fork_triton import fork_topf_ref

    out = []
    for b, k, v, depth in [(1, 1, 7, [2, 3]), (3, 3, 9, [0, 4, 9, 12]), (2, 4, 300, [3, 3, 2, 1, 5])]:
        for kind in ("rand", "ties"):
            logits = torch.randint(0, 3, (b, k + 1, v), generator=g).float() if kind == "ties" else \
                torch.randn(b, k + 1, v, generator=g)
            top1 = logits[:, :k].argmax(-1)
            for spec_kind, spec in (("spec=top1", top1), ("spec=any", torch.randint(0, v, (b, k), generator=g))):
                want, got = fork_topf_ref(logits, spec, depth), fork_topf(logits, spec, depth)
                ok = torch.equal(got, want)
                out.append({"kernel": "fork", "case": f"B{b} K{k} V{v} {kind} {spec_kind}", "ok": ok,
                            "detail": "" if ok else f"ref {want.tolist()}; triton {got.tolist()}"})
    return out


@pytest.fixture(scope="module")
def interpreted() -> dict[str, list[dict]]:
    env = dict(os.environ, TRITON_INTERPRET="1", SGLANG_SSD_FORCE_TRITON="1")
    proc = subprocess.run([sys.executable, __file__], env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-4000:]
    by_kernel: dict[str, list[dict]] = {}
    for row in map(json.loads, proc.stdout.splitlines()):
        by_kernel.setdefault(row["kernel"], []).append(row)
    return by_kernel


@pytest.mark.parametrize("kernel", ["chain_accept", "saguaro", "fork"])
def test_triton_equals_reference(interpreted, kernel):
    rows = interpreted[kernel]
    bad = [f"{r['case']}: {r['detail']}" for r in rows if not r["ok"]]
    assert rows and not bad, "\n".join(bad)


def test_fork_ref_is_ranked_candidates_per_request():
    from sglang_ssd.forking import ranked_candidates
    from sglang_ssd.kernels.fork_triton import fork_topf_ref

    g = torch.Generator().manual_seed(1)
    for b, k, v, depth in [(1, 1, 5, [1, 2]), (4, 3, 9, [0, 4, 9, 12]), (2, 4, 64, [3, 3, 2, 1, 5])]:
        logits = torch.randint(0, 3, (b, k + 1, v), generator=g).float()
        spec = torch.randint(0, v, (b, k), generator=g)
        got = fork_topf_ref(logits, spec, depth)
        for i in range(b):
            want = ranked_candidates(logits[i], spec[i].tolist(), depth)
            assert [[c for c in row if c >= 0] for row in got[i].tolist()] == want


def test_dispatch_uses_reference_on_cpu(monkeypatch):
    """Without CUDA or the override the reference runs, and residual_q keeps reaching it."""
    from sglang_ssd.kernels import dispatch

    monkeypatch.delenv("SGLANG_SSD_FORCE_TRITON", raising=False)
    g = torch.Generator().manual_seed(2)
    p, q = _dist(g, (2, 3, 11), "rand"), _dist(g, (2, 2, 11), "rand")
    d = torch.multinomial(q.view(-1, 11), 1, generator=g).view(2, 2)
    ua, ur = torch.rand(2, 2, generator=g), torch.rand(2, generator=g)
    calls = []
    monkeypatch.setattr(dispatch, "chain_accept_ref", lambda *a: calls.append(a) or (None, None))
    dispatch.chain_accept(p, q, d, ua, ur)
    monkeypatch.setenv("SGLANG_SSD_FORCE_TRITON", "1")
    dispatch.chain_accept(p, q, d, ua, ur, residual_q=q)
    assert len(calls) == 2 and calls[1][-1] is q


if __name__ == "__main__":
    assert os.environ.get("TRITON_INTERPRET") == "1" and os.environ.get("SGLANG_SSD_FORCE_TRITON") == "1"
    gen = torch.Generator().manual_seed(0)
    for check in (_check_chain, _check_saguaro, _check_fork):
        for result in check(gen):
            print(json.dumps(result))
