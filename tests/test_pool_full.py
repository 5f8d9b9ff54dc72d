"""A full draft KV pool degrades, never fails (issue 24, item 2).

- In the draft: a request whose prompt the pool cannot hold (after the prefix cache gave its slots
  back) is refused as retryable with reason "draft pool full", alone: the other requests of its
  round are served; once room returns, its Begin again speculates. A request whose glue the pool
  cannot hold is refused the same way at its next outcome; tree steps and neural backups the
  pool cannot hold stop early and the n-gram backup completes their speculations (K tokens).
- Through a real server with --ssd-draft-kv-tokens 256 (the minimum) and four concurrent requests
  of 120-token prompts (one or two fit at a time): every request is served, token for token the
  target's greedy output; the statistics count the refusals and the plain rounds by reason
  ("draft pool full"), and requests speculate again once others finish.
"""

from __future__ import annotations

import random
from concurrent.futures import ThreadPoolExecutor

import pytest

from conftest import PIN_SSD, SERVER_ARGS, hf_greedy
from sglang_ssd import wire


def _ids(n: int, seed: int) -> list[int]:
    rng = random.Random(seed)
    return [rng.randrange(3, 400) for _ in range(n)]


@pytest.fixture(scope="module")
def small_draft(models):
    from sglang_ssd.draft_model import DraftModel

    return DraftModel(str(models["target"]), "cpu", "float32", 256)


@pytest.fixture
def sp(small_draft):
    from sglang_ssd.speculator import Speculator

    s = Speculator(small_draft, 2, [2, 1, 1], "neural", 8)  # prefix cache: a quarter of the pool
    yield s
    s.close()
    s.prefix.clear()
    assert small_draft.pool.num_used == 0


def _first(sp, rid, n, t=9):
    return sp.lookup([wire.Outcome(rid=rid, k=-1, t_star=t, committed_len=n)])


def test_a_prompt_the_pool_cannot_hold_waits_alone_and_speculates_when_room_returns(sp, small_draft):
    a, b = _ids(150, 1), _ids(150, 2)
    assert sp.begin([wire.Begin(rid="a", prompt=a, pending=9), wire.Begin(rid="b", prompt=b, pending=9)]) == []
    specs, refusals, _ = sp.lookup([wire.Outcome(rid="a", k=-1, t_star=9, committed_len=150),
                                    wire.Outcome(rid="b", k=-1, t_star=9, committed_len=150)])
    assert [s.rid for s in specs] == ["a"] and len(specs[0].tokens) == 2  # a is served
    [r] = refusals
    assert r.rid == "b" and r.retry and r.reason.startswith("draft pool full")
    assert "b" not in sp.seqs and small_draft.pool.num_used <= 150 + 3  # b holds nothing
    # Still no room: refused again (the worker retries every few rounds).
    sp.release(["b"])
    sp.begin([wire.Begin(rid="b", prompt=b, pending=9)])
    assert _first(sp, "b", 150)[1][0].retry
    # a ends: its KV goes to the prefix cache, which gives it back for b.
    sp.release(["a"])
    sp.release(["b"])
    sp.begin([wire.Begin(rid="b", prompt=b, pending=9)])
    specs, refusals, _ = _first(sp, "b", 150)
    assert refusals == [] and [s.rid for s in specs] == ["b"] and len(specs[0].tokens) == 2
    sp.speculate()
    assert sp.seqs["b"].cache  # b speculates again: its tree was built


def test_a_request_whose_glue_the_pool_cannot_hold_is_refused_retryable(sp, small_draft):
    a = _ids(100, 3)
    sp.begin([wire.Begin(rid="a", prompt=a, pending=9)])
    spec = _first(sp, "a", 100)[0][0]
    hog = small_draft.pool.alloc(small_draft.pool.size - small_draft.pool.num_used - 2)  # 2 free < K + 1
    try:
        sp.speculate()
        assert "a" not in sp.seqs  # forgotten: its KV went to the prefix cache
        specs, refusals, _ = sp.lookup([wire.Outcome(rid="a", k=0, t_star=spec.tokens[0] + 1, committed_len=101)])
        assert specs == [] and [(r.rid, r.retry) for r in refusals] == [("a", True)]
        assert refusals[0].reason.startswith("draft pool full")
    finally:
        small_draft.pool.free(hog)


def test_tree_steps_and_backups_the_pool_cannot_hold_still_answer_k_tokens(sp, small_draft):
    """Room for the glue but not for the tree's branches: the tree stops before its first step,
    the next lookup misses, the neural backup cannot draft either, and the n-gram backup gives
    the K tokens; nothing is refused."""
    a = _ids(60, 4) * 2
    sp.begin([wire.Begin(rid="a", prompt=a, pending=9)])
    spec = _first(sp, "a", 120)[0][0]
    hog = small_draft.pool.alloc(small_draft.pool.size - small_draft.pool.num_used - 3)  # the glue's K + 1
    try:
        sp.speculate()
        assert sp.last_tree_depth == 0 and sp.seqs["a"].glue_slots
        specs, refusals, _ = sp.lookup([wire.Outcome(rid="a", k=2, t_star=5, committed_len=123)])
        assert refusals == [] and len(specs) == 1 and len(specs[0].tokens) == 2 and not specs[0].hit
        assert sp.last_backup == "neural"
    finally:
        small_draft.pool.free(hog)


