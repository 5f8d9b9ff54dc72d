"""Unit tests of the pieces: wire, fan-out, forking, backup, chain acceptance, draft KV, speculator."""

from __future__ import annotations

import msgspec
import pytest
import torch

from sglang_ssd import wire
from sglang_ssd.backup import ngram_propose
from sglang_ssd.fanout import geometric_fanout, resolve_fanout
from sglang_ssd.forking import fork_candidates
from sglang_ssd.verify import accept_chain


# ---- wire --------------------------------------------------------------------------------------
def test_wire_round_trip():
    msg = wire.Step(round=3, begins=[wire.Begin(rid="a", prompt=[1, 2], pending=5)],
                    outcomes=[wire.Outcome(rid="b", k=2, t_star=9, committed_len=17)], releases=["c"])
    assert wire.decode_to_draft(wire.encode(msg)) == msg
    rep = wire.StepReply(round=3, specs=[wire.Spec(rid="b", hit=True, tokens=[1, 2, 3])])
    assert wire.decode_from_draft(wire.encode(rep)) == rep


@pytest.mark.parametrize("payload", [
    b"",
    b"\x93\x01\x02",  # a msgpack array, no tag
    msgspec.msgpack.encode({"type": "step", "round": "three"}),
    msgspec.msgpack.encode({"type": "step", "round": 1, "outcomes": [{"rid": "a", "k": "x"}]}),
    msgspec.msgpack.encode({"type": "reply", "round": 1}),  # a reply is not for the draft
    msgspec.msgpack.encode({"type": "nope"}),
    __import__("pickle").dumps({"type": "step", "round": 1}),  # pickle is never accepted
])
def test_wire_refuses_malformed(payload):
    with pytest.raises(wire.WireError):
        wire.decode_to_draft(payload)


# ---- fan-out -----------------------------------------------------------------------------------
@pytest.mark.parametrize("k,b", [(1, 1), (2, 5), (4, 15), (4, 20), (6, 30), (8, 3)])
def test_geometric_fanout_sums_to_budget(k, b):
    f = geometric_fanout(k, b)
    assert len(f) == k + 1 and sum(f) == b and all(x >= 0 for x in f)


def test_geometric_fanout_shape():
    f = geometric_fanout(4, 100, accept=0.6, power=0.5)
    assert f[0] > f[1] > f[2] > f[3]  # decreasing in j for j < K
    assert f[4] > f[3]  # the bonus position gets the (1-a)^(-1/(1+r)) boost
    # exact proportions: F_j proportional to a^(j/(1+r)) for j < K
    assert abs(f[1] / f[0] - 0.6 ** (1 / 1.5)) < 0.05


def test_fanout_cap_and_explicit():
    assert geometric_fanout(2, 50, cap=3) == [3, 3, 3]
    assert resolve_fanout(2, [1, 0, 2], None, vocab_size=100) == [1, 0, 2]
    assert sum(resolve_fanout(4, None, None, vocab_size=100)) == 15
    with pytest.raises(ValueError):
        resolve_fanout(2, [1, 2], None, vocab_size=100)


# ---- forking -----------------------------------------------------------------------------------
def test_fork_excludes_rejected_token():
    logits = torch.tensor([
        [0.0, 5.0, 4.0, 3.0, 1.0],  # j=0: x_1 = 1 would be rejected -> candidates 2, 3
        [9.0, 0.0, 0.0, 8.0, 7.0],  # j=1: x_2 = 3 -> candidates 0 (then 4)
        [1.0, 2.0, 3.0, 4.0, 5.0],  # j=2 = K: bonus, plain top-2: 4, 3
    ])
    assert fork_candidates(logits, [1, 3], [2, 1, 2]) == [(0, 2), (0, 3), (1, 0), (2, 4), (2, 3)]
    assert fork_candidates(logits, [1, 3], [0, 0, 1]) == [(2, 4)]


