"""Automatic K: the controller on synthetic timings, the draft answering at a changing depth,
and a server that was not given --speculative-num-steps.

Timings in the controller tests are exact functions of K and accepted counts follow the geometric
law at acceptance a (seeded), so each expected K is computed by hand from E(K) = (1 - a^(K+1)) /
(1 - a) and R(K) = max(V(K), T(K)); the throughput gaps between neighbouring K (>= 7%) are wider
than the 3% margin plus the noise of E over a 32-round window.
"""

from __future__ import annotations

import random

import pytest
import torch

from sglang_ssd import wire
from conftest import PIN_SSD, hf_greedy
from sglang_ssd.auto_k import DepthController, expected_tokens


def _accepted(a: float, k: int, rng: random.Random) -> int:
    j = 0
    while j < k and rng.random() < a:
        j += 1
    return j


def _run(ctl: DepthController, verify, tree, a: float, rounds: int, bs: int = 1, seed: int = 0,
         overhead: float = 0.0) -> list[int]:
    """Feed `rounds` rounds whose verify/tree times are verify(K, bs) / tree(K, bs); the tree of
    each round was built at the previous round's K, as in the server. Returns K per round."""
    rng = random.Random(seed)
    ks, prev = [], ctl.k
    for _ in range(rounds):
        k = ctl.k
        v, t = verify(k, bs), tree(prev, bs)
        acc = [_accepted(a, k, rng) for _ in range(bs)]
        ctl.costs.observe(bs, k + 1, v)  # what the mode planner records first, every round
        ctl.costs.observe_tree(bs, prev, t)
        ctl.observe(k, bs, acc, max(v, t) + overhead)
        ks.append(k)
        prev = k
    return ks


def _share(ks, k) -> float:
    return sum(x == k for x in ks) / len(ks)


def test_expected_tokens():
    assert expected_tokens(0.0, 4) == pytest.approx(1.0)
    assert expected_tokens(0.5, 1) == pytest.approx(1.5)
    assert expected_tokens(0.5, 3) == pytest.approx(1.875)
    assert expected_tokens(1.0, 3) == pytest.approx(4.0, rel=1e-6)


def test_grows_to_the_deepest_tree_that_fits_a_flat_verify():
    """GPU-like: verify 10 ms whatever K, tree 1.9 ms per level: trees up to K=5 fit, so K=5."""
    ctl = DepthController(4, 8, auto=True, every=32)
    ks = _run(ctl, lambda k, b: 0.010, lambda k, b: 0.0019 * k, a=0.8, rounds=1500)
    assert ks[-1] == 5 and _share(ks[-200:], 5) > 0.85


def test_shrinks_until_the_tree_fits():
    """Tree 4.5 ms per level against a 10 ms verify: K=4 overruns; K=2 is the deepest that fits."""
    ctl = DepthController(4, 8, auto=True, every=32)
    ks = _run(ctl, lambda k, b: 0.010, lambda k, b: 0.0045 * k, a=0.9, rounds=1500)
    assert ks[-1] == 2 and _share(ks[-200:], 2) > 0.85 and max(ks[-200:]) == 2
    assert ks[0] == 4 and ctl.moves >= 2


def test_a_slightly_overrunning_tree_stays_when_it_serves_more():
    """The real pair on a CPU, batch 1 (acceptance 0.97): verify 185 + 16 K ms, tree 67.5 ms per
    level. K=4's 270 ms tree overruns its 249 ms verify, yet serves 4.71 / 0.270 = 17.4 tokens/s
    against K=3's 3.82 / 0.233 = 16.4 and K=5's 5.57 / 0.338 = 16.5: K stays at 4 (from 4), and
    comes to 4 from 3."""
    verify = lambda k, b: 0.185 + 0.016 * k  # noqa: E731
    tree = lambda k, b: 0.0675 * k  # noqa: E731
    for start in (4, 3):
        ctl = DepthController(start, 8, auto=True, every=32)
        ks = _run(ctl, verify, tree, a=0.97, rounds=1500)
        assert _share(ks[-300:], 4) > 0.85 and ks[-1] == 4, (start, ks[-300:])


def test_tree_never_fits_goes_to_one():
    ctl = DepthController(4, 8, auto=True, every=8)
    ks = _run(ctl, lambda k, b: 0.001, lambda k, b: 0.050 * k, a=0.9, rounds=200)
    assert ks[-1] == 1 and set(ks[-100:]) == {1}  # nothing to explore below 1, and 2 overruns


