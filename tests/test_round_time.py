"""What a round's time is made of: the time-sized fan-out budget (tree_budget.py), the draft's warm
prefill, first speculations answered mid-tree, the CPU draft dtype.

The planner is checked on exact synthetic timings: a tree that would outlast the verify is cut
to what fits when the draft's ranks saturate; a long verify with spread ranks takes the largest
budget; a budget that buys no hits is never taken; a tree that cannot fit at any budget gets B=1
(automatic K then lowers K). Then the real draft: the speculator's tree is built with the
planner's schedule, measured forwards rescale its cost curve, a warmed prompt is not computed
again by its Begin, and the first decode round is answered between tree steps.
"""

from __future__ import annotations

import math

import pytest

import torch

from conftest import hf_greedy
from sglang_ssd import wire
from sglang_ssd.backup_policy import BackupPolicy
from sglang_ssd.sampling import gumbel_choice, param_tensors, processed_probs
from sglang_ssd.fanout import FanoutEstimator, geometric_fanout
from sglang_ssd.tree_budget import BudgetPlanner, ForwardCost, expected_max, plan_budget


def _linear_cost(c0: float, c1: float) -> ForwardCost:
    return ForwardCost({n: c0 + c1 * n for n in (1, 2, 4, 8, 16, 32, 64)})


def _estimator(k: int, accept: float, rank_probs: list[float], weight: float = 1e6) -> FanoutEstimator:
    """An estimator whose evidence is `weight` observations at acceptance `accept`, t* ranks
    distributed as rank_probs (the rest beyond the candidates)."""
    est = FanoutEstimator(k, 3 * (k + 1), cap=1000, depth=16)
    est.acc, est.rej = accept * weight, (1 - accept) * weight
    est.rank_hist = [weight * p for p in rank_probs] + [0.0] * (16 - len(rank_probs))
    est.rank_hist.append(weight * max(0.0, 1 - sum(rank_probs)))
    est.replan()
    return est


def test_forward_cost_interpolates_and_follows_live_forwards():
    c = ForwardCost({1: 0.1, 4: 0.2, 16: 0.5})
    assert c(1) == pytest.approx(0.1) and c(2) == pytest.approx(0.1 + 0.1 / 3)
    assert c(10) == pytest.approx(0.35) and c(32) == pytest.approx(0.9)  # beyond: the last slope
    for _ in range(100):
        c.observe(4, 0.4)  # the live context doubled the cost
    assert c.scale == pytest.approx(2.0, rel=1e-3) and c(16) == pytest.approx(1.0, rel=1e-3)


def test_predicted_hit_is_the_geometric_law_times_the_rank_cdf():
    est = _estimator(2, 0.5, [0.6, 0.3])
    # P(k=0)=0.5, P(k=1)=0.25, P(k=2)=0.25; CDF(1)=0.6, CDF(2)=0.9, CDF(0)=0
    assert est.predicted_hit([1, 2, 0]) == pytest.approx(0.5 * 0.6 + 0.25 * 0.9)
    assert est.predicted_hit([2, 2, 2]) == pytest.approx(0.9)


def _choose(cost, verify_s, est, k=4, n_seqs=1, b_max=15, miss_s_per=0.0, miss_tokens=1.0):
    p = BudgetPlanner(b_max, cost)
    b, fan = p.choose(k, n_seqs, verify_s, est, miss_tokens, lambda m: miss_s_per * m, cap=1000)
    assert sum(fan) == b and fan == geometric_fanout(k, b, est.live_accept, est.power, 1000)
    return p, b


def test_saturated_ranks_cut_the_tree_to_what_fits_the_verify():
    """Real-pair-like: 95% of t* are the draft's top choice; a 15-branch tree takes 2.6 s against a
    1.5 s verify. The planner's tree fits, and hits within 0.5% of the largest tree that fits
    (past saturation more branches buy nothing)."""
    cost = _linear_cost(0.10, 0.02)
    est = _estimator(4, 0.9, [0.95, 0.03, 0.01])
    p, b = _choose(cost, 1.5, est, miss_s_per=0.4, miss_tokens=4.0)
    fits = [bb for bb in range(1, 16) if p.tree_seconds(4, 1, bb) <= 1.5]
    assert p.tree_seconds(4, 1, 15) > 1.5 and b in fits
    most = est.predicted_hit(geometric_fanout(4, max(fits), est.live_accept, est.power, 1000))
    assert most - 0.005 <= p.last["predicted_hit"] <= most  # saturated: the rest buys < 0.5% hits
    assert p.last["predicted_hit"] > 0.9


