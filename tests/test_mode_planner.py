"""The mode planner (plain / sync / SSD rounds per batch bucket) on synthetic timings."""

from __future__ import annotations

import random

import pytest

from sglang_ssd.auto_k import DepthController, expected_tokens
from sglang_ssd.mode_planner import EVERY, FIRST_WINDOW, MAX_BACKOFF, ModePlanner, _Meter

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
    assert all(m == "plain" for m in modes[first_plain:first_plain + FIRST_WINDOW])  # then SSD, seen briefly, once more
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
    assert seen.index("sync") == FIRST_WINDOW
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
    t.verified("ssd", 1.05)  # a cold first verify
    t.verified("plain", 0.1)  # a plain decode step: not a verify the draft sizes its tree against
    t.verified("sync", 0.15)  # nor a sync verify (it may run on the draft's cores too)
    t.verified("ssd", 0.48)
    t.verified("ssd", 0.3)
    assert t.verify_s == pytest.approx(0.48) and stats.verify_s == pytest.approx(2.08)
    for _ in range(2):
        t.verified("ssd", 0.29)
    assert t.verify_s == pytest.approx(0.3)  # the cold one no longer weighs on the median
    t.verified("ssd", 0.31)
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


# The AVX2-only EPYC of issue 22 (Qwen pair, batch 1, greedy): a verify of K+1 = 5 tokens cost
# 1414 ms against a 600 ms decode step, the round 2458 ms (draft wait 1044 ms) for 3.67 tokens.
AVX2 = {"ssd": (3.67, 2.458, 1.414, 1.044), "sync": (3.67, 2.9, 1.414, 1.45), "plain": (1.0, 0.61, 0.60, 0.0)}


def test_a_bucket_measures_its_decode_step_at_its_first_decision():
    """Before any plain round the decode step is unknown (not guessed from the verify): the
    first decision, after FIRST_WINDOW rounds, probes plain for PLAIN_PROBE rounds, and where
    plain wins (AVX2: 1.64 vs 1.49 tokens/s, 10% apart under +-10% noise per round, so a short
    probe is extended while it is ahead) plain serves most rounds from the first decision on.
    Over 10 seeded worlds (deterministic): at least 70% of rounds 4-60 (SSD, seen for only 4
    rounds, is looked at once more) and 95% of rounds 60-400 are plain."""
    from sglang_ssd.mode_planner import PLAIN_PROBE

    early = late = 0
    for seed in range(10):
        p, w = planner(), World(AVX2, jit=1.45, seed=seed)  # the draft ships its just-in-time estimate
        seen = [w.round(p) for _ in range(400)]
        assert seen[:FIRST_WINDOW] == ["ssd"] * FIRST_WINDOW
        assert seen[FIRST_WINDOW:FIRST_WINDOW + PLAIN_PROBE] == ["plain"] * PLAIN_PROBE
        early += seen[FIRST_WINDOW:60].count("plain")
        late += seen[60:].count("plain")
        assert p.costs.step(1) == pytest.approx(0.60, rel=0.11)
    assert early >= 0.7 * 10 * (60 - FIRST_WINDOW) and late >= 0.95 * 10 * 340


def test_twelve_round_requests_at_batch_four_step_back_to_plain_in_time():
    """Four sampled requests of ~12 rounds each (issue 22: the planner decided every 16 rounds,
    so they ended before it could step back): most of their rounds are plain rounds."""
    slow = {"ssd": (1.8, 7.1, 3.3, 3.8), "sync": (1.8, 8.0, 3.3, 4.6), "plain": (1.0, 1.5, 1.45, 0.0)}
    p, w = planner(), World(slow, jit=4.6)
    seen = [w.round(p, 4) for _ in range(12)]
    assert seen.count("plain") >= 12 - FIRST_WINDOW - 1


def test_a_strong_draft_pays_one_short_plain_probe():
    """SSD 3.5x plain: the first decision's probe of plain costs PLAIN_PROBE rounds, and plain,
    predicted from the measured step far below SSD, is not visited again for the next 2000."""
    from sglang_ssd.mode_planner import PLAIN_PROBE

    p, w = planner(), World(STRONG)
    seen = [w.round(p) for _ in range(2000)]
    assert seen.count("plain") == PLAIN_PROBE and p.table()["bs1-1"]["switches"] == 0


def test_target_costs_are_measured_or_interpolated_never_guessed():
    from sglang_ssd.round_costs import RoundCosts

    c = RoundCosts()
    assert c.step(1) is None and c.forward(1, 5) is None
    for s in (0.50, 0.52, 0.49, 9.0, 0.51):  # a median: one slow outlier does not move it
        c.observe(1, 5, s)
    assert c.forward(1, 5) == pytest.approx(0.51)
    assert c.step(1) is None and c.forward(1, 3) is None  # nothing below width 5 measured
    c.observe(1, 1, 0.3)
    assert c.forward(1, 3) == pytest.approx(0.3 + (0.51 - 0.3) * 2 / 4)
    assert c.step(3) is None  # another bucket (2-3) knows nothing yet
    c.observe(3, 1, 0.35)
    assert c.step(2) == pytest.approx(0.35) and c.table() == {"bs1-1": {1: 300.0, 5: 510.0}, "bs2-3": {1: 350.0}}


def test_a_plain_win_over_a_few_cold_ssd_rounds_is_checked_again_soon():
    """A bucket's first SSD rounds can be atypical (a garbage warm-up prompt, first drafts): seen
    for 4 rounds at 1 token each, SSD loses the first decision to plain; since SSD was measured
    briefly it is probed again at the next decision, and wins back within ~3 windows."""
    class ColdStart(World):
        def __init__(self, *a, cold=8, **k):
            super().__init__(*a, **k)
            self.cold = cold

        def round(self, planner, bs=1):
            if self.cold > 0 and planner.plan(bs)[0] == "ssd":
                self.cold -= 1
                self.modes = dict(STRONG, ssd=(1.0, 1.3, 1.2, 0.05))
            else:
                self.modes = STRONG
            return super().round(planner, bs)

    p, w = planner(), ColdStart(STRONG, cold=FIRST_WINDOW)
    seen = [w.round(p) for _ in range(200)]
    assert "plain" in seen[:FIRST_WINDOW + 12]
    back = seen.index("ssd", FIRST_WINDOW + 1)
    assert back <= FIRST_WINDOW + 12 + 2 * EVERY and seen[-100:].count("ssd") >= 95