def test_compute_bound_verify_with_low_acceptance_prefers_short_k():
    """CPU-like: verify 10 + 4K ms, tree 1 ms per level (always fits), a = 0.3:
    E/R is 1.30/14 at K=1, 1.39/18 at K=2, ... so K=1 is best: one verify timing says nothing
    of its slope, so K=5 (predicted as good) is measured first, then the fitted slope walks K down."""
    ctl = DepthController(4, 8, auto=True, every=32)
    ks = _run(ctl, lambda k, b: 0.010 + 0.004 * k, lambda k, b: 0.001 * k, a=0.3, rounds=1500)
    assert _share(ks[-100:], 1) > 0.85 and _share(ks[-500:], 1) > 0.85 and max(ks) == 5  # 2 re-measured now and then


def test_high_acceptance_and_cheap_tree_reach_the_maximum():
    ctl = DepthController(4, 8, auto=True, every=32)
    ks = _run(ctl, lambda k, b: 0.020, lambda k, b: 0.001 * k, a=0.95, rounds=1500)
    assert _share(ks[-500:], 8) > 0.7 and set(ks[-500:]) <= {7, 8}  # 7 is re-measured now and then


def test_each_batch_bucket_keeps_its_own_k():
    """The tree grows with the batch (bs branches trees), the verify much less: batch 1 settles
    at K=5 (1.9 ms/level vs 10 ms), batch 16 at K=3 (3.8 ms/level: its 11.4 ms tree overruns the
    10 ms verify, yet E/R = 2.95 / 11.4 ms beats K=2's 2.44 / 10 ms and K=4's 3.36 / 15.2 ms).
    Back at batch 1, K=5 comes back at once."""
    verify = lambda k, b: 0.010  # noqa: E731
    tree = lambda k, b: 0.0019 * k * max(1, b / 8)  # noqa: E731
    ctl = DepthController(4, 8, auto=True, every=32)
    assert _run(ctl, verify, tree, 0.8, 1500, bs=1)[-1] == 5
    assert _run(ctl, verify, tree, 0.8, 400, bs=16)[-1] == 3
    ks = _run(ctl, verify, tree, 0.8, 3, bs=1)
    assert ks[1:] == [5, 5]
    assert set(ctl.table()) == {"bs1-1", "bs16-31"}


def test_fixed_k_never_moves():
    ctl = DepthController(3, 3, auto=False, every=1)  # a tree far slower than the verify
    ks = _run(ctl, lambda k, b: 0.001, lambda k, b: 0.5 * k, a=0.9, rounds=100)
    assert set(ks) == {3} and ctl.moves == 0


def test_bad_bounds_are_refused():
    with pytest.raises(ValueError, match="k_init"):
        DepthController(9, 8, auto=True)


# ---- the draft at a changing depth -----------------------------------------------------------------
def _speculator(models, k=4, fanout=None):
    from sglang_ssd.draft_model import DraftModel
    from sglang_ssd.speculator import Speculator

    model = DraftModel(str(models["target"]), "cpu", "float32", 2048)
    return Speculator(model, k, fanout or [2, 2, 1, 1, 1][: k + 1], "neural", 8)