def test_a_long_verify_with_spread_ranks_takes_the_largest_budget():
    cost = _linear_cost(0.001, 0.0001)
    est = _estimator(4, 0.7, [0.3, 0.15, 0.1, 0.08, 0.06, 0.05, 0.04, 0.03, 0.03, 0.02, 0.02, 0.02])
    _, b = _choose(cost, 1.0, est, miss_s_per=0.2, miss_tokens=2.0)
    assert b == 15


def test_a_budget_that_buys_no_hits_is_not_taken():
    """Every t* is the top choice: one branch per position already hits all it can."""
    cost = _linear_cost(0.001, 0.0001)
    est = _estimator(4, 0.8, [1.0])
    p, b = _choose(cost, 1.0, est, miss_s_per=0.2)
    full = [bb for bb in range(1, 16)
            if est.predicted_hit(geometric_fanout(4, bb, est.live_accept, est.power, 1000)) > 1 - 1e-9]
    assert b == min(full) <= 6 and p.last["predicted_hit"] == pytest.approx(1.0)  # >= 1 branch per position


def test_a_tree_that_never_fits_gets_one_branch():
    cost = _linear_cost(1.0, 0.1)
    est = _estimator(4, 0.9, [0.9, 0.05])
    p, b = _choose(cost, 0.5, est, miss_s_per=0.5, miss_tokens=4.0)
    assert b == 1 and p.tree_seconds(4, 1, 1) > 0.5


def test_trees_slower_than_their_forwards_shrink_the_budget():
    """The forward curve says a 15-branch tree fits a 1.0 s verify, but whole trees take twice
    what their forwards predict: within 3 measured trees the planner takes a budget whose
    corrected tree (about) fits the verify."""
    cost = _linear_cost(0.05, 0.01)
    est = _estimator(4, 0.9, [0.5, 0.2, 0.1, 0.05, 0.05])
    p, b0 = _choose(cost, 1.0, est, miss_s_per=0.2, miss_tokens=1.0)
    assert p._forwards(4, 1, b0) <= 1.0 and p.tree_ratio == 1.0
    for _ in range(3):
        p.observe_tree(4, 1, b0, 2.0 * p._forwards(4, 1, b0))
    assert p.tree_ratio == pytest.approx(1 + (1 - 0.7 ** 3), rel=1e-6)
    b, _ = p.choose(4, 1, 1.0, est, 1.0, lambda m: 0.2 * m, cap=1000)
    assert b < b0 and p.tree_seconds(4, 1, b) < 1.05 < p.tree_seconds(4, 1, b0) and p.last["tree_ratio"] == pytest.approx(p.tree_ratio, abs=1e-3)
    p.observe_tree(4, 1, b, 0.0)  # nothing measured: no change
    assert p.tree_ratio == pytest.approx(1 + (1 - 0.7 ** 3), rel=1e-6)


def test_expected_max_of_the_verify_and_a_scattered_tree():
    assert expected_max(1.0, 0.8, 0.0) == 1.0 and expected_max(1.0, 1.3, 0.0) == 1.3
    assert expected_max(1.0, 1.0, 0.1) == pytest.approx(1.0 + 0.1 / math.sqrt(2 * math.pi))
    assert expected_max(1.0, 0.2, 0.1) == pytest.approx(1.0) and expected_max(1.0, 2.0, 0.1) == pytest.approx(2.0)
    # against a quadrature of E max(1, T), T ~ N(0.95, 0.1)
    xs = [0.95 + 0.1 * (i / 1000.0) for i in range(-8000, 8001)]
    w = [math.exp(-0.5 * ((x - 0.95) / 0.1) ** 2) for x in xs]
    assert expected_max(1.0, 0.95, 0.1) == pytest.approx(sum(max(1.0, x) * wi for x, wi in zip(xs, w)) / sum(w), rel=1e-6)


