"""The draft's work grows with its new tokens, not with the context (issue 24, item 1).

- Python memory traced (tracemalloc) while the draft builds a speculation tree over an 8k-token
  context is no more than over a 64-token one, and a prefill of 8k tokens traces O(tokens): the
  per-query lists of visible slots (33M ints for that prefill, 8k per branch per tree step) are
  gone. Written against APIs the old code had too (Speculator, prefill_into_cache): it fails there.
- Every forward of a tree round names O(new tokens + branches x depth) slots in Python lists, one
  prefix tensor per request.
- The grouped attention equals the old dense-mask attention over the same slots, and runs cut into
  chunks equal the from-scratch logits.
- Chunked background prefill: the draft answers another request's Step while a long prompt is
  still prefilling, runs the rest a chunk at a time between messages, and the long request's
  Begin waits (a retryable refusal) until its prompt is in the cache, then speculates from it.
"""

from __future__ import annotations

import gc
import json
import random
import shutil
import threading
import time
import tracemalloc

import pytest
import torch

from sglang_ssd import wire

K = 3
FAN = [4, 4, 4, 4]  # 16 branches per request


@pytest.fixture(scope="module")
def long_model_path(models, tmp_path_factory):
    """The tiny target with positions up to 16k."""
    path = tmp_path_factory.mktemp("long") / "target_16k"
    shutil.copytree(models["target"], path)
    cfg = json.loads((path / "config.json").read_text())
    cfg["max_position_embeddings"] = 16384
    (path / "config.json").write_text(json.dumps(cfg))
    return str(path)


@pytest.fixture(scope="module")
def long_model(long_model_path):
    from sglang_ssd.draft_model import DraftModel

    return DraftModel(long_model_path, "cpu", "float32", 20000)


def _ids(n: int, seed: int) -> list[int]:
    rng = random.Random(seed)
    return [rng.randrange(3, 400) for _ in range(n)]


def _traced(fn) -> int:
    """Peak Python memory (bytes) traced while fn runs, above what was traced when it started."""
    gc.collect()
    tracemalloc.start()
    try:
        base = tracemalloc.get_traced_memory()[0]
        fn()
        return tracemalloc.get_traced_memory()[1] - base
    finally:
        tracemalloc.stop()


def _tree_round(model, n_ctx: int, seed: int):
    """A request over an n_ctx-token context, its first speculation drafted, ready for a tree."""
    from sglang_ssd.prefix_cache import prefill_into_cache
    from sglang_ssd.speculator import Speculator

    sp = Speculator(model, K, list(FAN), "neural", 8, prefix_cache_tokens=model.pool.size)
    prompt = _ids(n_ctx, seed)
    prefill_into_cache(model, sp.prefix, prompt)
    sp.begin([wire.Begin(rid="r", prompt=prompt, pending=7)])
    spec = sp.lookup([wire.Outcome(rid="r", k=-1, t_star=7, committed_len=n_ctx)])[0][0]
    sp.speculate()  # one whole round first: what a round allocates once is not counted below
    j, t = sorted(sp.seqs["r"].cache)[0]
    sp.lookup([wire.Outcome(rid="r", k=j, t_star=t, committed_len=n_ctx + j + 1)])
    assert len(spec.tokens) == K
    return sp


def _close(sp) -> None:
    sp.release(list(sp.seqs))
    sp.prefix.clear()


def test_tree_step_python_memory_does_not_grow_with_the_context(long_model):
    peaks = {}
    for n in (64, 8192):
        sp = _tree_round(long_model, n, seed=n)
        peaks[n] = _traced(sp.speculate)
        assert sum(map(len, (ch[0] for ch in sp.seqs["r"].cache.values()))) == K * sum(FAN)  # a whole tree
        _close(sp)
    print(f"traced Python peak of a tree round: {peaks}")
    # The old per-branch visible lists: 16 branches x 8k slots x 8 bytes = 1 MiB per step, twice.
    assert peaks[8192] < peaks[64] + 48 * 1024, peaks


def test_prefill_python_memory_is_linear_in_its_tokens(long_model):
    from sglang_ssd.prefix_cache import PrefixCache, prefill_into_cache

    cache = PrefixCache(long_model.pool, long_model.pool.size)
    peaks = {}
    for n in (1024, 8192):
        prompt = _ids(n, seed=n + 1)
        peaks[n] = _traced(lambda: prefill_into_cache(long_model, cache, prompt))
        cache.clear()
    print(f"traced Python peak of a prefill: {peaks}")
    # ~100 bytes per token (the prompt's token, position and slot lists); the old code's visible
    # lists were 8 bytes x n^2 / 2: 256 MiB at 8k.
    assert peaks[8192] < 200 * 8192 and peaks[8192] < 10 * peaks[1024], peaks
    assert long_model.pool.num_used == 0