def test_depth_changes_truncate_hits_and_complete_them_when_k_grows(models, hf_target):
    """Self-draft, greedy: the draft's continuation is what the target emits, so accepting it
    whole hits. After K shrinks 4 -> 2 the hit is the first 2 tokens of the pre-drafted chain;
    after K grows 2 -> 3 the tree (2 deep) answers its hit 2 deep, completed by the n-gram backup
    (a partial answer). Every drafted token equals greedy decoding from the true context."""
    sp = _speculator(models)
    prompt = [5, 17, 33, 8, 91, 12, 44]
    sp.begin([wire.Begin(rid="a", prompt=prompt, pending=60)])
    ctx = prompt + [60]
    specs, _, _ = sp.lookup([wire.Outcome(rid="a", k=-1, t_star=0, committed_len=len(prompt))])
    assert specs[0].tokens == hf_greedy(hf_target, ctx, 4)

    def round_(depth, k, t_star):
        nonlocal ctx
        sp.speculate()
        spec = sp.seqs["a"].spec
        ctx = ctx + spec[:k] + [t_star]
        sp.set_depth(depth)
        out, refusals, _ = sp.lookup([wire.Outcome(rid="a", k=k, t_star=t_star, committed_len=len(ctx) - 1)])
        assert refusals == []
        return out[0]

    g = hf_greedy(hf_target, ctx, 5)  # the target's own continuation: accept all 4, t* = the 5th
    s = round_(2, 4, g[4])
    assert s.hit and s.tokens == hf_greedy(hf_target, ctx, 2)
    assert sp.fanout == [2, 2, 1]  # a fixed schedule is cut to its first K+1 positions
    g = hf_greedy(hf_target, ctx, 3)
    s = round_(3, 2, g[2])
    # the hit branch is 2 deep: its 2 drafted tokens, completed to 3 by the n-gram backup
    assert s.hit and s.partial == 2 and len(s.tokens) == 3 and s.tokens[:2] == hf_greedy(hf_target, ctx, 2)
    g = hf_greedy(hf_target, ctx, 4)
    k = 3 if s.tokens[2] == g[2] else 2  # the backup's token is accepted only if it is the target's
    s = round_(3, k, g[k])
    assert s.hit and s.partial == 0 and s.tokens == hf_greedy(hf_target, ctx, 3)
    with pytest.raises(ValueError, match="depth=5"):
        sp.set_depth(5)
    sp.release(["a"])
    assert sp.pool_usage()[0] == 0


def test_draft_service_refuses_a_depth_beyond_the_session(models):
    from sglang_ssd.draft_model import DraftModel
    from sglang_ssd.draft_service import DraftService

    svc = DraftService(DraftModel(str(models["target"]), "cpu", "float32", 512), str(models["target"]))
    svc.open(wire.Hello(protocol=wire.PROTOCOL_VERSION, session="s", k=3, fanout=[1, 1, 1, 1]))
    raw, _ = svc.handle(wire.encode(wire.Step(round=1, begins=[wire.Begin(rid="a", prompt=[4, 5, 6], pending=7)],
                                              outcomes=[wire.Outcome(rid="a", k=-1, t_star=7, committed_len=3)],
                                              depth=4)))
    reply = wire.decode_from_draft(raw)
    assert reply.specs == [] and "depth=4" in reply.refusals[0].reason
    assert not reply.health.out_of_order and svc.rejected == 1
    raw, _ = svc.handle(wire.encode(wire.Step(round=2, begins=[wire.Begin(rid="a", prompt=[4, 5, 6], pending=7)],
                                              outcomes=[wire.Outcome(rid="a", k=-1, t_star=7, committed_len=3)],
                                              depth=2)))
    reply = wire.decode_from_draft(raw)
    assert reply.refusals == [] and len(reply.specs[0].tokens) == 2


def test_online_fanout_is_replanned_for_the_new_depth():
    from sglang_ssd.fanout import FanoutEstimator

    est = FanoutEstimator(8, 15, cap=100)
    assert len(est.schedule) == 9 and sum(est.schedule) == 15
    assert len(est.set_k(2)) == 3 and sum(est.schedule) == 15 and est.k == 2


# ---- through a server ---------------------------------------------------------------------------
@pytest.fixture(scope="module")
def auto_server(models, log_dir):
    """SSD without --speculative-num-steps (automatic K), deciding every 4 rounds."""
    from conftest import SERVER_ARGS
    from sglang_ssd.cpu_serve import cpu_env
    from sglang_ssd.testing.server import CPUServer

    args = SERVER_ARGS + PIN_SSD + ["--speculative-algorithm", "SSD", "--speculative-draft-model-path",
                          str(models["draft_perturbed"])]
    srv = CPUServer(models["target"], args, log_path=str(log_dir / "ssd_auto_k.log"),
                    env=cpu_env(dict(__import__("os").environ, SGLANG_SSD_AUTO_K_EVERY="4")))
    yield srv
    srv.stop()


