"""The draft's tree step and its radix cache, on the torch (CPU) path.

- Every logits row of every draft forward in a round that mixes hits, misses, different prompt
  lengths and prefixes shared through the cache equals the logits of the sequence that row's
  visible slots spell, run from scratch in Hugging Face.
- A request sharing a 200-token prefix with an earlier one prefills only its new tokens.
- 1000 sequential requests (shared and fresh prefixes, a small pool that forces eviction) leave
  the pool at its starting usage for live requests, the cache within its cap, and nothing leaked.
"""

from __future__ import annotations

import random

import pytest
import torch

from sglang_ssd import wire
from sglang_ssd.draft_model import SlotPool
from sglang_ssd.prefix_cache import PrefixCache


# ---- the radix cache alone ---------------------------------------------------------------------
def test_prefix_cache_match_insert_split_evict():
    pool = SlotPool(64)
    c = PrefixCache(pool, 64)
    a = pool.alloc(6)
    assert c.insert([1, 2, 3, 4, 5, 6], a) == [] and c.tokens == 6
    node, slots = c.match([1, 2, 3, 9])  # splits the edge after 3 tokens
    assert slots == a[:3]
    c.lock(node)
    assert c.locked == 3 and c.evictable == 3
    b = a[:3] + pool.alloc(2)  # a request that reused a[:3] and computed 2 more
    assert c.insert([1, 2, 3, 9, 9], b, owned_from=3) == [] and c.tokens == 8
    dup = pool.alloc(2)  # the same 2 tokens computed again by someone else: not taken
    assert c.insert([1, 2, 3, 9, 9], a[:3] + dup, owned_from=3) == dup
    pool.free(dup)
    # Eviction takes least recently used unlocked leaves and never the locked path.
    c.match([1, 2, 3, 9, 9])  # touch the 9,9 branch: [4, 5, 6] is now the LRU leaf
    assert c.evict(1) == 3 and c.match([1, 2, 3, 4])[1] == a[:3]
    assert c.evict(100) == 2 and c.tokens == 3 and pool.num_used == 3
    c.unlock(node)
    c.clear()
    assert c.tokens == 0 and pool.num_used == 0


def test_prefix_cache_cap_and_disabled():
    pool = SlotPool(64)
    c = PrefixCache(pool, 8)
    for i in range(5):
        assert c.insert([100 + i] * 4, pool.alloc(4)) == []
        c.trim()
        assert c.tokens <= 8
    assert pool.num_used == c.tokens == 8
    off = PrefixCache(pool, 0)
    s = pool.alloc(3)
    assert off.insert([1, 2, 3], s) == s and off.match([1, 2, 3])[1] == []


def test_alloc_evicts_the_cache_when_the_pool_is_short():
    pool = SlotPool(10)
    c = PrefixCache(pool, 10)
    c.insert(list(range(8)), pool.alloc(8))
    got = c.alloc(5)
    assert len(got) == 5 and c.tokens == 0 and pool.num_used == 5


# ---- the speculator on a real draft model -----------------------------------------------------------
@pytest.fixture(scope="module")
def hf(models):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(str(models["target"]), dtype=torch.float32).eval()


def _draft(models, slots):
    from sglang_ssd.draft_model import DraftModel

    return DraftModel(str(models["target"]), "cpu", "float32", slots)


class _Recorder:
    """Wraps DraftModel.forward: checks every row against the from-scratch logits of the
    sequence its visible slots hold (slot -> (position, token) from every write so far)."""

    def __init__(self, model, hf):
        self.model, self.hf, self.inner = model, hf, model.forward
        self.slot = {}
        self.rows = 0
        self.worst = 0.0
        model.forward = self

    def __call__(self, groups, logits=True):
        from sglang_ssd.draft_batch import expand_visible

        out = self.inner(groups, logits)
        tokens = [t for g in groups for t in g.tokens]
        positions = [p for g in groups for p in g.positions]
        for t, p, w in zip(tokens, positions, [w for g in groups for w in g.write]):
            self.slot[w] = (p, t)
        if not logits:
            return out
        visible = [v for g in groups for v in expand_visible(g)]
        with torch.no_grad():
            for i, vis in enumerate(visible):
                seq = sorted(self.slot[s] for s in vis)
                assert [p for p, _ in seq] == list(range(len(seq))), "visible slots are not one sequence"
                assert seq[-1] == (positions[i], tokens[i])
                ref = self.hf(torch.tensor([[t for _, t in seq]])).logits[0, -1]
                self.worst = max(self.worst, float((out[i] - ref).abs().max()))
                self.rows += 1
        return out