# ---- through a real server ----------------------------------------------------------------------
PROMPTS = [_ids(120, 10 + i) for i in range(4)]
N_TOKENS = 64


@pytest.fixture(scope="module")
def small_pool_server(models, log_dir):
    from sglang_ssd.testing.server import CPUServer

    args = SERVER_ARGS + PIN_SSD + ["--speculative-algorithm", "SSD", "--speculative-draft-model-path",
                                    str(models["draft_same"]), "--speculative-num-steps", "4",
                                    "--ssd-draft-kv-tokens", "256"]
    srv = CPUServer(models["target"], args, log_path=str(log_dir / "small_draft_pool.log"))
    yield srv
    srv.stop()


def test_a_full_draft_pool_refuses_nothing_and_stays_exact(small_pool_server, hf_target):
    sp = {"temperature": 0, "max_new_tokens": N_TOKENS, "ignore_eos": True}
    with ThreadPoolExecutor(len(PROMPTS)) as ex:
        outs = list(ex.map(lambda p: small_pool_server.generate(p, sp), PROMPTS))
    for p, out in zip(PROMPTS, outs):  # every request served, exactly
        assert out["output_ids"] == hf_greedy(hf_target, p, N_TOKENS)
    st = small_pool_server.ssd_stats()
    print({k: st[k] for k in ("refusal_reasons", "plain_reasons", "plain_rounds", "spec_rounds", "resyncs",
                              "accept_length", "cache_hit_rate", "draft_pool_size")})
    assert st["draft_pool_size"] == 256
    assert st["refusal_reasons"].get("draft pool full", 0) >= 1, st["refusal_reasons"]
    assert st["plain_reasons"].get("draft pool full", 0) >= 1, st["plain_reasons"]
    assert st["plain_rounds"] >= st["plain_reasons"]["draft pool full"]
    assert st["spec_rounds"] > 0 and st["resyncs"] >= 1  # refused requests were begun again
    # A request that went plain for a full pool speculated again later (this draft is the target
    # itself: a speculated round accepts all K = 4, a plain one emits one token).
    again = [o["meta_info"]["ssd_accepted"] for o in outs]
    assert any(0 in acc and 4 in acc[acc.index(0):] for acc in again), again
    # Alone, a request fits: speculated from its first round, no new pool refusal.
    before = st["refusal_reasons"]["draft pool full"]
    out = small_pool_server.generate(PROMPTS[0], sp)
    assert out["output_ids"] == hf_greedy(hf_target, PROMPTS[0], N_TOKENS)
    assert small_pool_server.ssd_stats()["refusal_reasons"]["draft pool full"] == before
    assert sum(out["meta_info"]["ssd_accepted"]) >= N_TOKENS // 2


def test_rounds_in_which_every_request_waits_for_the_draft_are_plain_steps(small_pool_server, hf_target):
    """A prompt longer than the whole draft pool (300 > 256 tokens) is refused as retryable at each
    Begin; between Begins (wire.REFUSAL_RETRY_ROUNDS decode rounds) the request, alone in its
    batch, waits for the draft. Those rounds are plain decode steps (K = 0, one token, no Step to
    the draft), not verifies of K+1 n-gram tokens; only the rounds that try the Begin again
    speculate. Fails on a worker that verifies backup drafts while every request waits."""
    prompt, n = _ids(300, 77), 40
    before = small_pool_server.ssd_stats()
    out = small_pool_server.generate(prompt, {"temperature": 0, "max_new_tokens": n, "ignore_eos": True})
    assert out["output_ids"] == hf_greedy(hf_target, prompt, n)
    after = small_pool_server.ssd_stats()

    def grew(key):
        return {m: c - before[key].get(m, 0) for m, c in after[key].items() if c - before[key].get(m, 0)}

    rounds = len(out["meta_info"]["ssd_accepted"])
    tries = -(-rounds // (wire.REFUSAL_RETRY_ROUNDS + 1)) + 1  # Begins: the first decode round, then every 9th
    assert after["refusal_reasons"]["draft pool full"] - before["refusal_reasons"].get("draft pool full", 0) >= 2
    modes = grew("mode_steps")
    assert modes.get("ssd", 0) <= tries, modes
    assert modes.get("plain", 0) >= rounds - tries, modes
    ks = {int(d): c for d, c in grew("k_steps").items()}  # (JSON keys)
    assert ks.get(0, 0) >= rounds - tries, ks  # K = 0: one token per such round