# ---- backup ------------------------------------------------------------------------------------
def test_ngram_propose():
    assert ngram_propose([1, 2, 3, 4, 9, 1, 2, 3], 3) == [4, 9, 1]
    assert ngram_propose([7, 8, 7], 4) == [8, 7, 7, 7]
    assert ngram_propose([5], 2) == [5, 5]


# ---- chain acceptance --------------------------------------------------------------------------
def _onehot_logits(preds, v=10):
    out = torch.full((len(preds), v), -5.0)
    for i, p in enumerate(preds):
        out[i, p] = 5.0
    return out


def test_accept_chain_greedy_and_plain():
    drafts = torch.tensor([[1, 2, 3, 4], [1, 2, 3, 4], [1, 2, 3, 4], [1, 2, 3, 4]])
    logits = torch.cat([
        _onehot_logits([2, 3, 4, 7]),  # all 3 accepted, bonus 7
        _onehot_logits([2, 9, 4, 7]),  # x_1 ok, x_2 rejected -> t* 9
        _onehot_logits([8, 3, 4, 7]),  # nothing accepted -> t* 8
        _onehot_logits([2, 3, 4, 7]),  # plain path: nothing accepted, sampler's token 6
    ])
    res = accept_chain(drafts, logits, torch.tensor([False, False, False, True]), torch.tensor([0, 0, 0, 6]))
    assert res.k == [3, 1, 0, 0]
    assert res.t_star == [7, 9, 8, 6]
    assert res.accept_len.tolist() == [4, 2, 1, 1]
    assert res.tokens.tolist() == [[2, 3, 4, 7], [2, 9, 0, 0], [8, 0, 0, 0], [6, 0, 0, 0]]


# ---- draft model slot KV -----------------------------------------------------------------------
@pytest.fixture(scope="module")
def draft_model(models):
    from sglang_ssd.draft_model import DraftModel

    return DraftModel(str(models["target"]), "cpu", "float32", 512)


def _hf_logits(models, ids):
    from transformers import AutoModelForCausalLM

    m = AutoModelForCausalLM.from_pretrained(str(models["target"]), dtype=torch.float32).eval()
    with torch.no_grad():
        return m(torch.tensor([ids])).logits[0]


def test_slot_attention_matches_full_forward(draft_model, models):
    """Two requests in one forward over scattered slots, then a tree of branches."""
    from sglang_ssd.draft_batch import Group, run, slot_tensor

    a, b = [5, 6, 7, 8, 9, 10], [20, 21, 22]
    pool = draft_model.pool
    sa, sb = pool.alloc(6), pool.alloc(3)
    out = draft_model.forward([run(slot_tensor([]), a, 0, sa), run(slot_tensor([]), b, 0, sb)])
    assert torch.allclose(out[:6], _hf_logits(models, a), atol=1e-4)
    assert torch.allclose(out[6:], _hf_logits(models, b), atol=1e-4)
    # Two branches off a's prefix at the same logical position, sharing its KV in place.
    br = pool.alloc(2)
    out2 = draft_model.forward([Group(slot_tensor(sa), [33, 44], [6, 6], br, [[br[0]], [br[1]]])])
    assert torch.allclose(out2[0], _hf_logits(models, a + [33])[-1], atol=1e-4)
    assert torch.allclose(out2[1], _hf_logits(models, a + [44])[-1], atol=1e-4)
    pool.free(sa + sb + br)
    assert pool.num_used == 0


def test_pool_full_is_an_error_not_a_crash():
    from sglang_ssd.draft_model import PoolFullError, SlotPool

    p = SlotPool(4)
    p.alloc(3)
    with pytest.raises(PoolFullError):
        p.alloc(2)


# ---- speculator --------------------------------------------------------------------------------
def _greedy(models, ids, n):
    from transformers import AutoModelForCausalLM

    m = AutoModelForCausalLM.from_pretrained(str(models["target"]), dtype=torch.float32).eval()
    out = list(ids)
    with torch.no_grad():
        for _ in range(n):
            out.append(int(m(torch.tensor([out])).logits[0, -1].argmax()))
    return out[len(ids):]