def test_forward_groups_name_new_slots_only(long_model, monkeypatch):
    """The groups handed to every forward of a tree round at 8k: their Python lists hold
    O(queries x depth) slots, and each request's context is one prefix tensor."""
    sp = _tree_round(long_model, 8192, seed=3)
    seen = []
    real = long_model.forward

    def counting(groups, logits=True):
        listed = sum(len(g.tokens) + len(g.positions) + len(g.write) + sum(map(len, g.own or [])) for g in groups)
        seen.append((sum(map(len, groups)), listed, [int(g.prefix.numel()) for g in groups]))
        return real(groups, logits)

    monkeypatch.setattr(long_model, "forward", counting)
    sp.speculate()
    assert len(seen) == K + 1  # the glue, then K steps
    for queries, listed, prefixes in seen:
        assert listed <= queries * (3 + 2 * (K + 1)), seen  # each query: token, position, write, own slots
        assert len(prefixes) == 1 and prefixes[0] >= 8192  # one request: one prefix tensor
    _close(sp)


# ---- numbers ------------------------------------------------------------------------------------
def _old_dense_forward(model, groups):
    """The old path: one attention over the union of the visible slots under a dense additive mask."""
    from sglang_ssd.draft_batch import flatten

    tokens, positions, write, visible = flatten(groups)
    q = len(tokens)
    lens = torch.tensor([len(v) for v in visible])
    rows = torch.repeat_interleave(torch.arange(q), lens)
    read, cols = torch.unique(torch.tensor([s for v in visible for s in v]), return_inverse=True)
    mask = torch.full((q, len(read)), float("-inf"), dtype=model.dtype)
    mask[rows, cols] = 0.0
    model._io.write_slots = torch.tensor(write)
    model._io.read_slots = read
    try:
        with torch.inference_mode():
            out = model.model(input_ids=torch.tensor([tokens]), position_ids=torch.tensor([positions]),
                              attention_mask=mask[None, None], past_key_values=model.cache, use_cache=True)
    finally:
        model._io.read_slots = None
    return out.logits[0].float()


def test_grouped_attention_equals_the_old_dense_mask(long_model):
    """A forward of two requests' tree branches (prefixes of 300 and 40 slots, each branch its own
    glue slots and drafted slots) and a third request's run: logits equal the old path's."""
    from sglang_ssd.draft_batch import Group, run, slot_tensor

    m = long_model
    pa, pb, pc = m.pool.alloc(300), m.pool.alloc(40), m.pool.alloc(20)
    m.forward([run(slot_tensor([]), _ids(300, 1), 0, pa), run(slot_tensor([]), _ids(40, 2), 0, pb),
               run(slot_tensor([]), _ids(10, 3), 0, pc[:10])], logits=False)
    ga, gb = m.pool.alloc(3), m.pool.alloc(3)
    m.forward([run(slot_tensor(pa), [5, 6, 7], 300, ga), run(slot_tensor(pb), [8, 9, 10], 40, gb)], logits=False)
    br = m.pool.alloc(5)
    groups = [Group(slot_tensor(pa), [11, 12, 13], [301, 302, 303], br[:3],
                    [[ga[0], br[0]], [ga[0], ga[1], br[1]], ga + [br[2]]]),
              Group(slot_tensor(pb), [14, 15], [41, 42], br[3:], [[gb[0], br[3]], [gb[0], gb[1], br[4]]]),
              run(slot_tensor(pc[:10]), [16, 17, 18], 10, pc[10:13])]
    new = m.forward(groups)
    old = _old_dense_forward(m, groups)  # (rewrites the same KV: same values)
    assert new.shape == old.shape == (8, m.vocab_size)
    torch.testing.assert_close(new, old, rtol=1e-4, atol=1e-4)  # (float32, another summation order)
    assert torch.equal(new.argmax(-1), old.argmax(-1))
    m.pool.free(pa + pb + pc + ga + gb + br)