def test_scattered_trees_leave_a_margin_before_the_verify_ends():
    """Trees that scatter +-15% around their (unbiased) prediction: a tree planned to end just at
    the verify's end would overrun it half the time. The planner keeps the same ratio but takes a
    smaller budget than without scatter, one whose expected round is shorter."""
    cost = _linear_cost(0.10, 0.02)
    est = _estimator(4, 0.9, [0.7, 0.1, 0.05, 0.05, 0.03])
    p0, b0 = _choose(cost, 1.5, est, miss_s_per=0.4, miss_tokens=4.0)
    p = BudgetPlanner(15, cost)
    for i in range(20):
        p.observe_tree(4, 1, b0, (1.15 if i % 2 else 0.85) * p._forwards(4, 1, b0))
    assert p.tree_spread == pytest.approx(0.15, rel=0.2) and p.tree_ratio == pytest.approx(1.0, abs=0.05)
    b, _ = p.choose(4, 1, 1.5, est, 4.0, lambda m: 0.4 * m, cap=1000)
    assert b < b0 and p.last["tree_spread"] == pytest.approx(p.tree_spread, abs=1e-3)
    sd = p.tree_spread
    assert expected_max(1.5, p.tree_seconds(4, 1, b), sd * p.tree_seconds(4, 1, b)) < \
        expected_max(1.5, p.tree_seconds(4, 1, b0), sd * p.tree_seconds(4, 1, b0))


def test_batch_shares_the_tree_so_the_budget_per_request_shrinks():
    cost = _linear_cost(0.05, 0.01)
    est = _estimator(4, 0.9, [0.9, 0.05, 0.02])
    _, b1 = _choose(cost, 1.0, est, n_seqs=1, miss_s_per=0.2, miss_tokens=4.0)
    _, b8 = _choose(cost, 1.0, est, n_seqs=8, miss_s_per=0.2, miss_tokens=4.0)
    assert b8 < b1


def test_plan_budget_is_off_for_a_fixed_budget_or_before_a_verify_is_measured():
    est = _estimator(4, 0.9, [0.9])
    pol = BackupPolicy("neural", 8, 4)
    planner = BudgetPlanner(15, _linear_cost(0.01, 0.001))
    assert plan_budget(None, pol, est, 4, 1, 1.0, 1000) is None
    assert plan_budget(planner, pol, est, 4, 1, 0.0, 1000) is None
    assert sum(plan_budget(planner, pol, est, 4, 1, 1.0, 1000)) >= 1


# ---- the real draft ------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def draft(models):
    from sglang_ssd.draft_model import DraftModel

    return DraftModel(str(models["target"]), "cpu", "float32", 4096)


def test_speculator_builds_the_planned_tree_and_measures_its_forwards(draft):
    """With a steep cost curve, a verify far shorter than any tree gets a smaller tree than a long
    verify (a miss gains one token: the fast backup). The tree built is the planned one, and live
    forwards rescale the curve."""
    from sglang_ssd.speculator import Speculator
    from sglang_ssd.tree_budget import calibration_forward

    k = 3
    calibration_forward(draft, context=8)(1)  # warm: the first forward of a process is slow
    planner = BudgetPlanner(12, _linear_cost(0.01, 0.05))
    est = FanoutEstimator(k, 12, cap=draft.vocab_size - 1)
    sp = Speculator(draft, k, est.schedule, "fast", 8, estimator=est, planner=planner)  # a miss gains 1 token
    sp.begin([wire.Begin(rid="r", prompt=[5, 6, 7, 8, 9], pending=10)])
    spec = sp.lookup([wire.Outcome(rid="r", k=-1, t_star=10, committed_len=5)])[0][0]
    budgets = []
    for verify_s in (1e-7, 10.0):
        sp.verify_s = verify_s
        sp.speculate()
        seq = sp.seqs["r"]
        assert sum(sp.fanout) == planner.last["budget"] == len(seq.cache)  # one branch per planned fork
        assert sp.plan().predicted_hit == planner.last["predicted_hit"] > 0
        budgets.append(planner.last["budget"])
        spec = sp.lookup([wire.Outcome(rid="r", k=0, t_star=spec.tokens[0] + 1, committed_len=6 + len(budgets) - 1)])[0][0]
    assert budgets[0] < budgets[1] == 12
    assert planner.cost.scale != 1.0  # the live forwards were measured
    sp.release(["r"])
    sp.prefix.clear()
    assert draft.pool.num_used == 0