def test_tree_steps_equal_each_branch_run_from_scratch(models, hf):
    """Three requests of different lengths, two sharing a prefix through the cache; rounds where
    some requests hit (the draft's own continuation is accepted) and others miss (a t* the
    forks do not hold), with the neural backup; every forwarded row is checked."""
    from sglang_ssd.speculator import Speculator

    model = _draft(models, 2048)
    sp = Speculator(model, 3, [2, 1, 1, 2], "neural", 8)
    rec = _Recorder(model, hf)
    rng = random.Random(0)
    base = [rng.randrange(3, 200) for _ in range(30)]
    prompts = {"a": base + [7, 8, 9], "b": [rng.randrange(3, 200) for _ in range(11)], "c": base[:20] + [5]}
    sp.begin([wire.Begin(rid="a", prompt=prompts["a"], pending=11)])
    sp.release(["a"])  # "a" again below, and "c", reuse its prefix from the cache
    sp.begin([wire.Begin(rid=r, prompt=p, pending=11 + i) for i, (r, p) in enumerate(prompts.items())])
    assert sp.prefill_reused == len(prompts["a"]) + 20
    committed = {r: len(p) for r, p in prompts.items()}
    specs, _, _ = sp.lookup([wire.Outcome(rid=r, k=-1, t_star=0, committed_len=committed[r]) for r in prompts])
    last = {s.rid: s.tokens for s in specs}
    hits = misses = 0
    for rnd in range(4):
        sp.speculate()
        outcomes = []
        for i, r in enumerate(sorted(prompts)):
            seq = sp.seqs[r]
            forked = sorted(seq.cache)
            if (rnd + i) % 2 == 0 and forked:  # a hit: an outcome the tree holds
                k, t = forked[rng.randrange(len(forked))]
            else:  # a miss: accept 1, then a token no fork holds
                k, t = 1, next(x for x in range(3, 300) if (1, x) not in seq.cache and x != last[r][1])
            committed[r] += k + 1
            outcomes.append(wire.Outcome(rid=r, k=k, t_star=t, committed_len=committed[r]))
        specs, refusals, _ = sp.lookup(outcomes)
        assert refusals == []
        hits += sum(s.hit for s in specs)
        misses += sum(not s.hit for s in specs)
        last = {s.rid: s.tokens for s in specs}
    assert hits >= 3 and misses >= 3
    assert rec.rows > 100 and rec.worst < 1e-4, (rec.rows, rec.worst)
    sp.release(list(prompts))
    assert sp.pool_usage()[0] == 0
    sp.prefix.clear()
    assert model.pool.num_used == 0


def test_shared_200_token_prefix_prefills_only_new_tokens(models):
    """The second request computes only its 17 new prompt tokens, and drafts exactly what a
    draft without a cache drafts for it."""
    from sglang_ssd.speculator import Speculator

    rng = random.Random(1)
    prefix = [rng.randrange(3, 200) for _ in range(200)]
    first, second = prefix + [rng.randrange(3, 200) for _ in range(9)], prefix + list(range(40, 57))
    sp = Speculator(_draft(models, 4096), 3, [1, 1, 1, 1], "neural", 8)
    sp.begin([wire.Begin(rid="x", prompt=first, pending=5)])
    sp.release(["x"])
    before = sp.prefill_computed
    sp.begin([wire.Begin(rid="y", prompt=second, pending=6)])
    assert sp.prefill_computed - before == 17 and sp.prefill_reused == 200
    fresh = Speculator(_draft(models, 4096), 3, [1, 1, 1, 1], "neural", 8, prefix_cache_tokens=0)
    fresh.begin([wire.Begin(rid="y", prompt=second, pending=6)])
    assert fresh.prefill_computed == len(second) and fresh.prefill_reused == 0
    out = [s.lookup([wire.Outcome(rid="y", k=-1, t_star=6, committed_len=len(second))])[0][0].tokens
           for s in (sp, fresh)]
    assert out[0] == out[1]


@pytest.mark.slow
def test_thousand_sequential_requests_leave_the_pool_as_it_was(models):
    """1000 requests one after another, each a few rounds long, half of them sharing one of
    three system prompts, through a 1024-slot pool (the cache must evict to make room)."""
    from sglang_ssd.speculator import Speculator

    model = _draft(models, 1024)
    sp = Speculator(model, 1, [1, 1], "neural", 8)
    rng = random.Random(2)
    systems = [[rng.randrange(3, 200) for _ in range(60)] for _ in range(3)]
    start = sp.pool_usage()[0]
    for i in range(1000):
        head = systems[i % 3] if i % 2 == 0 else []
        prompt = head + [rng.randrange(3, 200) for _ in range(rng.randrange(1, 12))]
        rid = f"r{i}"
        assert sp.begin([wire.Begin(rid=rid, prompt=prompt, pending=3)]) == []
        n = len(prompt)
        specs, _, _ = sp.lookup([wire.Outcome(rid=rid, k=-1, t_star=3, committed_len=n)])
        for _ in range(rng.randrange(1, 3)):
            sp.speculate()
            k = rng.randrange(0, 2)
            n += k + 1
            _, refusals, _ = sp.lookup([wire.Outcome(rid=rid, k=k, t_star=rng.randrange(3, 200), committed_len=n)])
            assert refusals == []
        sp.release([rid])
        assert sp.pool_usage()[0] == start
        assert sp.prefix.evictable <= sp.prefix.max_tokens
    print(f"prefill computed {sp.prefill_computed}, reused {sp.prefill_reused}")
    assert sp.prefill_reused >= 500 * 60 * 0.8  # the system prompts came from the cache
    assert model.pool.num_used == sp.prefix.tokens
    sp.prefix.clear()
    assert model.pool.num_used == 0
