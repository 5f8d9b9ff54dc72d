"""The mode planner (plain / sync / SSD rounds per batch bucket) on synthetic timings."""

from __future__ import annotations

import random

import pytest

from sglang_ssd.auto_k import DepthController
from sglang_ssd.mode_planner import EVERY, MAX_BACKOFF, ModePlanner

K = 4


class World:
    """True per-mode costs: (tokens per request-round, round seconds, verify seconds, wait seconds),
    with per-round multiplicative noise on the times (uniform +-noise)."""

    def __init__(self, modes: dict, noise: float = 0.10, seed: int = 0, overruns: bool = True,
                 jit: float = 0.0):
        self.modes, self.noise, self.rng = modes, noise, random.Random(seed)
        self.overruns = overruns  # False: every wait is for new requests' first drafts, not a tree
        self.jit = jit  # the draft's estimate of drafting a round just in time (0: it has none)

    def round(self, planner: ModePlanner, bs: int = 1) -> str:
        mode, k = planner.plan(bs)
        e, r, v, w = self.modes[mode]
        f = 1.0 + self.rng.uniform(-self.noise, self.noise)
        # accepted drafts per request whose mean count of emitted tokens is e (e - 1 accepted)
        acc = []
        for _ in range(bs):
            j = int(e - 1) + (1 if self.rng.random() < (e - 1) - int(e - 1) else 0)
            acc.append(min(j, k) if mode != "plain" else 0)
        planner.observe(mode, k, bs, acc, verify_s=v * f, round_s=r * f, wait_s=w * f,
                        tree_s=v * 0.9, tree_k=k, overrun_s=w * f if self.overruns else 0.0,
                        jit_s=self.jit if mode != "plain" else 0.0)
        return mode


def planner(pinned=None, auto_k=False) -> ModePlanner:
    return ModePlanner(DepthController(K, 8, auto_k), pinned=pinned)


WEAK = {"ssd": (1.2, 2.0, 1.8, 0.15), "sync": (1.2, 2.6, 1.8, 0.8), "plain": (1.0, 1.0, 0.95, 0.0)}
STRONG = {"ssd": (4.5, 1.3, 1.2, 0.05), "sync": (4.5, 2.0, 1.2, 0.75), "plain": (1.0, 1.0, 0.95, 0.0)}


def test_weak_draft_settles_into_plain_rounds_and_probes_rarely():
    """A verify of K+1 tokens costing twice a decode step for 1.2 tokens: plain rounds win, found
    within three decisions (the plain round is predicted from the measured verify), and from
    then on speculation is only probed, at doubling intervals (under 3% of 6000 rounds)."""
    p, w = planner(), World(WEAK)
    modes = [w.round(p) for _ in range(6000)]
    first_plain = modes.index("plain")
    assert first_plain <= 3 * EVERY
    assert all(m == "plain" for m in modes[first_plain:first_plain + EVERY])
    later = modes[first_plain:]
    assert later.count("plain") / len(later) > 0.97
    t = p.table()["bs1-1"]
    assert t["mode"] == "plain" and t["measured"]["plain"]["tok_per_s"] > t["measured"]["ssd"]["tok_per_s"]


def test_comes_back_to_ssd_when_the_draft_starts_agreeing():
    p, w = planner(), World(WEAK)
    for _ in range(3000):
        w.round(p)
    assert p.plan(1)[0] == "plain"
    w.modes = STRONG  # the text changed: the draft now agrees
    modes = [w.round(p) for _ in range(4000)]
    back = modes.index("ssd")
    assert back <= (MAX_BACKOFF + 2) * EVERY  # the longest a losing mode waits for its probe
    settled = modes[back:]
    # plain is predicted far slower from SSD's verify: not even probed any more
    assert settled[-1000:].count("ssd") == 1000 and p.table()["bs1-1"]["mode"] == "ssd"