def test_the_plan_carries_the_cost_of_drafting_just_in_time(draft):
    """What a sync round would wait for (the mode planner weighs sync with it): before any
    just-in-time drafting, the cost curve's K-chain (the tree at B = 1); once the neural backup
    has run, its measured latency; 0 with neither."""
    from sglang_ssd.speculator import Speculator

    k = 3
    bare = Speculator(draft, k, [1] * (k + 1), "neural", 8)
    assert bare.jit_seconds(1) == 0.0 and bare.plan().jit_s == 0.0
    planner = BudgetPlanner(12, _linear_cost(0.01, 0.05))
    est = FanoutEstimator(k, 12, cap=draft.vocab_size - 1)
    sp = Speculator(draft, k, est.schedule, "neural", 8, estimator=est, planner=planner)
    sp.begin([wire.Begin(rid="r", prompt=[5, 6, 7, 8, 9], pending=10)])
    spec = sp.lookup([wire.Outcome(rid="r", k=-1, t_star=10, committed_len=5)])[0][0]
    c = planner.cost  # (its scale follows the forwards the first speculation ran)
    assert sp.plan().jit_s == pytest.approx(planner.tree_seconds(k, 1, 1)) == pytest.approx(c(k + 1) + k * c(1))
    assert sp.jit_seconds(2) == pytest.approx(planner.tree_seconds(k, 2, 1))
    # no tree was built: the lookup misses and the neural backup drafts just in time
    sp.lookup([wire.Outcome(rid="r", k=0, t_star=spec.tokens[0] + 1, committed_len=6)])
    assert sp.last_backup == "neural" and sp.policy.neural_measured()
    assert sp.plan().jit_s == pytest.approx(sp.policy.neural_seconds(1))
    assert sp.plan().jit_s != pytest.approx(planner.tree_seconds(k, 1, 1))
    sp.release(["r"])
    sp.prefix.clear()
    assert draft.pool.num_used == 0


def test_a_warmed_prompt_is_not_computed_again_by_its_begin(draft):
    from sglang_ssd.speculator import Speculator

    k = 2
    prompt = list(range(20, 60))
    warm = Speculator(draft, k, [1, 1, 1], "neural", 8)
    warm.warm([wire.Warm(rid="w", prompt=prompt),
               wire.Warm(rid="bad", prompt=[draft.vocab_size + 3], first=True)])  # skipped, not fatal
    assert warm.prefill_computed == len(prompt)
    warm.begin([wire.Begin(rid="w", prompt=prompt, pending=7)])
    assert warm.prefill_computed == len(prompt) and warm.prefill_reused == len(prompt)
    cold = Speculator(draft, k, [1, 1, 1], "neural", 8, prefix_cache_tokens=0)
    cold.begin([wire.Begin(rid="c", prompt=prompt, pending=7)])
    got = [s.lookup([wire.Outcome(rid=r, k=-1, t_star=7, committed_len=len(prompt))])[0][0].tokens
           for s, r in ((warm, "w"), (cold, "c"))]
    assert got[0] == got[1]  # the cached KV drafts exactly what a fresh prefill drafts
    for s in (warm, cold):
        s.release(list(s.seqs))
        s.prefix.clear()
    assert draft.pool.num_used == 0


