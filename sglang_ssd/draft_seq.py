"""The draft's per-request state and the chains it drafts, and their wire form (wire.Spec)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Optional

import torch

from sglang_ssd import qlaw
from sglang_ssd.draft_batch import SlotMirror, run
from sglang_ssd.draft_model import PoolFullError
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
    mirror: SlotMirror = field(default_factory=SlotMirror, repr=False)

    def slot_tensor(self) -> torch.Tensor:
        """`slots` as an int64 tensor (what a forward's groups share), O(new slots) per call."""
        return self.mirror.of(self.slots)


@dataclass
class Chain:
    """A sequence of draft steps from `first` over a fixed context of slots: `prefix` (a tensor,
    shared by every chain of one request) then `own` (e.g. the glue slots before a fork)."""

    prefix: torch.Tensor
    own: list[int]
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


def give_back(seq: DraftSeq, pool, prefix, cache: bool = True) -> None:
    """A forgotten request's slots: its committed KV to the prefix cache (unless `cache` is False:
    a request dropped after an error, whose KV may be incomplete), the rest to the pool."""
    pool.free(seq.glue_slots)
    if cache:
        pool.free(prefix.insert(seq.tokens[: len(seq.slots)], seq.slots, seq.shared))
    else:
        pool.free(seq.slots[seq.shared:])
    if seq.node is not None:
        prefix.unlock(seq.node)


def share_prompt(seq: DraftSeq, pool, prefix) -> None:
    """Put a fresh request's prompt KV into the prefix cache and use the cache's copy."""
    if prefix.max_tokens == 0:
        return
    n = len(seq.slots)
    dup = prefix.insert(seq.tokens[:n], seq.slots, seq.shared)
    node, slots = prefix.match(seq.tokens[:n])
    prefix.lock(node)
    if seq.node is not None:
        prefix.unlock(seq.node)
    seq.node, seq.slots, seq.shared = node, slots + seq.slots[len(slots):], len(slots)
    pool.free(dup)


def write_committed_kv(model, alloc, seqs: list[DraftSeq],
                       on_full: Optional[Callable[[DraftSeq, PoolFullError], None]] = None) -> list[DraftSeq]:
    """Write the draft's KV for committed tokens that have none yet (prompts, unglued commits);
    `alloc(n)` gives slots. No slot without its KV ever joins a request (or the cache). A request
    the pool cannot hold goes to `on_full` (and is left as it was) when given, else the error is
    raised; returns the requests that were written."""
    groups, grown = [], []
    try:
        for s in seqs:
            n0 = len(s.slots)
            if n0 == len(s.tokens):
                continue
            try:
                new = alloc(len(s.tokens) - n0)
            except PoolFullError as e:
                if on_full is None:
                    raise
                on_full(s, e)
                continue
            grown.append((s, new))
            groups.append(run(s.slot_tensor(), s.tokens[n0:], n0, new))
        if groups:
            model.forward(groups, logits=False)
    except BaseException:
        for _, new in grown:
            model.pool.free(new)
        raise
    for s, new in grown:
        s.slots += new
    return [s for s, _ in grown]