def test_a_first_probe_inside_the_noise_of_a_few_cold_rounds_goes_back_to_measure_home():
    """The real pair's first SSD rounds (a garbage warm-up prompt, then a request's first drafts)
    served 1 and 5 tokens in turn at 3.3 s a round here: 0.91 tokens/s in the mean, +-0.35 of
    noise, against a steady plain probe at ~1.0. The probe's lead is inside home's own noise, which
    a longer probe cannot reduce: home (SSD, truly 3.5x plain) is measured afresh and kept, so the
    bucket pays the 3-round probe only (it used to extend the probe and keep plain for 18 rounds)."""
    from sglang_ssd.mode_planner import PLAIN_PROBE

    p, w = planner(), World(STRONG)
    for tokens in (1, 5, 5, 1)[:FIRST_WINDOW]:
        assert p.plan(1) == ("ssd", K)
        p.observe("ssd", K, 1, [tokens - 1], verify_s=1.2, round_s=3.3, wait_s=2.0, tree_s=1.1, tree_k=K,
                  overrun_s=0.0)  # waits for first drafts, not for a tree
    seen = [w.round(p) for _ in range(60)]
    assert seen[:PLAIN_PROBE] == ["plain"] * PLAIN_PROBE and seen.count("plain") == PLAIN_PROBE, seen
    assert p.table()["bs1-1"]["mode"] == "ssd"


def test_one_round_cost_model_is_fed_once_and_read_by_mode_and_depth():
    """The mode planner records each round's target forward and tree in the one RoundCosts;
    automatic K reads its verify and tree by K from there (extrapolated for a depth never
    visited: the verify linear over speculated widths only, the tree proportional to K)."""
    from sglang_ssd.round_costs import RoundCosts

    depth = DepthController(3, 8, auto=True, every=1000)
    p = ModePlanner(depth, every=1000)
    assert p.costs is depth.costs
    p.observe("ssd", 3, 1, [2], verify_s=0.40, round_s=0.45, tree_s=0.30, tree_k=3)
    p.observe("plain", 0, 1, [0], verify_s=0.25, round_s=0.26)
    c = p.costs
    assert c.step(1) == pytest.approx(0.25) and c.verify(1, 3) == pytest.approx(0.40)
    assert c.verify(1, 5) == pytest.approx(0.40)  # one speculated width: flat (the decode step is no anchor)
    assert c.verify(1, 2) == pytest.approx(0.25 + (0.40 - 0.25) * 2 / 3)  # bracketed by the step
    assert c.tree(1, 3) == pytest.approx(0.30) and c.tree(1, 6) == pytest.approx(0.60)
    c.observe(1, 6, 0.70)
    assert c.verify(1, 7) == pytest.approx(0.40 + 0.30 * 4 / 2)  # linear over K = 3, 5
    assert c.tree(2, 3) is None and c.verify(2, 3) is None  # another bucket
    assert depth.table()["bs1-1"]["verify_ms"] == {3: 400.0} and depth.table()["bs1-1"]["tree_ms"] == {3: 300.0}
    empty = RoundCosts()
    empty.observe_tree(1, 0, 1.0)  # a round with no tree (depth 0) is not a tree
    assert empty.tree_table() == {}


class LoadWorld(World):
    """A busy server: each batch-size bucket has its own true costs (`truth(bs)`)."""

    def __init__(self, truth, **kw):
        super().__init__({}, **kw)
        self.truth = truth

    def round(self, planner, bs=1):
        self.modes = self.truth(bs)
        return super().round(planner, bs)


def _load_truth(bs: int) -> dict:
    """SSD wins up to 7 requests; from 8 on the verify of K+1 tokens per request is compute-bound
    (2.4 decode steps, the AVX2 CPU's ratio) and plain rounds win; times grow with the batch."""
    g = 1.0 + 0.08 * bs
    if bs < 8:
        return {m: (e, r * g, v * g, w * g) for m, (e, r, v, w) in STRONG.items()}
    return {"ssd": (2.2, 2.6 * g, 2.4 * g, 0.1 * g), "sync": (2.2, 3.4 * g, 2.4 * g, 0.9 * g),
            "plain": (1.0, 1.0 * g, 0.95 * g, 0.0)}