@pytest.mark.parametrize("truth", ["strong", "tie"])
def test_never_flaps_under_ten_percent_noise(truth):
    """Clearly better SSD, or SSD and plain within 1%: 8000 rounds with +-10% noise on every
    round's times make at most one switch (probes come back without switching)."""
    modes = STRONG if truth == "strong" else {
        "ssd": (2.0, 2.0, 1.8, 0.05), "sync": (2.0, 3.0, 1.8, 1.0), "plain": (1.0, 0.99, 0.95, 0.0)}
    for seed in range(5):
        p, w = planner(), World(modes, seed=seed)
        for _ in range(8000):
            w.round(p)
        t = p.table()["bs1-1"]
        assert t["switches"] <= (0 if truth == "strong" else 1), (seed, t)
        if truth == "strong":
            assert t["mode"] == "ssd"


def test_sync_wins_when_the_tree_outlasts_the_verify():
    """A draft tree that doubles the round (a draft sharing the target's device): SSD's wait
    makes sync worth a probe, and sync's measured rate keeps it."""
    modes = {"ssd": (4.0, 3.0, 1.2, 1.7), "sync": (4.0, 2.0, 1.2, 0.7), "plain": (1.0, 1.0, 0.95, 0.0)}
    p, w = planner(), World(modes)
    seen = [w.round(p) for _ in range(2000)]
    assert "sync" in seen[: 3 * EVERY]
    assert seen[-500:].count("sync") > 480


def test_sync_is_probed_when_drafting_just_in_time_costs_less_than_the_overrun():
    """The same tree overrun, with the draft's estimate of drafting just in time (0.7 s: sync's
    true wait) below it: sync is predicted better and found at the first decision."""
    modes = {"ssd": (4.0, 3.0, 1.2, 1.7), "sync": (4.0, 2.0, 1.2, 0.7), "plain": (1.0, 1.0, 0.95, 0.0)}
    p, w = planner(), World(modes, jit=0.7)
    seen = [w.round(p) for _ in range(2000)]
    assert seen.index("sync") == EVERY
    assert seen[-500:].count("sync") > 480
    assert p.table()["bs1-1"]["measured"]["ssd"]["jit_ms"] == pytest.approx(700.0)


def test_no_sync_probe_when_drafting_just_in_time_costs_more_than_the_overrun():
    """The real pair on a CPU (batch 1, HumanEval, T=0): SSD's round 381 ms = verify 298 + a
    34 ms tree overrun, 4.76 tokens; drafting K=4 tokens just in time costs ~300 ms, so a sync
    round (~650 ms) loses. Without the draft's estimate the overrun alone predicted sync at
    4.76 / 0.347 s (better than SSD's 4.76 / 0.381 s) and probed it, 8 rounds at ~650 ms each.
    With it, sync is never visited in 2000 rounds (plain, predicted at 0.33 of SSD's rate, is
    still probed on its schedule)."""
    modes = {"ssd": (4.76, 0.381, 0.298, 0.081), "sync": (4.76, 0.65, 0.298, 0.35),
             "plain": (1.0, 0.29, 0.28, 0.0)}
    assert "sync" in [w.round(p) for p, w in [(planner(), World(modes))] for _ in range(4 * EVERY)]
    p, w = planner(), World(modes, jit=0.30)
    seen = [w.round(p) for _ in range(2000)]
    assert "sync" not in seen
    assert seen[-500:].count("ssd") >= 490


def test_no_sync_probe_for_waits_on_new_requests_first_drafts():
    """The same waits, but for the draft's first drafts of requests that just began (sync rounds
    wait for those too): no sync probe, however long."""
    modes = {"ssd": (4.0, 3.0, 1.2, 1.7), "sync": (4.0, 4.0, 1.2, 2.7), "plain": (1.0, 1.0, 0.95, 0.0)}
    p, w = planner(), World(modes, overruns=False)
    assert "sync" not in [w.round(p) for _ in range(2000)]


def test_no_sync_probe_while_the_tree_hides_behind_the_verify():
    p, w = planner(), World(STRONG)
    seen = [w.round(p) for _ in range(8 * EVERY)]  # before sync's first scheduled probe
    assert "sync" not in seen


def test_buckets_choose_their_own_mode():
    """Alone the draft pays; at batch 8 the verify of 8 x (K+1) tokens does not."""
    p = planner()
    light, busy = World(STRONG, seed=1), World(WEAK, seed=2)
    for _ in range(1500):
        light.round(p, 1)
        busy.round(p, 8)
    t = p.table()
    assert t["bs1-1"]["mode"] == "ssd" and t["bs8-15"]["mode"] == "plain"
    assert p.plan(1) == ("ssd", K) and p.plan(8) == ("plain", 0)


