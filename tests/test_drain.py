"""A batch's finish predicted from its rounds (drain.py), on hand-computed cases."""

from __future__ import annotations

import pytest

from sglang_ssd.drain import finish_s

STEP = {1: 0.1, 2: 0.15, 3: 0.2}


def test_plain_rounds_finish_equal_requests_together():
    plain = lambda n: None  # noqa: E731 (never asked: every round plain)
    assert finish_s([10, 10], [5, 1], plain, STEP.get, plain_first=True) == pytest.approx(10 * 0.15)


def test_speculating_rounds_jump_from_one_departure_to_the_next():
    """Two requests of 48 tokens, 6 and 2 tokens a 0.5 s round together: the first leaves after 8
    rounds (4 s) with the second at 16; alone, 0.3 s rounds of 2 tokens: 16 more (4.8 s)."""
    rounds = {2: (0.5, True), 1: (0.3, True)}
    assert finish_s([48, 48], [6, 2], rounds.get, STEP.get) == pytest.approx(8 * 0.5 + 16 * 0.3)
    # plain until the first leaves: both leave together after 48 steps of 2
    assert finish_s([48, 48], [6, 2], rounds.get, STEP.get, plain_first=True) == pytest.approx(48 * 0.15)
    # plain first with unequal lengths: 10 steps of 2, then the other alone in speculating rounds
    assert finish_s([10, 30], [6, 2], rounds.get, STEP.get, plain_first=True) == pytest.approx(10 * 0.15 + 10 * 0.3)


def test_a_plain_bucket_serves_one_token_a_request_and_fewer_than_one_counts_one():
    rounds = {3: (0.2, False), 2: (0.5, True), 1: (0.3, True)}
    # 3 requests plain: the 4-token one leaves after 4 steps; then 2 requests at 0.5 s, 0.5 tokens
    # a round (counted 1): 6 rounds until the next leaves, then 2 rounds alone
    got = finish_s([4, 10, 12], [0.5, 0.5, 0.5], rounds.get, STEP.get)
    assert got == pytest.approx(4 * 0.2 + 6 * 0.5 + 2 * 0.3)


def test_an_unknown_cost_is_no_prediction():
    assert finish_s([5, 9], [2, 2], {2: (0.5, True)}.get, STEP.get) is None  # alone: unknown
    assert finish_s([5], [2], {1: (0.3, True)}.get, {}.get, plain_first=True) is None
    assert finish_s([0, 0], [2, 2], {}.get, {}.get) == 0.0