def test_automatic_k_through_the_server_is_exact(auto_server, models, hf_target):
    """K moves while requests run (it must: the first decision measures a neighbouring depth),
    alone and batched; every greedy output equals HF greedy and a seeded sampled one equals its
    seeded reference, whatever K each round had."""
    from concurrent.futures import ThreadPoolExecutor

    from conftest import hf_seeded
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(models["target"]))
    texts = ["The quick brown fox", "def add(a, b):", "Once upon a time", "for i in range(10):",
             "The weather today is", "Numbers: 0 1 2 3", "return a + b", "Answer: 42."]
    prompts = [tok(t)["input_ids"] for t in texts]
    lengths = [40, 17, 33, 26, 9, 38, 21, 30]
    want = [hf_greedy(hf_target, p, n) for p, n in zip(prompts, lengths)]

    def run(i):
        sp = {"temperature": 0, "max_new_tokens": lengths[i], "ignore_eos": True}
        return auto_server.generate(prompts[i], sp)["output_ids"]

    assert [run(i) for i in range(len(prompts))] == want
    with ThreadPoolExecutor(8) as ex:
        assert list(ex.map(run, range(len(prompts)))) == want
    sp = {"temperature": 1.0, "top_p": 0.95, "max_new_tokens": 24, "ignore_eos": True, "sampling_seed": 7}
    assert auto_server.generate(prompts[2], sp)["output_ids"] == hf_seeded(hf_target, prompts[2], 24, sp)

    st = auto_server.ssd_stats()
    assert st["config"]["auto_k"] is True and st["config"]["k_max"] == 8
    ks = {int(k): n for k, n in st["k_steps"].items()}
    assert len(ks) >= 2 and sum(ks.values()) == st["steps"] and all(1 <= k <= 8 for k in ks)
    assert 1 <= st["live_k"] <= 8
    table = st["auto_k"]
    assert "bs1-1" in table and len(table) >= 2  # alone, and the batch of 8 in its own bucket
    measured = {int(k) for k in table["bs1-1"]["verify_ms"]}
    assert 4 in measured and len(measured) >= 2  # started at 4, then measured a neighbour
    assert all(v > 0 for b in table.values() for v in b["verify_ms"].values())


def test_fixed_k_stays_fixed(servers, models):
    """--speculative-num-steps fixes K: every step is verified at it, and nothing is tuned."""
    from conftest import K
    from test_e2e_greedy import ssd

    srv = ssd(servers, "draft_same")
    srv.generate([5, 6, 7, 8], {"temperature": 0, "max_new_tokens": 20, "ignore_eos": True})
    st = srv.ssd_stats()
    assert st["config"]["auto_k"] is False and st["config"]["k_max"] == K
    assert {int(k) for k in st["k_steps"]} == {K} and st["live_k"] == K and st["auto_k"] == {}


def test_restricted_depths_are_the_only_ones_visited():
    """The target replays verify graphs of a few widths only (verify_widths.py): K keeps to the
    captured depths and moves between neighbouring captured ones (2 <-> 4, never 3)."""
    ctl = DepthController(3, 8, auto=True, every=32)
    ctl.restrict([2, 4, 9])  # 9 is past k_max: ignored
    assert ctl.k == 2 and ctl.allowed == {2, 4}
    ks = _run(ctl, lambda k, b: 0.010, lambda k, b: 0.0019 * k, a=0.8, rounds=600)
    assert set(ks) == {2, 4} and ks[-1] == 4  # the flat verify's deepest fitting tree among them
    pinned = DepthController(4, 8, auto=True, every=8)
    pinned.restrict([8])
    assert set(_run(pinned, lambda k, b: 0.010, lambda k, b: 0.03 * k, a=0.5, rounds=200)) == {8}
    with pytest.raises(ValueError, match="no depth"):
        DepthController(4, 8, auto=True).restrict([0, 9])


def test_a_new_bucket_moves_within_a_quarter_of_the_period():
    """Requests of a few dozen tokens last about a dozen rounds: a new bucket's first decisions
    come every `every` // 4 rounds (8 of 32), so with acceptance 0.95 and a tree far inside a
    flat verify K leaves 4 at round 8 and is deeper again at round 16; later decisions keep the
    full period."""
    ctl = DepthController(4, 8, auto=True, every=32)
    ks = _run(ctl, lambda k, b: 0.020, lambda k, b: 0.001 * k, a=0.95, rounds=17)
    assert ks[:8] == [4] * 8 and ks[8] == 5 and ks[16] == 6, ks
    ks = _run(ctl, lambda k, b: 0.020, lambda k, b: 0.001 * k, a=0.95, rounds=80)
    assert max(ks) == 8 and ks[-1] >= 7
    # a tree that overruns (4.5 ms per level against 10 ms) sends K down only after a full period
    ctl = DepthController(4, 8, auto=True, every=32)
    ks = _run(ctl, lambda k, b: 0.010, lambda k, b: 0.0045 * k, a=0.9, rounds=80)
    assert set(ks[:56]) == {4} and ks[-1] == 3, ks
