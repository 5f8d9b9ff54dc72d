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

    def __init__(self, modes: dict, noise: float = 0.10, seed: int = 0, overruns: bool = True):
        self.modes, self.noise, self.rng = modes, noise, random.Random(seed)
        self.overruns = overruns  # False: every wait is for new requests' first drafts, not a tree

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
                        tree_s=v * 0.9, tree_k=k, overrun_s=w * f if self.overruns else 0.0)
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