def test_first_speculations_are_predrafted_while_the_target_prefills(draft, hf_target, monkeypatch):
    """During the target's prefill the draft pre-drafts, for each request asking for it, the
    speculation after each of its F = fanout[0] likeliest first tokens (greedy: the K tokens the
    model itself continues with). The Begin whose first token is among them runs no forward and
    its first lookup answers that speculation; one whose first token is not drafts it then (K
    forwards); requests not asking, and released ones, keep nothing."""
    from sglang_ssd.speculator import Speculator

    k, prompts = 3, [list(range(30, 50)), list(range(60, 75)), list(range(80, 90)), list(range(5, 25))]
    sp = Speculator(draft, k, [2, 1, 1, 1], "neural", 8)
    sp.warm([wire.Warm(rid="a", prompt=prompts[0], first=True), wire.Warm(rid="b", prompt=prompts[1], first=True),
             wire.Warm(rid="n", prompt=prompts[2]), wire.Warm(rid="gone", prompt=prompts[3], first=True)])
    assert sp.prefill_computed == sum(map(len, prompts)) and set(sp.first.entries) == {"a", "b", "gone"}
    with torch.no_grad():
        top = [torch.topk(hf_target(torch.tensor([p])).logits[0, -1], 2).indices.tolist() for p in prompts[:2]]
    assert sorted(sp.first.entries["a"]) == sorted(top[0]) and sorted(sp.first.entries["b"]) == sorted(top[1])
    for c in top[0]:
        assert sp.first.entries["a"][c][0] == hf_greedy(hf_target, prompts[0] + [c], k)
    sp.release(["gone"])
    assert "gone" not in sp.first.entries
    calls = []
    real = draft.forward
    monkeypatch.setattr(draft, "forward", lambda g, *a: calls.append(sum(map(len, g))) or real(g, *a))  # queries
    sp.begin([wire.Begin(rid="a", prompt=prompts[0], pending=top[0][1])])
    assert calls == [] and sp.first.found == 1  # nothing left to compute on the first round's path
    spec = sp.lookup([wire.Outcome(rid="a", k=-1, t_star=top[0][1], committed_len=len(prompts[0]))])[0][0]
    assert spec.tokens == hf_greedy(hf_target, prompts[0] + [top[0][1]], k)
    other = next(t for t in range(40, 60) if t not in top[1])
    sp.begin([wire.Begin(rid="b", prompt=prompts[1], pending=other),
              wire.Begin(rid="n", prompt=prompts[2], pending=7)])
    assert calls == [2] * k and sp.first.missed == 1 and sp.first.found == 1 and not sp.first.entries
    spec = sp.lookup([wire.Outcome(rid="b", k=-1, t_star=other, committed_len=len(prompts[1]))])[0][0]
    assert spec.tokens == hf_greedy(hf_target, prompts[1] + [other], k)
    sp.release(list(sp.seqs))
    sp.prefix.clear()
    assert draft.pool.num_used == 0


def test_predrafted_first_speculations_of_sampled_requests_ship_their_law(draft, hf_target):
    """A sampled request's pre-drafted first speculation carries the compact q' its tokens were
    drawn from (the target's rejection sampling needs it); a seeded one's candidates are ranked by
    the Gumbel scores its first token is drawn with, so they include that token."""
    from sglang_ssd.speculator import Speculator

    k, prompt = 2, list(range(100, 130))
    law = wire.Sampling(temperature=1.0, top_p=0.9)
    sp = Speculator(draft, k, [3, 1, 1], "neural", 8)
    sp.warm([wire.Warm(rid="s", prompt=prompt, sampling=law, first=True)])
    first = next(iter(sp.first.entries["s"]))
    sp.begin([wire.Begin(rid="s", prompt=prompt, pending=first, sampling=law)])
    spec = sp.lookup([wire.Outcome(rid="s", k=-1, t_star=first, committed_len=len(prompt))])[0][0]
    assert sp.first.found == 1 and len(spec.tokens) == k and spec.q_counts and len(spec.q_counts) == k
    seeded = wire.Sampling(temperature=1.0, seed=7)
    sp.warm([wire.Warm(rid="z", prompt=prompt, sampling=seeded, first=True)])
    with torch.no_grad():
        logits = hf_target(torch.tensor([prompt])).logits[0, -1:].float()
    probs = processed_probs(logits, **param_tensors([seeded]))
    drawn = int(gumbel_choice(probs, 7, [len(prompt)])[0])  # the target's seeded first token
    assert list(sp.first.entries["z"])[0] == drawn
    sp.release(list(sp.seqs) + ["z"])
    sp.prefix.clear()
    assert draft.pool.num_used == 0 and not sp.first.entries