@pytest.mark.parametrize("mode", ["ssd", "sync", "plain"])
def test_a_pinned_mode_is_never_left(mode):
    p, w = planner(pinned=mode), World(WEAK if mode == "ssd" else STRONG)
    assert {w.round(p) for _ in range(2000)} == {mode}


def test_plain_rounds_have_no_depth_and_auto_k_keeps_working():
    p, w = planner(auto_k=True), World(WEAK)
    for _ in range(3000):
        w.round(p)
    assert p.plan(1) == ("plain", 0)
    assert 1 <= p.k <= 8


def test_a_pinned_mode_must_be_known():
    with pytest.raises(ValueError, match="'fast'"):
        ModePlanner(DepthController(K, 8, False), pinned="fast")


def test_a_new_bucket_starts_where_its_nearest_settled_neighbour_did():
    """Batch 1 learned that plain rounds win; a batch of 4 starts there instead of relearning
    (and still probes SSD on its own schedule)."""
    p, w = planner(), World(WEAK)
    for _ in range(200):
        w.round(p, 1)
    assert p.plan(1)[0] == "plain"
    assert p.plan(4) == ("plain", 0)
    seen = [w.round(p, 4) for _ in range(30 * EVERY)]
    assert seen[: 2 * EVERY] == ["plain"] * (2 * EVERY) and "ssd" in seen


def test_round_timing_feeds_the_planner_and_the_statistics():
    """The worker's round times reach the planner: a round whose requests looked up a tree
    counts its wait as the tree's overrun, a round of new requests (no lookups) does not; the
    draft's just-in-time estimate rides along; the verify sent to the draft is the median of the
    latest speculated verifies (a cold first one stops counting at once), plain decode steps
    are not among them; the server's first (cold) rounds are not learnt from; the planners'
    tables reach the statistics."""
    from types import SimpleNamespace

    from sglang_ssd.round_timing import COLD_ROUNDS, RoundTiming, TreeTimes

    p = planner()
    stats = SimpleNamespace(verify_s=0.0, live_k=0, live_mode="", auto_k={}, modes={})
    t = RoundTiming(p, stats)
    assert t.verify_s == 0.0
    t.verified(K, 1.05)  # a cold first verify
    t.verified(0, 0.1)  # a plain decode step: not a verify the draft sizes its tree against
    t.verified(K, 0.48)
    t.verified(K, 0.3)
    assert t.verify_s == pytest.approx(0.48) and stats.verify_s == pytest.approx(1.93)
    for _ in range(2):
        t.verified(K, 0.29)
    assert t.verify_s == pytest.approx(0.3)  # the cold one no longer weighs on the median
    t.verified(K, 0.31)
    assert t.verify_s == pytest.approx(0.3)
    for _ in range(COLD_ROUNDS):  # the server's first rounds run cold: not learnt from
        t.observe("ssd", K, 1, [0], [False], [True], 1.0, 1.2, 0.2, TreeTimes(0.6, K, 0.4))
    assert p.table() == {} and stats.modes == {}
    t.observe("ssd", K, 1, [4], [False], [None], 0.3, 0.5, 0.2, TreeTimes(0.3, K, 0.25))  # first drafts
    t.observe("ssd", K, 1, [4], [False], [True], 0.3, 0.4, 0.1, TreeTimes(0.3, K, 0.35))  # a tree's overrun
    m = p.table()["bs1-1"]["measured"]["ssd"]
    assert m["rounds"] == 2 and m["wait_ms"] == pytest.approx(150.0) and m["overrun_ms"] == pytest.approx(50.0)
    assert m["jit_ms"] == pytest.approx(300.0)
    # copied when the table changed (the bucket's first round), not at every round
    assert stats.modes["bs1-1"]["measured"]["ssd"]["rounds"] == 1 and stats.live_k == K and stats.live_mode == "ssd"
    t.observe("ssd", K, 1, [2, 3], [False, True], [True, True], 0.3, 0.4, 0.0, TreeTimes())
    assert p.table()["bs1-1"]["measured"]["ssd"]["rounds"] == 3  # one request served by the draft
