"""Fuzzing both ends of the wire: malformed bytes are refused with WireError, never anything
worse, and random (valid-typed but nonsensical) rounds are refused per request, never fatal."""

from __future__ import annotations

import random

import msgspec
import pytest

from sglang_ssd import wire

VALID = [
    wire.Step(round=1, begins=[wire.Begin(rid="a", prompt=[1, 2, 3], pending=4)],
              outcomes=[wire.Outcome(rid="a", k=-1, t_star=4, committed_len=3)]),
    wire.StepReply(round=2, specs=[wire.Spec(rid="a", hit=True, tokens=[1, 2], q=b"\x00" * 16)]),
    wire.Ready(protocol=1, pid=1, vocab_size=10, k=2, fanout=[1, 1, 1], device="cpu"),
    wire.Shutdown(),
]


def _mutations(rng: random.Random, n: int):
    seeds = [wire.encode(m) for m in VALID]
    for i in range(n):
        kind = i % 5
        if kind == 0:
            yield bytes(rng.getrandbits(8) for _ in range(rng.randint(0, 64)))
        else:
            b = bytearray(rng.choice(seeds))
            if kind == 1 and b:  # flip bytes
                for _ in range(rng.randint(1, 4)):
                    b[rng.randrange(len(b))] = rng.getrandbits(8)
            elif kind == 2:  # truncate
                b = b[: rng.randrange(len(b) + 1)]
            elif kind == 3:  # duplicate / append garbage
                b = b + b[: rng.randrange(len(b) + 1)]
            else:  # random msgpack structure
                b = bytearray(msgspec.msgpack.encode({"type": rng.choice(["step", "reply", "ready", "x"]),
                                                      "round": rng.choice([1, -1, "1", None, 2**63])}))
            yield bytes(b)


def test_10000_mutated_messages_only_raise_wire_error():
    rng = random.Random(1234)
    n_ok = n_bad = 0
    for raw in _mutations(rng, 10_000):
        for decode in (wire.decode_to_draft, wire.decode_from_draft):
            try:
                decode(raw)
                n_ok += 1
            except wire.WireError:
                n_bad += 1
    assert n_bad > 10_000  # the large majority is refused...
    assert n_ok > 0  # ...and some mutations are still well-formed messages


@pytest.fixture(scope="module")
def speculator(models):
    from sglang_ssd.draft_model import DraftModel
    from sglang_ssd.speculator import Speculator

    return Speculator(DraftModel(str(models["draft_random"]), "cpu", "float32", 4096), 3, [1, 1, 1, 1],
                      "neural", 8)


def test_random_rounds_are_refused_not_fatal(speculator):
    """2,000 random begins/outcomes/releases: every problem becomes a refusal; KV never leaks."""
    rng = random.Random(7)
    v = speculator.model.vocab_size
    rids = [f"r{i}" for i in range(6)]
    for i in range(2000):
        begins = [wire.Begin(rid=rng.choice(rids), prompt=[rng.randint(-2, v + 2) for _ in range(rng.randint(0, 6))],
                             pending=rng.randint(-1, v)) for _ in range(rng.randint(0, 2))]
        outcomes = [wire.Outcome(rid=rng.choice(rids + ["ghost"]), k=rng.randint(-2, 5), t_star=rng.randint(-1, v),
                                 committed_len=rng.randint(-1, 12)) for _ in range(rng.randint(0, 3))]
        speculator.release([rng.choice(rids)] if rng.random() < 0.2 else [])
        speculator.begin(begins)
        speculator.lookup(outcomes)
        speculator.speculate()
    speculator.release(list(speculator.seqs))
    speculator.prefix.clear()
    assert speculator.model.pool.num_used == 0


def test_draft_process_refuses_stale_rounds_and_garbage(models):
    """A real draft process: out-of-order rounds are refused, raw garbage on the socket is
    ignored, and the process keeps serving."""
    from sglang_ssd.draft_client import DraftClient

    c = DraftClient(model_path=str(models["draft_same"]), k=2, fanout=[1, 1, 1], backup="neural",
                    backup_batch_threshold=8, device="cpu", dtype="float32", kv_tokens=2048, threads=1,
                    endpoint=None, timeout_s=30, start_timeout_s=120)
    try:
        begin = wire.Begin(rid="a", prompt=[5, 6, 7], pending=8)
        r = c.step(wire.Step(round=10, begins=[begin],
                             outcomes=[wire.Outcome(rid="a", k=-1, t_star=8, committed_len=3)]))
        assert r is not None and [s.rid for s in r.specs] == ["a"]
        stale = c.step(wire.Step(round=4, outcomes=[wire.Outcome(rid="a", k=0, t_star=1, committed_len=4)]))
        assert stale is not None and [x.rid for x in stale.refusals] == ["a"] and not stale.specs
        for raw in (b"", b"\xff\x00garbage", __import__("pickle").dumps({"round": 11})):
            c._sock.send(raw)
        ok = c.step(wire.Step(round=11, outcomes=[wire.Outcome(rid="a", k=0, t_star=9, committed_len=4)]))
        assert ok is not None and [s.rid for s in ok.specs] == ["a"] and c.proc.poll() is None
    finally:
        c.close()
    assert c.proc.poll() is not None