def test_cpu_draft_dtype_default(models, monkeypatch):
    from sglang_ssd import config

    monkeypatch.setattr(config, "cpu_has_native_bf16", lambda: True)
    tiny = str(models["target"])
    assert config.count_params(tiny) < config.BF16_MIN_PARAMS
    assert config.choose_draft_dtype(None, "cpu", "float32", tiny) == "float32"  # not memory-bound
    monkeypatch.setattr(config, "count_params", lambda p: 500_000_000)
    assert config.choose_draft_dtype(None, "cpu", "float32", tiny) == "int8"  # fbgemm: a quarter of the bytes
    assert config.choose_draft_dtype(None, "cpu", "float32", tiny, engine="sglang") == "bfloat16"
    monkeypatch.setattr(config, "cpu_int8_available", lambda: False)
    assert config.choose_draft_dtype(None, "cpu", "float32", tiny) == "bfloat16"
    assert config.choose_draft_dtype("float32", "cpu", "float32", tiny) == "float32"  # the user's word
    monkeypatch.setattr(config, "cpu_has_native_bf16", lambda: False)
    assert config.choose_draft_dtype(None, "cpu", "float32", tiny) == "float32"
    assert config.choose_draft_dtype(None, "cuda:1", "float16", tiny) == "float16"


def test_first_speculation_is_answered_mid_tree(models):
    """The worker's first decode round after a Begin (outcome k = -1) is answered between tree
    steps, with the speculation the tree is being built for; the tree then completes as if
    nothing happened. A Step with a real outcome is not answered mid-tree: it waits, and says so."""
    from sglang_ssd.draft_model import DraftModel
    from sglang_ssd.draft_service import DraftService

    svc = DraftService(DraftModel(str(models["target"]), "cpu", "float32", 4096), str(models["target"]))
    k = 3
    svc.open(wire.Hello(protocol=wire.PROTOCOL_VERSION, session="s", k=k, fanout=[1, 1, 1, 2],
                        backup="neural"))
    begin = wire.Step(round=1, begins=[wire.Begin(rid="r", prompt=[5, 6, 7, 8], pending=9)], reply=False)
    assert svc.handle(wire.encode(begin)) == (None, True)
    first = wire.encode(wire.Step(round=2, outcomes=[wire.Outcome(rid="r", k=-1, t_star=9, committed_len=4)]))
    later = wire.encode(wire.Step(round=3, outcomes=[wire.Outcome(rid="r", k=0, t_star=1, committed_len=5)]))
    answers = []

    def between():
        if not answers:
            assert svc.answer_mid_tree(later) == (None, True, False)  # a real outcome waits (or stops the tree)
            reply, waiting, moot = svc.answer_mid_tree(first)
            assert not waiting and not moot
            answers.append(wire.decode_from_draft(reply))

    svc.speculate(between)
    reply = answers[0]
    seq = svc.spec.seqs["r"]
    assert reply.round == 2 and reply.specs[0].tokens == seq.spec and len(seq.spec) == k
    assert len(seq.cache) == 5 and all(len(v[0]) == k for v in seq.cache.values())  # the whole tree
    again = wire.decode_from_draft(svc.handle(later)[0])
    assert again.round == 3 and not again.refusals and len(again.specs[0].tokens) == k


def test_a_small_draft_pool_still_opens_a_time_sized_session(models):
    """The calibration fits in the smallest pool the flags allow (256 slots) and frees it all."""
    from sglang_ssd.draft_model import DraftModel
    from sglang_ssd.draft_service import DraftService

    model = DraftModel(str(models["target"]), "cpu", "float32", 256)
    svc = DraftService(model, str(models["target"]))
    ready = svc.open(wire.Hello(protocol=wire.PROTOCOL_VERSION, session="s", k=3, fanout=[2, 2, 1, 1],
                                fanout_budget=6, auto_budget=True))
    assert ready.k == 3 and svc.spec.planner is not None
    assert max(svc.cost.ns) <= 256 - 64 and model.pool.num_used == 0