@pytest.mark.parametrize("seed", range(5))
def test_every_bucket_from_1_to_32_requests_finds_its_best_mode_while_requests_come_and_go(seed):
    """Requests join (up to 32 at once) and leave after 4-40 rounds, so the batch wanders over the
    buckets 1, 2-3, 4-7, 8-15, 16-31 and 32: each bucket learns its own best mode within a bounded
    number of its own rounds (its 40th round is in the best mode: the first decision after 4
    rounds, a 3-round plain probe, and the re-check of a win over a briefly measured SSD, 8 rounds,
    fit before it), and from then on >= 85% of its rounds are."""
    from sglang_ssd.round_costs import bucket_of

    rng = random.Random(seed)
    p, w = planner(), LoadWorld(_load_truth, seed=seed)
    live: list[int] = []
    per_bucket: dict[int, list[str]] = {}
    for r in range(6000):
        phase = (r // 600) % 4  # quiet, busy, very busy, busy: the load moves through the buckets
        target = (2, 10, 32, 6)[phase]
        if len(live) < target and rng.random() < 0.5:
            live += [rng.randint(4, 40) for _ in range(rng.randint(1, 4))]
        live = live[:32]
        if not live:
            continue
        mode = w.round(p, len(live))
        per_bucket.setdefault(bucket_of(len(live)), []).append(mode)
        live = [n - 1 for n in live if n > 1]
    assert set(per_bucket) >= {1, 2, 3, 4, 5, 6}  # 1, 2-3, 4-7, 8-15, 16-31, 32
    for key, modes in per_bucket.items():
        best = "ssd" if key <= 3 else "plain"
        if len(modes) < 60:
            continue
        assert modes[39] == best, (key, modes[:40])
        assert modes[40:].count(best) / len(modes[40:]) >= 0.85, (key, len(modes))


def test_a_forward_no_bucket_measured_is_predicted_by_tokens_per_forward():
    """The line t = a + c x tokens through every bucket's forwards at one thread count (the
    2-core EPYC's one-core figures: decode 187 ms at 1 request, verify 243 ms of 5 tokens, a
    decode step 269 ms at 8 requests, a verify 706 ms of 40 tokens): a verify of 32 x 5 tokens is
    predicted about 2.2 s (measured there: 2.35 s); where a bucket measured, its own median wins;
    one token count alone predicts nothing."""
    from sglang_ssd.round_costs import RoundCosts

    c = RoundCosts(speculating=1)
    c.observe(1, 5, 0.243)
    assert c.predict(32, 5) is None  # one token count
    for bs, w, s in ((1, 1, 0.187), (8, 1, 0.269), (8, 5, 0.706)):
        c.observe(bs, w, s, 1)
    assert c.predict(32, 5) == pytest.approx(2.2, rel=0.15)
    assert c.predict(8, 5) == pytest.approx(0.706)  # measured
    assert c.predict(32, 5, threads=2) is None  # another thread count is its own line
    c.observe(1, 1, 0.099, 2)
    c.observe(8, 1, 0.171, 2)
    assert c.step(32) is None and c.step_predicted(32) == pytest.approx(0.099 + (0.171 - 0.099) / 7 * 31, rel=1e-6)
    c.observe(3, 1, 0.05, 2)
    c.observe(3, 1, 0.04, 2)
    c.observe(3, 1, 0.03, 2)  # cheaper at more tokens: the line never falls with more work
    assert c.predict(64, 1, threads=2) >= c.predict(8, 1, threads=2) - 1e-9


def test_a_new_bucket_starts_in_the_mode_the_cost_model_predicts():
    """After batch-1 and batch-8 rounds were measured (the EPYC's numbers: a verify on the target's
    one core, a decode step on both), the first 32-request round is plain at once: a 160-token
    verify alone (about 2.2 s for 5 tokens each) loses to a 0.38 s decode step. A bucket whose
    verify is cheap relative to its step starts in SSD. Without acceptance measured, or a line to
    predict from, a new bucket starts where its nearest settled neighbour did."""
    p = ModePlanner(DepthController(K, 8, False))
    assert p.plan(32)[0] == "ssd"  # nothing measured: the default
    p = ModePlanner(DepthController(K, 8, False))
    p.costs.speculating = 1
    for _ in range(3):
        p.observe("ssd", K, 1, [4], verify_s=0.243, round_s=0.29)
        p.observe("plain", K, 1, [0], verify_s=0.099, round_s=0.1, threads=2)
        p.observe("ssd", K, 8, [4] * 8, verify_s=0.706, round_s=0.8)
        p.observe("plain", K, 8, [0] * 8, verify_s=0.171, round_s=0.18, threads=2)
    p.costs.observe(1, 1, 0.187, 1)
    assert p.plan(32)[0] == "plain" and p.table()["bs32-63"]["mode"] == "plain"
    assert p.plan(2)[0] == "ssd"  # 2 x 5 tokens: ~0.3 s for ~5 tokens each vs a ~0.11 s step


class SplitWorld(World):
    """A CPU server with a core split: SSD's verify runs on the target's one core, sync and plain
    forwards on both (the draft idles during them)."""

    THREADS = {"ssd": 1, "sync": 2, "plain": 2}
    TREE_OVERRUNS = False  # True: SSD's waits are for trees that outlast the verify

    def round(self, planner: ModePlanner, bs: int = 1) -> str:
        mode, k = planner.plan(bs)
        e, r, v, w = self.modes[mode]
        f = 1.0 + self.rng.uniform(-self.noise, self.noise)
        acc = [min(int(e - 1), k) if mode != "plain" else 0] * bs
        overrun = w * f if self.TREE_OVERRUNS and mode == "ssd" else 0.0
        planner.observe(mode, k, bs, acc, verify_s=v * f, round_s=r * f, wait_s=w * f, tree_s=v * 0.5, tree_k=k,
                        overrun_s=overrun, jit_s=self.jit if mode != "plain" else 0.0, threads=self.THREADS[mode])
        return mode


def test_sync_is_probed_and_kept_when_its_verify_on_both_cores_beats_the_hidden_tree():
    """The 2-core EPYC at batch 1: SSD's round 290 ms (verify 242 ms on one core, the tree hidden
    behind it), a decode step on both cores 99 ms, drafting just in time 94 ms. A sync round
    (94 ms of drafting, then the verify on both cores, ~140 ms) serves the same 5 tokens in 245 ms:
    the planner probes it from the cost model's two-core line (decode steps and sync verifies on two
    threads, no tree overrun needed) and keeps it."""
    truth = {"ssd": (5.0, 0.290, 0.242, 0.045), "sync": (5.0, 0.245, 0.140, 0.100),
             "plain": (1.0, 0.100, 0.099, 0.0)}
    p, w = planner(), SplitWorld(truth, noise=0.05, jit=0.094)
    p.costs.speculating = 1
    for _ in range(3):  # two-core forwards seen (other buckets' or earlier plain probes)
        p.costs.observe(1, 1, 0.099, 2)
        p.costs.observe(2, 1, 0.105, 2)
    modes = [w.round(p) for _ in range(400)]
    assert "sync" in modes[:4 * EVERY]
    assert modes[-200:].count("sync") / 200 > 0.9 and p.table()["bs1-1"]["mode"] == "sync"


def test_no_sync_probe_when_no_other_thread_count_is_faster():
    """Without a split (one thread count) a sync verify costs SSD's: with the tree hidden, sync is
    never probed (the draft's drafting would only add to the round)."""
    truth = {"ssd": (5.0, 0.290, 0.242, 0.045), "sync": (5.0, 0.34, 0.242, 0.100), "plain": (1.0, 0.2, 0.19, 0.0)}
    p, w = planner(), World(truth, noise=0.05, jit=0.094, overruns=False)
    modes = [w.round(p) for _ in range(400)]
    assert "sync" not in modes


def test_a_thread_count_measured_at_one_size_is_predicted_by_its_ratio_to_another():
    """Plain steps on both cores measured at batch 1 only (96 ms, against 176 ms on one core), SSD's
    one-core verifies at batches 1 and 2: a two-core forward of 10 tokens (a plain step at batch 10
    or a sync verify at batch 2) is the one-core line there times 96/176."""
    from sglang_ssd.round_costs import RoundCosts

    c = RoundCosts(speculating=1)
    c.observe(1, 1, 0.176, 1)
    c.observe(1, 5, 0.255)
    c.observe(2, 5, 0.311)
    c.observe(1, 1, 0.096, 2)
    one_core = c.predict(2, 5)
    assert one_core == pytest.approx(0.311)
    from sglang_ssd.round_costs import extrapolate

    line1 = extrapolate([(1, 0.176), (5, 0.255), (10, 0.311)], 1, proportional=False)  # the one-core line at 1 token
    line10 = c.predict(10, 1)
    assert c.predict(10, 1, threads=2) == pytest.approx(line10 * 0.096 / line1, rel=1e-6)
    assert c.fastest(2, 5, others=True) == pytest.approx(c.predict(2, 5) * 0.096 / c.predict(1, 1), rel=0.05)
    assert c.predict(1, 1, threads=3) is None  # a count never measured


def test_atypical_rounds_feed_the_costs_but_not_the_modes_rates():
    """The first round after a change of mode (the draft still stopping its tree or catching up)
    and a forward on a thread count chosen only to measure it are recorded in the cost model but
    do not count toward their mode's rate; RoundTiming marks a round after a change so."""
    from types import SimpleNamespace

    from sglang_ssd.round_timing import COLD_ROUNDS, RoundTiming, TreeTimes

    p = planner()
    p.observe("plain", K, 1, [0], verify_s=0.4, round_s=0.4, threads=1, typical=False)
    assert p.costs.measured(1, 1, 1) == pytest.approx(0.4) and "bs1-1" not in p.table()
    stats = SimpleNamespace(verify_s=0.0, live_k=0, live_mode="", auto_k={}, modes={}, target_ms={})
    t = RoundTiming(planner(), stats)
    for _ in range(COLD_ROUNDS + 1):
        t.observe("ssd", K, 1, [4], [False], [True], 0.3, 0.35, 0.0, TreeTimes(0.2, K, 0.1))
    t.planner._bucket(1).mode = "plain"  # as a decision would have it
    t.observe("plain", K, 1, [0], [False], [None], 0.9, 0.9, 0.0, TreeTimes())  # the switch's round
    t.observe("plain", K, 1, [0], [False], [None], 0.1, 0.1, 0.0, TreeTimes())
    plain = t.planner.table()["bs1-1"]["measured"]["plain"]
    assert plain["rounds"] == 1 and plain["round_ms"] == pytest.approx(100.0)
    assert t.planner.costs.measured(1, 1) == pytest.approx(0.5)  # both forwards in the cost model


def test_a_thread_count_never_measured_gets_plain_probed_rather_than_judged_by_the_slower_one():
    """The 2-core EPYC at 4 requests: SSD's rounds on the target's one core (verify 465 ms of
    5 tokens each, 110 ms waiting for trees, 4 tokens a request: 6.9 tokens/s each), a plain step
    on both cores 120 ms (8.3/s). Predicted from the one-core line alone a plain step costs ~250 ms
    (4.0/s, below the exploring share) and plain was never tried. With both counts named
    (`costs.counts`) a count never measured makes the plain step unknown: probed at the bucket's
    first decision and kept."""
    truth = {"ssd": (4.0, 0.58, 0.465, 0.11), "sync": (4.0, 0.70, 0.30, 0.10), "plain": (1.0, 0.121, 0.12, 0.0)}

    def run(counts):
        p, w = ModePlanner(DepthController(K, 8, False), allowed=("ssd", "plain")), SplitWorld(truth, noise=0.05)
        p.costs.speculating, p.costs.counts = 1, counts
        p.costs.observe(1, K + 1, 0.26)  # one-core verifies at another batch size: a line to predict from
        p.costs.observe(4, K + 1, 0.465)
        return [w.round(p, 4) for _ in range(200)], p

    modes, p = run(counts=(2, 1))
    assert "plain" in modes[:FIRST_WINDOW + 1]
    assert modes[-100:].count("plain") > 90 and p.table()["bs4-7"]["mode"] == "plain"
    modes, _ = run(counts=())  # the counts unknown: the one-core prediction is all there is, and
    assert "plain" not in modes[:3 * EVERY]  # a 48-token burst (12-16 rounds) never saw plain


def test_a_draft_that_cannot_win_is_not_measured_again_after_a_brief_visit():
    """A draft of random weights (the 0.5B's shape) on the 2-core EPYC: SSD rounds of 330 ms
    (verify 230) for one token, plain steps of 100 ms. Plain's probe beats SSD's four brief rounds;
    SSD at its best (tree hidden, the optimistic acceptance of 2 tokens over 4 rejections) would
    serve 1.5 tokens per 230 ms, below plain's 10 a second, so it is not re-checked at the next
    decision (it cost 9 SSD rounds per bucket) but left to the probe schedule. A cold start of a
    strong draft (test above) still is."""
    truth = {"ssd": (1.0, 0.33, 0.23, 0.10), "sync": (1.0, 0.45, 0.23, 0.10), "plain": (1.0, 0.10, 0.099, 0.0)}
    p, w = planner(), World(truth, noise=0.03, overruns=False)
    seen = [w.round(p) for _ in range(FIRST_WINDOW + 3 * EVERY)]
    assert seen[:FIRST_WINDOW] == ["ssd"] * FIRST_WINDOW and seen[FIRST_WINDOW] == "plain"
    assert "ssd" not in seen[FIRST_WINDOW:], seen


def test_a_new_bucket_weighs_ssd_by_the_round_its_verify_is_part_of():
    """8 requests: a verify of K+1 tokens each 0.55 s on the target's core, a decode step 0.18 s
    on both, 3.05 tokens a round: SSD's verify alone (5.5 tokens/s a request) is a tie with plain
    (5.6); SSD's rounds measured at 1.3x their verify (waits for trees and first drafts) make it
    4.3, so the bucket starts plain (the real pair's 8-request bucket started in SSD rounds of
    1.1 s, and its burst ended with stragglers in small batches)."""
    from sglang_ssd.auto_k import expected_tokens

    p = ModePlanner(DepthController(K, 8, False))
    p.costs.speculating = 1
    for _ in range(8):  # batch 1: SSD rounds 1.3x their verify; 3 of K drafts accepted
        p.observe("ssd", K, 1, [3], verify_s=0.25, round_s=0.325, wait_s=0.075, tree_s=0.2, tree_k=K, overrun_s=0.0)
    p.costs.observe(8, K + 1, 0.55)  # the verify at 8 requests, and decode steps on both cores
    p.costs.observe(1, 1, 0.10, 2)
    p.costs.observe(8, 1, 0.18, 2)
    e = expected_tokens(p.depth.accept, K)
    assert e / 0.55 * (1 + 0.05) > 1 / 0.18 > e / (0.55 * 1.3) * (1 + 0.05)  # a tie on the verify alone
    assert p.plan(8)[0] == "plain"


PRIOR = {1: {1: 0.20, 2: 0.21, 4: 0.22, 8: 0.30, 16: 0.55, 32: 1.05},  # the target's linears by rows,
         2: {1: 0.16, 2: 0.165, 4: 0.17, 8: 0.19, 16: 0.29, 32: 0.54}}  # per thread count (target_prior.py)


def test_the_prior_predicts_a_forward_no_round_measured_scaled_to_those_measured():
    """A count never measured (two threads) is its prior times the median of measured over prior on
    the counts that were (one thread), linear between the timed row counts and beyond the last."""
    from sglang_ssd.round_costs import RoundCosts

    c = RoundCosts(speculating=1)
    c.counts = (2, 1)
    assert c.predict(2, 5, threads=2) is None and c.step_predicted(2) is None  # no prior, nothing measured there
    c.set_prior(PRIOR)
    assert c.predict(2, 5, threads=2) is None  # a prior, but no forward measured to scale it to
    c.observe(2, 5, 0.419)  # one thread: 10 tokens, prior 0.3625
    c.observe(1, 5, 0.253)  # 5 tokens, prior 0.24
    scale = (0.419 / 0.3625 + 0.253 / 0.24) / 2  # the median of two
    assert c.predict(2, 5, threads=2) == pytest.approx((0.19 + 0.1 * 2 / 8) * scale)
    assert c.fastest(2, 5, others=True) == pytest.approx((0.19 + 0.1 * 2 / 8) * scale)
    assert c.predict(32, 2, threads=2) == pytest.approx((0.54 + 0.25 / 16 * 32) * scale)  # 64 rows: the last slope
    assert c.step_predicted(2) == pytest.approx(0.165 * scale)  # plain: the faster count, both unmeasured at 2
    c.observe(2, 1, 0.148, 2)  # measured: the measurement, not the prior
    assert c.step_predicted(2) == pytest.approx(0.148)
    assert c.predict(4, 1, threads=2) == pytest.approx(0.17 * 0.148 / 0.165)  # its own count's scale now
    assert c.prior_table()["threads2"]["ms"][8] == pytest.approx(190.0)


class _OverrunSplitWorld(SplitWorld):
    TREE_OVERRUNS = True


def test_with_the_prior_a_two_request_bucket_finds_sync_at_its_first_decision():
    """The 2-core EPYC at 2 requests, T=0.7 (a trace of 2026-12-07): SSD's verify on the target's
    one core 419 ms and 128 ms of tree overrun for 4 tokens a request (7.2/s); a sync round, its
    verify on both cores (215 ms) after 190 ms of drafting, 400 ms (10/s); a plain step on both
    cores 150 ms (6.7/s). No two-core forward was measured yet: with the prior (the linears timed
    at start) the two-core verify is predicted, sync is probed at the first decision and kept;
    without it the planner probed plain (unknown), saw it lose and stayed in SSD rounds: sync,
    whose verify no line could predict from one-token plain steps, was never tried."""
    truth = {"ssd": (4.0, 0.554, 0.419, 0.128), "sync": (4.0, 0.40, 0.215, 0.19), "plain": (1.0, 0.15, 0.148, 0.0)}

    def run(prior):
        p, w = planner(), _OverrunSplitWorld(truth, noise=0.05, jit=0.19)
        p.costs.speculating, p.costs.counts = 1, (2, 1)
        if prior:
            p.costs.set_prior(PRIOR)
        return [w.round(p, 2) for _ in range(300)], p

    modes, p = run(prior=True)
    assert modes[FIRST_WINDOW] == "sync"
    assert modes[-100:].count("sync") > 90 and p.table()["bs2-3"]["mode"] == "sync"
    modes, p = run(prior=False)
    assert "sync" not in modes and p.table()["bs2-3"]["mode"] == "ssd"


def _served_at_batch_one(jit: bool) -> ModePlanner:
    """A split server's planner after batch-1 rounds (the trace of 2026-12-07, T=0.7): SSD rounds of
    390 ms, their verify of 5 tokens on one core 280 ms, plain steps on both 185 ms, acceptance as
    measured, and (`jit`) sync rounds whose draft estimated 165 ms of drafting just in time."""
    p = planner()
    p.costs.speculating, p.costs.counts = 1, (2, 1)
    p.costs.set_prior(PRIOR)
    for _ in range(3):
        p.observe("ssd", K, 1, [3], verify_s=0.28, round_s=0.39, wait_s=0.11)
    p.costs.observe(1, 1, 0.185, 2)
    p.depth.observe_acceptance(K, [4, 1, 4, 0, 3, 4, 2, 4] * 4)
    if jit:
        p._bucket(1).mode = "sync"
        for _ in range(3):
            p.observe("sync", K, 1, [3], verify_s=0.18, round_s=0.35, wait_s=0.165, jit_s=0.165, threads=2)
    return p


def test_a_new_bucket_starts_in_sync_rounds_when_the_cost_model_predicts_them_faster():
    """Two requests after batch-1 rounds: a sync round predicted from the prior's two-core verify of
    10 tokens (~220 ms scaled) plus drafting just in time (batch 1's 165 ms times sqrt 2: 3.6
    tokens in 0.45 s) beats a plain step (~170 ms for one token) and an SSD round (its verify on
    one core, ~420 ms, times SSD's measured round-to-verify ratio 1.39): the bucket starts in sync.
    Without the draft's estimate sync cannot be predicted: plain or SSD."""
    assert _served_at_batch_one(jit=True)._bucket(2).mode == "sync"
    assert _served_at_batch_one(jit=False)._bucket(2).mode in ("plain", "ssd")


def test_a_plain_bucket_probes_sync_when_the_cost_model_predicts_it_faster():
    """A bucket in plain rounds (5.6 tokens/s a request measured) whose sync round is predicted
    faster is probed in sync at its next decision (no SSD probe first: on the 2-core EPYC an SSD
    probe at 4 requests cost 6 rounds of 1.05 s for 4 tokens a request)."""
    p = _served_at_batch_one(jit=True)
    b = p._bucket(2)
    b.mode = "plain"
    for _ in range(FIRST_WINDOW):
        p.observe("plain", 0, 2, [0, 0], verify_s=0.17, round_s=0.178, threads=2)
    assert b.mode == "sync" and b.probing == "plain"
    assert p.sync_rate(2) > 1.05 / 0.178
    assert p._jit(2) == pytest.approx(0.165 * 2 ** 0.5)  # batch 1's estimate, scaled to 2 requests


def _burst_of_four(slow_accepts: int, rounds: int = 40, with_slow: bool = True, remaining: int = 48):
    """A 4-request bucket in sync rounds (the 2-core EPYC at T=0, K=6, 2026-12-07): 575 ms a round,
    three requests accepting 6 of 6 drafts, the fourth `slow_accepts`; plain steps of 115-130 ms at
    1-4 requests; every request `remaining` tokens to go. The bucket's mean (5.5 tokens a
    request-round, 9.6/s) beats plain (7.7/s) per round. Returns the modes served and the planner."""
    p = ModePlanner(DepthController(6, 8, False), allowed=("sync", "plain"))
    for n, step in ((1, 0.115), (2, 0.12), (3, 0.125), (4, 0.13)):  # the decode steps, measured
        p.costs.observe(n, 1, step)
    rids = ["a", "b", "c", "slow"] if with_slow else ["a", "b", "c", "d"]
    left = dict.fromkeys(rids, remaining)
    seen = []
    for _ in range(rounds):
        mode, k = p.plan(4, [(r, left[r]) for r in rids])
        if mode == "plain":
            acc = [0, 0, 0, 0]
            p.observe("plain", 0, 4, acc, verify_s=0.128, round_s=0.13)
        else:
            acc = [6, 6, 6, slow_accepts if with_slow else 6]
            p.observe("sync", k, 4, acc, verify_s=0.30, round_s=0.575, wait_s=0.27, jit_s=0.27)
        p.observe_requests(rids, acc, [mode != "plain"] * 4, k)
        for r, a in zip(rids, acc):
            left[r] = max(left[r] - a - 1, 1)
        seen.append(mode)
    return seen, p


def test_a_batch_whose_slowest_request_would_finish_later_than_in_plain_rounds_is_served_plain():
    """The burst above with a request accepting 0 or 1 drafts a round: kept in sync rounds, the
    three fast ones leave after ~7 rounds (4 s) and the slow one, 20-odd tokens in, needs ~25 plain
    steps more (7 s in all); plain rounds from now finish all four together in 48 x 130 ms (6.2 s).
    So from its fourth round (the bucket's round is known after three) every round is
    plain; the bucket stays in sync rounds (its mean still wins) and counts the rounds served
    plain. Without the slow request every round is sync."""
    for slow in (0, 1):
        seen, p = _burst_of_four(slow)
        assert seen == ["sync"] * 3 + ["plain"] * 37, (slow, seen)
        row = p.table()["bs4-7"]
        assert row["mode"] == "sync" and row["plain_to_drain"] >= 25
        assert p.plan(4, [("a", 40), ("b", 40), ("c", 40), ("new", 40)]) == ("sync", 6)  # the slow one gone
    seen, p = _burst_of_four(0, with_slow=False, rounds=6)  # 7 tokens a round: 48 take 7 rounds
    assert seen == ["sync"] * 6 and p.table()["bs4-7"]["plain_to_drain"] == 0
    # a token to go for each: a 130 ms plain step, not a 575 ms sync round
    assert p.plan(4, [(r, 1) for r in "abcd"]) == ("plain", 0)


def test_a_batch_whose_fast_requests_are_about_to_leave_keeps_speculating():
    """At T=0.7 (the same day): three requests accepting 6 of 6 with 7 tokens to go and one accepting
    2 with 30. Per request the slow one gains ~3.5 tokens in a 750 ms sync round, less than a 200 ms
    plain step's 5/s (judged so, a burst of 4 ran 0.76x plain decoding), but plain rounds would hold
    the fast ones for 7 steps where sync lets them go after 2 rounds, and alone the slow one has
    420 ms sync rounds: sync is kept, and with 40 tokens to go for every request too."""
    p = ModePlanner(DepthController(6, 8, False), allowed=("sync", "plain"))
    for n, step in ((1, 0.12), (2, 0.15), (3, 0.18), (4, 0.2)):
        p.costs.observe(n, 1, step)
    p._bucket(1).mode = "sync"
    for _ in range(3):
        p.observe("sync", 6, 1, [2], verify_s=0.2, round_s=0.42, wait_s=0.2, jit_s=0.2)
    p._bucket(4).mode = "sync"
    rids = ["a", "b", "c", "slow"]
    for _ in range(6):
        p.observe("sync", 6, 4, [6, 6, 6, 2], verify_s=0.4, round_s=0.75, wait_s=0.33, jit_s=0.33)
        p.observe_requests(rids, [6, 6, 6, 2], [True] * 4, 6)
    assert expected_tokens(p.requests.accept("slow", p.depth.accept), 6) / 0.75 < 1 / 0.2
    assert p.plan(4, [("a", 7), ("b", 7), ("c", 7), ("slow", 30)]) == ("sync", 6)
    assert p.plan(4, [(r, 40) for r in rids]) == ("sync", 6)
    assert p.table()["bs4-7"]["plain_to_drain"] == 0


def test_round_timing_passes_each_requests_acceptance():
    """RoundTiming hands the planner each request's accepted drafts with its id; a request served
    without drafts fades instead, and a plain round fades every one."""
    from types import SimpleNamespace

    from sglang_ssd.round_timing import RoundTiming, TreeTimes

    p = planner()
    t = RoundTiming(p, SimpleNamespace(verify_s=0.0, live_k=0, live_mode="", auto_k={}, modes={}))
    t.observe("ssd", K, 2, [4, 0], [False, True], [True, True], 0.3, 0.4, 0.1, TreeTimes(), rids=["x", "y"])
    from sglang_ssd.request_acceptance import FADE, PRIOR_TOKENS as W

    assert p.requests.accept("x", 0.5) == pytest.approx((4 + W * 0.5) / (4 + W))
    assert p.requests.accept("y", 0.5) == pytest.approx(0.5)  # not speculated: no evidence
    t.observe("plain", 0, 2, [0, 0], [True, True], [None, None], 0.1, 0.1, 0.0, TreeTimes(), rids=["x", "y"])
    assert p.requests.accept("x", 0.5) == pytest.approx((4 * FADE + W * 0.5) / (4 * FADE + W))


def test_the_request_left_alone_at_the_end_of_a_burst_is_served_by_its_own_acceptance():
    """The real pair at T=0 (2026-12-07): a burst of 4 left one request that the draft predicts badly,
    served in SSD rounds of 380-600 ms at 1-4 tokens (8 rounds), while a plain step took 170 ms. The
    bucket of 1 is SSD (its requests average 5 tokens in a 380 ms round: 13/s against 5.9/s plain),
    so a request that made 1-2 tokens a round is served plain, one that makes 5 keeps SSD, and a good request
    with a token to go gets a plain step, not a verify."""
    p = ModePlanner(DepthController(5, 8, False), allowed=("ssd", "plain"))
    p.costs.observe(1, 1, 0.17)
    for _ in range(6):  # the bucket's rounds: requests accepting 4 of 5
        p.observe("ssd", 5, 1, [4], verify_s=0.3, round_s=0.38, wait_s=0.05)
        p.observe_requests(["good"], [4], [True], 5)
    assert p._bucket(1).mode == "ssd"
    for a in (0, 1, 0, 0):
        p.observe_requests(["slow"], [a], [True], 5)
    assert p.plan(1, [("slow", 20)]) == ("plain", 0)
    assert p.table()["bs1-1"]["plain_to_drain"] == 1
    assert p.plan(1, [("good", 20)]) == ("ssd", 5)  # (back from draining: sooner by the margin)
    assert p.plan(1, [("good", 1)]) == ("plain", 0)
    p._bucket(1).probing = "plain"  # a probe of SSD measures it: served so whatever the request
    assert p.plan(1, [("slow", 20)]) == ("ssd", 5)


def test_the_drains_predictions_are_kept_for_the_round_log():
    """plan() leaves what the drain rule saw in `last_drain` (RoundTiming writes it to the round log):
    why it could not judge (no round cost known yet), else both finishes, each request's expected
    tokens and the round they were judged by (the verify before MIN_STEADY rounds, then the
    bucket's own); nothing when the round was not judged."""
    p = ModePlanner(DepthController(5, 8, False), allowed=("ssd", "plain"))
    p.costs.observe(1, 1, 0.17)
    assert p.plan(1, [("a", 20)]) == ("ssd", 5) and p.last_drain == {"why": "no round cost"}
    p.observe("ssd", 5, 1, [4], verify_s=0.3, round_s=0.38)
    p.plan(1, [("a", 20)])
    assert p.last_drain["round_s"] == 0.3 and p.last_drain["round_from"] == "verify"
    for _ in range(2):
        p.observe("ssd", 5, 1, [4], verify_s=0.3, round_s=0.38)
    p.plan(1, [("a", 20)])
    d = p.last_drain
    assert set(d) == {"keep_s", "plain_s", "tokens", "round_s", "round_from"}
    assert d["round_s"] == 0.38 and d["round_from"] == "steady"
    assert d["plain_s"] == pytest.approx(20 * 0.17, abs=1e-3) and len(d["tokens"]) == 1
    p.plan(1, ())
    assert p.last_drain is None


def test_a_tail_bucket_without_steady_rounds_drains_on_its_verify():
    """A burst's tail passes through buckets whose visit has not had MIN_STEADY rounds yet (the real
    pair at T=0: 7 of 8 tail rounds at 1-2 requests). A request the draft predicts badly (0-1 of 5
    drafts) left alone with 20 tokens to go: even a round costing only its 300 ms verify makes
    ~1.4 tokens (4.6/s) against 5.9/s in 170 ms plain steps, so it is served plain from its bucket's
    first round; a request accepting 4 of 5 keeps SSD."""
    from sglang_ssd.mode_planner import MIN_STEADY

    p = ModePlanner(DepthController(5, 8, False), allowed=("ssd", "plain"))
    p.costs.observe(1, 1, 0.17)
    p.costs.observe(1, 6, 0.30)  # the verify at K=5, measured in an earlier visit
    p._bucket(1).mode = "ssd"
    for a in (0, 1, 0, 0):
        p.observe_requests(["slow"], [a], [True], 5)
    for _ in range(4):
        p.observe_requests(["good"], [4], [True], 5)
    assert len(p._bucket(1).meters.get("ssd", _Meter()).recent) < MIN_STEADY
    assert p.plan(1, [("good", 20)]) == ("ssd", 5)
    assert p.plan(1, [("slow", 20)]) == ("plain", 0) and p.last_drain["round_from"] == "verify"
    # the same with the verify predicted from the target's linear layers timed at start (the prior)
    q = ModePlanner(DepthController(5, 8, False), allowed=("ssd", "plain"))
    q.costs.observe(1, 1, 0.17)
    q.costs.set_prior({q.costs.speculating: {1: 0.17, 6: 0.30}})
    q._bucket(1).mode = "ssd"
    for a in (0, 1, 0, 0):
        q.observe_requests(["slow"], [a], [True], 5)
    assert q.plan(1, [("slow", 20)]) == ("plain", 0)


def test_a_batch_is_not_judged_by_its_buckets_first_round():
    """A 2-request bucket's first SSD round waited 602 ms for its requests' first drafts (922 ms;
    the real pair at T=0, 2026-12-07), the next ones took ~350 ms for 5 + 6 tokens: SSD rounds
    finish the batch sooner than 115 ms plain steps (judged by that first round alone, a batch was
    served plain for the rest of its burst: 41 rounds). A round's cost is the mean of the latest
    rounds but the longest, once there are MIN_STEADY."""
    from sglang_ssd.mode_planner import MIN_STEADY

    p = ModePlanner(DepthController(5, 8, False), allowed=("ssd", "plain"))
    p.costs.observe(2, 1, 0.115)
    p.costs.observe(1, 1, 0.11)
    rids = ["x", "y"]
    seen = []
    for i in range(20):
        mode, k = p.plan(2, [(r, 40) for r in rids])
        seen.append(mode)
        acc = [4, 5] if mode != "plain" else [0, 0]
        p.observe(mode, k, 2, acc, verify_s=0.33, round_s=0.922 if i == 0 else 0.35, wait_s=0.6 if i == 0 else 0.01)
        p.observe_requests(rids, acc, [mode != "plain"] * 2, k)
    assert seen[:4] == ["ssd"] * 4 and p.table()["bs2-3"]["plain_to_drain"] == 0  # (plain: the bucket's probe)
    assert p._bucket(2).meters["ssd"].steady_round_s == pytest.approx(0.35) and MIN_STEADY >= 2


def test_a_buckets_round_counts_its_missed_lookups_but_not_its_longest_round():
    """SSD rounds at batch 1 of a request the draft predicts badly (the real pair at T=0): 290 ms on a
    hit, 330-450 on a miss. The round a batch's finish is predicted from is their mean but the
    longest (a first round's wait for first drafts), not their median (290: the hits alone)."""
    from sglang_ssd.mode_planner import _Meter

    m = _Meter()
    times = [0.29, 0.29, 0.45, 0.33, 0.58, 0.29, 0.29, 0.41]
    for t in times[:2]:
        m.add(1, 2, t, 0.25, t - 0.25, 0.0)
    assert m.steady_round_s is None
    for t in times[2:]:
        m.add(1, 2, t, 0.25, t - 0.25, 0.0)
    assert m.steady_round_s == pytest.approx((sum(times) - 0.58) / 7)


def test_the_round_log_carries_each_rounds_drain_predictions(tmp_path, monkeypatch):
    """SGLANG_SSD_ROUND_LOG: one JSON line a round, with what plan() saw for the drain."""
    import json
    from types import SimpleNamespace

    from sglang_ssd.round_timing import RoundTiming, TreeTimes

    log = tmp_path / "rounds.jsonl"
    monkeypatch.setenv("SGLANG_SSD_ROUND_LOG", str(log))
    p = ModePlanner(DepthController(5, 8, False), allowed=("ssd", "plain"))
    t = RoundTiming(p, SimpleNamespace(verify_s=0.0, live_k=0, live_mode="", auto_k={}, modes={}))
    p.costs.observe(1, 1, 0.17)
    for _ in range(2):
        mode, k = p.plan(1, [("a", 20)])
        t.observe(mode, k, 1, [4], [False], [True], 0.3, 0.38, 0.05, TreeTimes(), rids=["a"])
    rows = [json.loads(line) for line in log.read_text().splitlines()]
    assert [r["mode"] for r in rows] == ["ssd", "ssd"] and rows[0]["accepted"] == [4]
    assert rows[0]["drain"] == {"why": "no round cost"}