def test_speculator_self_draft_round_trip(draft_model, models):
    """With the target as its own draft: every lookup hits and specs are the true continuation."""
    from sglang_ssd.speculator import Speculator

    k = 3
    sp = Speculator(draft_model, k, [1, 1, 1, 2], "neural", 8)
    prompt = [5, 6, 7, 8]
    truth = _greedy(models, prompt, 1 + 3 * (k + 1) + k)
    assert sp.begin([wire.Begin(rid="r", prompt=prompt, pending=truth[0])]) == []
    specs, refusals, _ = sp.lookup([wire.Outcome(rid="r", k=-1, t_star=truth[0], committed_len=len(prompt))])
    assert refusals == [] and specs[0].tokens == truth[1: 1 + k]
    pos = 1 + k  # emitted so far: pending + k accepted; t* = truth[pos]
    committed = len(prompt)
    for _ in range(3):
        sp.speculate()
        committed += k + 1
        specs, refusals, _ = sp.lookup([wire.Outcome(rid="r", k=k, t_star=truth[pos], committed_len=committed)])
        assert refusals == [] and specs[0].hit
        assert specs[0].tokens == truth[pos + 1: pos + 1 + k]
        pos += k + 1
    used = draft_model.pool.num_used
    sp.release(["r"])
    assert sp.pool_usage() == (0, len(prompt) + 3 * (k + 1))  # its committed KV went to the cache
    sp.prefix.clear()
    assert draft_model.pool.num_used == 0 and used > 0


def test_speculator_refuses_bad_requests(draft_model):
    from sglang_ssd.speculator import Speculator

    sp = Speculator(draft_model, 2, [1, 1, 1], "fast", 8)
    v = draft_model.vocab_size
    refused = sp.begin([wire.Begin(rid="bad", prompt=[1, v + 5], pending=3),
                        wire.Begin(rid="neg", prompt=[-1], pending=3),
                        wire.Begin(rid="ok", prompt=[4, 5, 6], pending=7)])
    assert sorted(r.rid for r in refused) == ["bad", "neg"]
    _, refused, _ = sp.lookup([wire.Outcome(rid="ok", k=-1, t_star=7, committed_len=3),
                               wire.Outcome(rid="ghost", k=0, t_star=1, committed_len=1)])
    assert [r.rid for r in refused] == ["ghost"]
    sp.speculate()
    _, refused, _ = sp.lookup([wire.Outcome(rid="ok", k=1, t_star=7, committed_len=99)])
    assert [r.rid for r in refused] == ["ok"] and "committed length" in refused[0].reason
    assert "ok" not in sp.seqs
    sp.release(list(sp.seqs))
    sp.prefix.clear()
    assert draft_model.pool.num_used == 0


def test_geometric_fanout_closed_form():
    """F_j = F_0 a^(j/(1+r)) (j < K), F_K = F_0 a^(K/(1+r)) (1-a)^(-1/(1+r)), scaled to sum B."""
    for a, r, k, b in [(0.6, 0.5, 4, 1000), (0.8, 1.0, 3, 500), (0.3, 2.0, 5, 2000)]:
        e = 1 / (1 + r)
        w = [a ** (j * e) for j in range(k)] + [a ** (k * e) * (1 - a) ** (-e)]
        want = [b * x / sum(w) for x in w]
        got = geometric_fanout(k, b, accept=a, power=r)
        assert sum(got) == b
        assert all(abs(g - x) <= 1.0 for g, x in zip(got, want)), (got, want)


def test_fanout_estimator_learns_a_and_r():
    import random

    from sglang_ssd.fanout import FanoutEstimator, geometric_fanout

    rng = random.Random(0)
    k, a, r = 4, 0.5, 1.0
    est = FanoutEstimator(k, budget=20, cap=100, depth=16, replan_every=50)
    for _ in range(20000):
        kk = 0
        while kk < k and rng.random() < a:
            kk += 1
        # rank with P(rank >= F) = 0.5 F^-r for F >= 1 (inverse transform)
        u = rng.random()
        rank = 0 if u >= 0.5 else int((0.5 / u) ** (1 / r))
        est.observe(kk, min(rank, 16))
    est.replan()
    assert abs(est.accept - a) < 0.03
    assert abs(est.power - r) < 0.25
    assert est.schedule == geometric_fanout(k, 20, est.accept, est.power, 100)


