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

import pytest

from sglang_ssd import wire
from sglang_ssd.backup_policy import BackupPolicy
from sglang_ssd.fanout import FanoutEstimator, geometric_fanout
from sglang_ssd.tree_budget import BudgetPlanner, ForwardCost, plan_budget


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


def test_a_warmed_prompt_is_not_computed_again_by_its_begin(draft):
    from sglang_ssd.speculator import Speculator

    k = 2
    prompt = list(range(20, 60))
    warm = Speculator(draft, k, [1, 1, 1], "neural", 8)
    warm.warm([prompt, [draft.vocab_size + 3]])  # a bad prompt is skipped, not fatal
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


def test_cpu_draft_dtype_default(models, monkeypatch):
    from sglang_ssd import config

    monkeypatch.setattr(config, "cpu_has_native_bf16", lambda: True)
    tiny = str(models["target"])
    assert config.count_params(tiny) < config.BF16_MIN_PARAMS
    assert config.choose_draft_dtype(None, "cpu", "float32", tiny) == "float32"  # not memory-bound
    monkeypatch.setattr(config, "count_params", lambda p: 500_000_000)
    assert config.choose_draft_dtype(None, "cpu", "float32", tiny) == "bfloat16"
    assert config.choose_draft_dtype("float32", "cpu", "float32", tiny) == "float32"  # the user's word
    monkeypatch.setattr(config, "cpu_has_native_bf16", lambda: False)
    assert config.choose_draft_dtype(None, "cpu", "float32", tiny) == "float32"
    assert config.choose_draft_dtype(None, "cuda:1", "float16", tiny) == "float16"


def test_first_speculation_is_answered_mid_tree(models):
    """The worker's first decode round after a Begin (outcome k = -1) is answered between tree
    steps, with the speculation the tree is being built for; the tree then completes as if
    nothing happened. A Step with a real outcome waits for the tree (None mid-tree)."""
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
            assert svc.answer_mid_tree(later) is None  # a real outcome needs the finished tree
            answers.append(wire.decode_from_draft(svc.answer_mid_tree(first)))

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