# ---- answering before the tree is done (partial_tree.py) ----------------------------------------
def test_stop_the_tree_only_when_answering_now_serves_more_tokens_per_second():
    from sglang_ssd.partial_tree import MARGIN, acceptance_of, expected_tokens, worth_stopping

    assert expected_tokens(1.0, 3) == 4 and expected_tokens(0.0, 3) == 1
    assert expected_tokens(0.5, 2) == pytest.approx(1.75)
    assert acceptance_of(1.75, 2) == pytest.approx(0.5, abs=1e-6) and acceptance_of(5.0, 4) > 0.999
    # a perfect draft (5 tokens a hit), K = 4, one step done, steps as long as the round: 2 tokens
    # now per 1 s against 5 per 4 s: stop; steps of a tenth of the round: 2 against 5 / 1.3: wait
    assert worth_stopping(1, 4, 1.0, 1.0, 5.0)
    assert not worth_stopping(1, 4, 0.1, 1.0, 5.0)
    # right at the break-even point the margin keeps the tree: (d+1)(R + (K-d)s) = MARGIN (K+1) R
    s = (MARGIN * 5 / 2 - 1) / 3
    assert not worth_stopping(1, 4, s * 0.99, 1.0, 5.0) and worth_stopping(1, 4, s * 1.01, 1.0, 5.0)
    # a weak draft (a = 0.3) gains little from depth: it stops where a perfect one waits
    weak = expected_tokens(0.3, 4)
    assert worth_stopping(1, 4, 0.3, 1.0, weak) and not worth_stopping(1, 4, 0.3, 1.0, 5.0)
    # nothing drafted yet, tree done, or nothing measured: never
    assert not any(worth_stopping(d, 4, 1.0, 1.0, 5.0) for d in (0, 4))
    assert not worth_stopping(1, 4, 1.0, 0.0, 5.0) and not worth_stopping(1, 4, 0.0, 1.0, 5.0)


def test_a_partial_branch_is_completed_by_the_backup_with_one_hot_rows():
    import torch

    from sglang_ssd.backup import ngram_propose
    from sglang_ssd.partial_tree import complete
    from sglang_ssd.qlaw import CompactQ

    ctx = [1, 2, 3, 4, 1, 2]
    toks, q = complete([3], None, ctx, 3)
    assert toks == [3] + ngram_propose(ctx + [3], 2) == [3, 4, 1] and q is None
    row = (torch.tensor([3, 9]), torch.tensor([0.75, 0.25]))
    toks, q = complete([3], CompactQ([row]), ctx, 3)
    dense = q.dense(12)
    assert dense.shape == (3, 12) and dense[0, 3] == 0.75 and dense[0, 9] == 0.25
    assert dense[1, 4] == 1.0 and dense[2, 1] == 1.0 and bool((dense.sum(1) == 1).all())


def test_a_stopped_tree_answers_its_hit_with_a_shorter_drafted_speculation(draft, hf_target):
    """Stopped after one step, the tree still holds every fork, each one token deep; a hit is
    answered with that token (the draft's own, as the whole tree would have it) and K - 1 n-gram
    tokens, marked partial = 1, and counted as a hit. A miss gets the backup as before."""
    from conftest import hf_greedy
    from sglang_ssd.speculator import Speculator

    k, prompt, t = 3, [5, 6, 7, 8, 9], 10
    greedy = hf_greedy(hf_target, prompt + [t], 2 * k + 2)  # the self-draft's continuation
    sp = Speculator(draft, k, [2, 2, 2, 2], "neural", 8)
    sp.begin([wire.Begin(rid="r", prompt=prompt, pending=t)])
    spec = sp.lookup([wire.Outcome(rid="r", k=-1, t_star=t, committed_len=len(prompt))])[0][0]
    assert spec.tokens == greedy[:k] and spec.partial == 0
    calls = []
    sp.speculate(lambda: calls.append(1) or True)  # stop as soon as allowed
    assert len(calls) == 2 and sp.last_tree_depth == 1  # after the glue (ignored) and step 1
    seq = sp.seqs["r"]
    assert len(seq.cache) == 8 and all(len(v[0]) == 1 for v in seq.cache.values())
    committed = len(prompt) + 1 + k
    got = sp.lookup([wire.Outcome(rid="r", k=k, t_star=greedy[k], committed_len=committed)])[0][0]
    assert got.hit and got.partial == 1 and len(got.tokens) == k
    assert got.tokens[0] == greedy[k + 1]
    sp.speculate()  # a whole tree from the partial speculation: its next lookups are whole again
    assert sp.last_tree_depth == k
    t_miss = next(x for x in range(3, 300) if (0, x) not in seq.cache)
    miss = sp.lookup([wire.Outcome(rid="r", k=0, t_star=t_miss, committed_len=committed + 1)])[0][0]
    assert not miss.hit and miss.partial == 0 and len(miss.tokens) == k
    sp.release(["r"])
    sp.prefix.clear()
    assert draft.pool.num_used == 0