def test_verify_visibility_chain_and_sliding_window():
    from sglang_ssd.patches.torch_verify_attention import verify_visibility

    full = verify_visibility(3, 2, None)
    assert full.tolist() == [[True, True, True, True, False], [True, True, True, True, True]]
    # window 2: the query at position 3 sees positions 1..3, the one at 4 sees 2..4
    win = verify_visibility(3, 2, None, window=2)
    assert win.tolist() == [[False, True, True, True, False], [False, False, True, True, True]]


def test_seeded_gumbel_choice_is_distributed_as_p():
    """Over seeds, the seeded choice at a position is a draw from p. N = 20000 seeds, V = 8,
    chi-square against p at the 1 - 1e-5 quantile (false failure <= 1e-5); the same seed and
    position always give the same token, and another position other noise."""
    from scipy.stats import chi2

    from sglang_ssd.sampling import gumbel_choice

    p = torch.tensor([[0.30, 0.20, 0.15, 0.10, 0.10, 0.08, 0.05, 0.02]])
    n = 20000
    draws = torch.tensor([int(gumbel_choice(p, s, [7])[0]) for s in range(n)])
    counts = torch.bincount(draws, minlength=8).double()
    exp = p[0].double() * n
    assert float(((counts - exp) ** 2 / exp).sum()) < chi2.ppf(1 - 1e-5, 7)
    assert int(gumbel_choice(p, 5, [7])[0]) == int(gumbel_choice(p, 5, [7])[0])
    at_8 = torch.tensor([int(gumbel_choice(p, s, [8])[0]) for s in range(200)])
    assert not torch.equal(at_8, draws[:200])
    zero = torch.tensor([[0.5, 0.0, 0.5, 0.0]])  # top-k/top-p cut tokens are never chosen
    assert all(int(gumbel_choice(zero, s, [3])[0]) in (0, 2) for s in range(200))


def test_accept_seeded_emits_the_target_choices_whatever_the_draft():
    """The emitted tokens of a seeded row are the target's seeded choices at each position; the
    draft only decides how many come out this round."""
    from sglang_ssd.sampling import gumbel_choice, processed_probs
    from sglang_ssd.verify import accept_seeded

    g = torch.Generator().manual_seed(3)
    b, k, v = 6, 4, 16
    logits = torch.randn(b, k + 1, v, generator=g) * 2
    params = {"temperature": torch.full((b,), 0.8), "top_k": torch.full((b,), -1, dtype=torch.int64),
              "top_p": torch.full((b,), 0.9), "min_p": torch.zeros(b)}
    seeds, pos = [11, 12, 13, 14, 15, 16], [5, 9, 9, 30, 2, 7]
    want = torch.stack([gumbel_choice(processed_probs(logits[j], *(params[x][j].repeat(k + 1) for x in
                                                                  ("temperature", "top_k", "top_p", "min_p"))),
                                      seeds[j], range(pos[j], pos[j] + k + 1)) for j in range(b)])
    drafts = want[:, :k].clone()
    drafts[1, 0] = (want[1, 0] + 1) % v  # rejected at once
    drafts[2, 2] = (want[2, 2] + 1) % v  # after two
    drafts[3] = torch.randint(0, v, (k,), generator=g)
    kk, ts = accept_seeded(logits, drafts, params, seeds, pos)
    for j in range(b):
        emitted = drafts[j, : kk[j]].tolist() + [int(ts[j])]
        assert emitted == want[j, : kk[j] + 1].tolist()
    assert kk[0] == k and kk[1] == 0 and kk[2] == 2
