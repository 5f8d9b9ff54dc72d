"""The draft's per-request state and the chains it drafts, and their wire form (wire.Spec)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

from sglang_ssd import qlaw
from sglang_ssd.wire import Sampling, Spec


@dataclass
class DraftSeq:
    rid: str
    tokens: list[int]  # committed context (prompt + accepted), pending token excluded
    slots: list[int] = field(default_factory=list)  # KV slots of tokens[:len(slots)]
    pending: int = 0
    spec: list[int] = field(default_factory=list)  # the speculation last sent for `pending`
    glue_slots: list[int] = field(default_factory=list)  # KV of [pending] + spec, once glued
    cache: dict = field(default_factory=dict)  # (k, t*) -> (tokens, q'), possibly fewer than K
    sampling: Optional[Sampling] = None  # None: greedy
    spec_q: Optional[qlaw.CompactQ] = None  # the law q' the spec was drawn from (sampled only)
    ranked: list = field(default_factory=list)  # per glue position: the draft's ranked candidates
    matcher: Any = None  # grammar state after tokens[grammar_start:] + [pending]; None: unmasked
    source: str = "neural"  # where `spec` came from: hit / partial / neural / fast (the backup policy learns)
    partial: int = 0  # > 0: only spec[:partial] came from the tree (stopped early), the rest from the backup
    shared: int = 0  # slots[:shared] belong to the prefix cache (a locked path), the rest to us
    node: Any = None  # the prefix cache node locked for slots[:shared]


@dataclass
class Chain:
    """A sequence of greedy draft steps from `first` over a fixed context of slots."""

    context: list[int]
    first: int
    first_pos: int
    sampling: Optional[Sampling] = None
    slots: list[int] = field(default_factory=list)
    out: list[int] = field(default_factory=list)
    qs: list = field(default_factory=list)  # compact q' rows (ids, probs), sampled chains only
    matcher: Any = None  # grammar state after `first` and out; None: unmasked

    def q(self) -> Optional[qlaw.CompactQ]:
        return qlaw.CompactQ(self.qs) if self.qs else None


def to_spec(seq: DraftSeq, hit: bool) -> Spec:
    if seq.spec_q is None:
        return Spec(rid=seq.rid, hit=hit, tokens=list(seq.spec), partial=seq.partial)
    probs, ids, counts = seq.spec_q.pack()
    return Spec(rid=seq.rid, hit=hit, tokens=list(seq.spec), q=probs, q_ids=ids, q_counts=counts,
                partial=seq.partial)


def write_committed_kv(model, alloc, seqs: list[DraftSeq]) -> None:
    """Write the draft's KV for committed tokens that have none yet (prompts, unglued commits);
    `alloc(n)` gives slots. No slot without its KV ever joins a request (or the cache)."""
    toks, pos, write, vis, grown = [], [], [], [], []
    try:
        for s in seqs:
            n0 = len(s.slots)
            if n0 == len(s.tokens):
                continue
            slots = s.slots + alloc(len(s.tokens) - n0)
            grown.append((s, slots))
            for i in range(n0, len(s.tokens)):
                toks.append(s.tokens[i])
                pos.append(i)
                write.append(slots[i])
                vis.append(slots[: i + 1])
        if toks:
            model.forward(toks, pos, write, vis)
    except BaseException:
        for s, slots in grown:
            model.pool.free(slots[len(s.slots):])
        raise
    for s, slots in grown:
        s.slots = slots