def test_runs_cut_into_chunks_equal_the_whole_sequence(long_model, hf_long):
    """A 700-token prompt after a 100-token cached prefix, in chunks of 64 rows (max_rows), next to
    a second request: its logits equal Hugging Face's from scratch."""
    from sglang_ssd.draft_batch import run, slot_tensor

    m = long_model
    a, b = _ids(800, 4), _ids(30, 5)
    sa, sb = m.pool.alloc(800), m.pool.alloc(30)
    m.forward([run(slot_tensor([]), a[:100], 0, sa[:100])], logits=False)
    saved, m.max_rows = m.max_rows, 64
    try:
        out = m.forward([run(slot_tensor(sa[:100]), a[100:], 100, sa[100:]), run(slot_tensor([]), b, 0, sb)])
    finally:
        m.max_rows = saved
    with torch.no_grad():
        ref_a, ref_b = hf_long(torch.tensor([a])).logits[0, 100:], hf_long(torch.tensor([b])).logits[0]
    torch.testing.assert_close(out[:700], ref_a, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(out[700:], ref_b, rtol=1e-4, atol=1e-4)
    m.pool.free(sa + sb)


@pytest.fixture(scope="module")
def hf_long(long_model_path):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(long_model_path, dtype=torch.float32).eval()


# ---- chunked background prefill ------------------------------------------------------------------
def _hello(k=K):
    return wire.Hello(protocol=wire.PROTOCOL_VERSION, session="s", k=k, fanout=[1] * (k + 1), backup="neural")


def test_a_long_prefill_runs_between_the_rounds_of_other_requests(long_model, long_model_path):
    """Over the service's own loop (serve, on a PAIR socket): a 6000-token prompt to warm, then at
    once a round of another request: its reply comes while the long prompt is far from done (at
    most SYNC_TOKENS of it computed inline). The rest runs a chunk at a time between messages; the
    long request's Begin before it is done is refused as retryable ("draft prefill in progress"),
    and once done its Begin takes the prompt from the cache and its first speculation is drafted."""
    import zmq

    from sglang_ssd.draft_service import DraftService, serve
    from sglang_ssd.prefill_jobs import CHUNK_TOKENS, SYNC_TOKENS

    service = DraftService(long_model, long_model_path)
    ctx = zmq.Context()
    a, b = ctx.socket(zmq.PAIR), ctx.socket(zmq.PAIR)
    a.bind("inproc://draft-context-test")
    b.connect("inproc://draft-context-test")
    stop = threading.Event()
    loop = threading.Thread(target=serve, args=(b, service, lambda: not stop.is_set()), daemon=True)
    loop.start()

    def ask(msg) -> object:
        a.send(wire.encode(msg))
        return wire.decode_from_draft(a.recv()) if getattr(msg, "reply", True) else None

    try:
        assert isinstance(ask(_hello()), wire.Ready)
        short, long = _ids(40, 6), _ids(6000, 7)
        ask(wire.Step(round=1, begins=[wire.Begin(rid="s", prompt=short, pending=9)], reply=False))
        r = ask(wire.Step(round=2, outcomes=[wire.Outcome(rid="s", k=-1, t_star=9, committed_len=40)]))
        assert [s.rid for s in r.specs] == ["s"]
        base = r.health.prefill_computed
        a.send(wire.encode(wire.Step(round=3, warm=[wire.Warm(rid="L", prompt=long)], reply=False)))
        r = ask(wire.Step(round=4, outcomes=[wire.Outcome(rid="s", k=0, t_star=11, committed_len=41)]))
        assert [s.rid for s in r.specs] == ["s"]  # answered with the long prefill under way
        assert r.health.prefill_computed - base <= SYNC_TOKENS + CHUNK_TOKENS < len(long)
        # Its Begin now: not yet (plain rounds for it), and the other request is still served.
        ask(wire.Step(round=5, begins=[wire.Begin(rid="L", prompt=long, pending=12)], reply=False))
        r = ask(wire.Step(round=6, outcomes=[wire.Outcome(rid="L", k=-1, t_star=12, committed_len=6000),
                                               wire.Outcome(rid="s", k=0, t_star=13, committed_len=42)]))
        assert [s.rid for s in r.specs] == ["s"]
        [refusal] = r.refusals
        assert refusal.rid == "L" and refusal.retry and refusal.reason.startswith("draft prefill in progress")
        deadline, rnd = time.monotonic() + 120, 6
        while True:  # the worker begins it again every few rounds
            rnd += 1
            r = ask(wire.Step(round=rnd, releases=["L"], begins=[wire.Begin(rid="L", prompt=long, pending=12)],
                              outcomes=[wire.Outcome(rid="L", k=-1, t_star=12, committed_len=6000)]))
            if r.specs or time.monotonic() > deadline:
                break
            assert r.refusals[0].retry
            time.sleep(0.2)
        assert [s.rid for s in r.specs] == ["L"] and len(r.specs[0].tokens) == K
        assert r.health.prefill_computed - base == len(long)  # each token once, in chunks
        assert r.health.prefill_reused >= len(long)  # its Begin took the prompt from the cache
    finally:
        stop.set()
        loop.join(timeout=30)
        a.close()
        b.close()
        ctx.term()
        if service.spec is not None:
            service.spec.close()
            service.spec.prefix.clear()
    assert long_model.pool.num_used == 0
