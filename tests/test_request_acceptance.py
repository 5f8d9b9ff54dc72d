"""Acceptance estimates: the all-request one (automatic K) and each request's own."""

from __future__ import annotations

import pytest

from sglang_ssd.auto_k import DECAY, OPTIMISM, DepthController
from sglang_ssd.request_acceptance import FADE, FORGET_ROUNDS, PRIOR_TOKENS, Acceptance, RequestAcceptance


def test_the_truncated_geometric_estimate():
    a = Acceptance()
    assert a.value() == 0.5 and a.value(0.8, 4) == pytest.approx(0.8)
    a.add(4, 4)  # all four accepted: no rejection
    a.add(4, 1)  # one, then a rejection
    assert (a.acc, a.rej) == (5, 1) and a.value() == pytest.approx(5 / 6)
    assert a.value(0.2, 6) == pytest.approx((5 + 1.2) / 12)
    a.add(4, 9)  # more than K accepted counts K
    assert (a.acc, a.rej) == (9, 1)
    a.add(4, 0, decay=0.5)
    assert (a.acc, a.rej) == (4.5, 1.5)
    a.fade(0.5)
    assert (a.acc, a.rej) == (2.25, 0.75) and a.observed == 3.0


def test_automatic_k_reads_the_same_estimate():
    d = DepthController(4, 8, False)
    assert d.accept == 0.5 and d.observed == 0
    d.observe_acceptance(4, [4, 2])
    assert d.observed == pytest.approx(4 * DECAY + 2 + 1)
    assert d.accept == pytest.approx((4 * DECAY + 2) / (4 * DECAY + 3))
    assert d.accept_optimistic == pytest.approx((4 * DECAY + 2 + OPTIMISM) / (4 * DECAY + 3 + OPTIMISM))


def test_each_request_has_its_own_estimate_shrunk_to_the_prior_and_fading_unspeculated():
    r = RequestAcceptance()
    assert r.accept("new", 0.7) == 0.7
    r.observe(["a", "b"], [0, 6], [True, True], 6)
    assert r.accept("a", 0.9) == pytest.approx(PRIOR_TOKENS * 0.9 / (1 + PRIOR_TOKENS))
    assert r.accept("b", 0.9) == pytest.approx((6 + PRIOR_TOKENS * 0.9) / (6 + PRIOR_TOKENS))
    r.observe(["a", "b"], [0, 0], [False, False], 0)  # a plain round
    assert r.accept("a", 0.9) == pytest.approx(PRIOR_TOKENS * 0.9 / (FADE + PRIOR_TOKENS))
    assert len(r) == 2
    for _ in range(FORGET_ROUNDS + 64):
        r.observe(["b"], [6], [True], 6)
    assert len(r) == 1 and r.accept("a", 0.3) == 0.3
