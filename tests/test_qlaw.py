"""The compact proposal law (qlaw.py): what it keeps, that tokens are drawn from exactly it, and
that the worker accepts only well-formed laws from the wire."""

from __future__ import annotations

import torch
from scipy.stats import chi2

from sglang_ssd import qlaw


def test_compact_keeps_the_top_mass_renormalised():
    q = torch.tensor([[0.5, 0.3, 0.15, 0.05, 0.0], [0.0, 0.0, 1.0, 0.0, 0.0]])
    cq = qlaw.compact(q, mass=0.9)
    (ids0, p0), (ids1, p1) = cq.rows
    assert ids0.tolist() == [0, 1, 2] and torch.allclose(p0, torch.tensor([0.5, 0.3, 0.15]) / 0.95)
    assert ids1.tolist() == [2] and p1.tolist() == [1.0]
    dense = cq.dense(5)
    assert torch.allclose(dense.sum(-1), torch.ones(2)) and dense[0, 3] == 0
    full = qlaw.compact(q, mass=1.0)  # zero-probability tokens are never kept
    assert full.rows[0][0].tolist() == [0, 1, 2, 3]


def test_compact_is_capped_in_size():
    q = torch.full((1, 5000), 1 / 5000)
    assert qlaw.compact(q).rows[0][0].numel() == qlaw.MAX_TOKENS


def test_samples_follow_the_compact_law_exactly():
    """N = 20000 draws from a 6-token compact law; chi-square at 1 - 1e-5 (false failure 1e-5)."""
    torch.manual_seed(0)
    q = torch.softmax(torch.randn(1, 50), -1)
    cq = qlaw.compact(q, mass=0.7)
    ids, probs = cq.rows[0]
    n = 20000
    draws = qlaw.sample(qlaw.CompactQ([cq.rows[0]] * n), torch.rand(n))
    counts = torch.zeros(50)
    for t in draws:
        counts[t] += 1
    assert counts.sum() == counts[ids].sum()  # never a token outside the law
    expected = probs.double() * n
    stat = float(((counts[ids].double() - expected) ** 2 / expected).sum())
    assert stat < chi2.ppf(1 - 1e-5, ids.numel() - 1)


def test_pack_unpack_round_trip_and_refusals():
    q = torch.softmax(torch.randn(3, 30), -1)
    cq = qlaw.compact(q, mass=0.8)
    probs, ids, counts = cq.pack()
    dense = qlaw.unpack(probs, ids, counts, 3, 30)
    assert torch.equal(dense, cq.dense(30))
    assert qlaw.unpack(probs, ids, counts, 2, 30) is None  # wrong K
    assert qlaw.unpack(probs, ids, counts, 3, int(cq.rows[0][0].max())) is None  # id outside the vocabulary
    assert qlaw.unpack(probs[:-4], ids, counts, 3, 30) is None  # truncated
    bad = torch.tensor([float("nan")] * sum(counts)).numpy().tobytes()
    assert qlaw.unpack(bad, ids, counts, 3, 30) is None
    neg = (-torch.ones(sum(counts))).numpy().tobytes()
    assert qlaw.unpack(neg, ids, counts, 3, 30) is None
    assert qlaw.unpack(probs, ids, [0] + counts[1:], 3, 30) is None