def test_the_draft_service_stops_its_tree_for_a_waiting_round(models, hf_target):
    """Through serve() over a real socket: the outcome Step that arrives while the tree is being
    built (right after the reply before it: a worker cycle far shorter than a tree step, so
    answering now wins) is answered from the tree cut short, with a hit drafted partway and
    completed; the reply's tree depth says how deep."""
    import threading

    import zmq

    from conftest import hf_greedy
    from sglang_ssd.draft_model import DraftModel
    from sglang_ssd.draft_service import DraftService, serve

    k, prompt, t = 4, [5, 6, 7, 8, 9], 10
    greedy = hf_greedy(hf_target, prompt + [t], 2 * k + 2)
    svc = DraftService(DraftModel(str(models["target"]), "cpu", "float32", 8192), str(models["target"]))
    ctx = zmq.Context.instance()
    a, b = ctx.socket(zmq.PAIR), ctx.socket(zmq.PAIR)
    a.bind("inproc://partial-tree")
    b.connect("inproc://partial-tree")
    alive = [True]
    th = threading.Thread(target=serve, args=(a, svc, lambda: alive[0]), daemon=True)
    th.start()
    try:
        b.send(wire.encode(wire.Hello(protocol=wire.PROTOCOL_VERSION, session="s", k=k, fanout=[6] * (k + 1),
                                      backup="fast")))
        assert isinstance(wire.decode_from_draft(b.recv()), wire.Ready)
        b.send(wire.encode(wire.Step(round=1, begins=[wire.Begin(rid="r", prompt=prompt, pending=t)],
                                     reply=False)))
        # the first decode round, then its outcome (every draft token accepted), back to back
        b.send(wire.encode(wire.Step(round=2, outcomes=[wire.Outcome(rid="r", k=-1, t_star=t,
                                                                     committed_len=len(prompt))])))
        b.send(wire.encode(wire.Step(round=3, outcomes=[
            wire.Outcome(rid="r", k=k, t_star=greedy[k], committed_len=len(prompt) + 1 + k)])))
        first = wire.decode_from_draft(b.recv())
        assert first.round == 2 and first.specs[0].tokens == greedy[:k]
        second = wire.decode_from_draft(b.recv())
        assert second.round == 3 and not second.refusals
        spec = second.specs[0]
        assert spec.hit and 1 <= spec.partial < k and len(spec.tokens) == k
        assert spec.tokens[:spec.partial] == greedy[k + 1:k + 1 + spec.partial]
        assert second.times.depth == spec.partial
    finally:
        alive[0] = False
        b.send(wire.encode(wire.Shutdown()))
        th.join(10)
        a.close(linger=0)
        b.close(linger=0)


def test_a_tree_whose_requests_are_all_released_stops_at_once(models):
    """The worker pauses every request of the tree in progress (plain rounds, whose forward
    borrows the draft's cores) or they finished: the Step releasing them makes the tree moot and
    it stops after the step in progress; releasing only some of them does not."""
    from sglang_ssd.draft_model import DraftModel
    from sglang_ssd.draft_service import DraftService

    svc = DraftService(DraftModel(str(models["target"]), "cpu", "float32", 4096), str(models["target"]))
    k = 4
    svc.open(wire.Hello(protocol=wire.PROTOCOL_VERSION, session="s", k=k, fanout=[1, 1, 1, 1, 2],
                        backup="neural"))
    begins = [wire.Begin(rid=r, prompt=[5, 6, 7, 8 + i], pending=9) for i, r in enumerate("ab")]
    assert svc.handle(wire.encode(wire.Step(round=1, begins=begins, reply=False))) == (None, True)
    some = wire.encode(wire.Step(round=2, releases=["a"], reply=False))
    both = wire.encode(wire.Step(round=3, releases=["a", "b", "gone"], reply=False))
    assert svc.spec.tree_rids == set()
    seen = []

    def between():
        seen.append(set(svc.spec.tree_rids))
        if len(seen) == 2:
            assert svc.answer_mid_tree(some) == (None, False, False)
            assert svc.answer_mid_tree(both) == (None, False, True)
            return True  # what serve()'s between returns for a moot tree
        return False

    svc.speculate(between)
    assert seen[0] == {"a", "b"} and len(seen) == 2  # glue, then one tree step, then stopped
    assert svc.spec.tree_rids == set()
    assert svc.spec.last_tree_depth < k
