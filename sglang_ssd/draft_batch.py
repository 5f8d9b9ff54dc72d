"""What one draft forward computes: query tokens in groups that share a prefix of written KV.

A forward's queries come in groups. Every query of a group sees the group's prefix: slots whose KV
earlier forwards wrote (a request's committed context), named once per group by an int64 tensor,
however many queries share it. Besides the prefix each query sees a few slots of its own:
- in a run (a prompt or part of one, committed tokens, a glue) query i sees the run's write slots
  up to its own, causally;
- otherwise (the branches of a tree step) each query lists its own slots: its glue positions and
  its branch's drafted tokens, its write slot among them.
So the Python objects a forward is given, and builds, are O(new tokens + branches), never
O(context): the context stays a tensor (SlotMirror keeps a request's slots as one).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator, Optional, Sequence

import torch

# Slot lists and masks are host bookkeeping, built on the CPU whatever torch's default device is,
# and moved to the model's device once per forward (slot_attention.build_plan).
HOST = torch.device("cpu")


@dataclass
class Group:
    prefix: torch.Tensor  # int64 [L]: slots every query of the group sees (KV written before)
    tokens: list[int]
    positions: list[int]  # logical positions
    write: list[int]  # the slot each query's KV goes to
    own: Optional[list[list[int]]] = None  # per query, the slots beyond the prefix it sees; None: a run

    def __len__(self) -> int:
        return len(self.tokens)


def run(prefix: torch.Tensor, tokens: Sequence[int], start: int, write: Sequence[int]) -> Group:
    """A causal run of tokens at positions start.. after `prefix`, written to `write`."""
    assert len(tokens) == len(write)
    return Group(prefix, list(tokens), list(range(start, start + len(tokens))), list(write))


def slot_tensor(slots: Sequence[int]) -> torch.Tensor:
    return torch.tensor(slots, dtype=torch.long, device=HOST) if len(slots) else torch.empty(0, dtype=torch.long, device=HOST)


def split_rows(groups: Sequence[Group], max_rows: int) -> Iterator[list[Group]]:
    """The groups in consecutive forwards of at most max_rows queries, in order. A run cut in two
    goes on with its first part's slots appended to its prefix (their KV is written by then)."""
    part, rows = [], 0
    for g in groups:
        a = 0
        while a < len(g):
            b = min(len(g), a + max_rows - rows)
            if a == 0 and b == len(g):
                piece = g
            elif g.own is None:
                prefix = torch.cat([g.prefix, slot_tensor(g.write[:a])]) if a else g.prefix
                piece = Group(prefix, g.tokens[a:b], g.positions[a:b], g.write[a:b])
            else:
                piece = Group(g.prefix, g.tokens[a:b], g.positions[a:b], g.write[a:b], g.own[a:b])
            part.append(piece)
            rows += b - a
            a = b
            if rows == max_rows:
                yield part
                part, rows = [], 0
    if part:
        yield part


def flatten(groups: Sequence[Group]) -> tuple[list[int], list[int], list[int], list[list[int]]]:
    """(tokens, positions, write slots, visible slots per query) of a forward: the one list per
    query form (O(context) per query: for adapters, tests and references only)."""
    tokens = [t for g in groups for t in g.tokens]
    positions = [p for g in groups for p in g.positions]
    write = [w for g in groups for w in g.write]
    return tokens, positions, write, [v for g in groups for v in expand_visible(g)]


def expand_visible(group: Group) -> list[list[int]]:
    """Every query's visible slots as lists (O(context) per query: for tests and references only)."""
    prefix = group.prefix.tolist()
    if group.own is None:
        return [prefix + group.write[: i + 1] for i in range(len(group))]
    return [prefix + list(o) for o in group.own]


class SlotMirror:
    """An int64 tensor equal to a list of slots that grows by appends: each call copies only the
    slots appended since the last one. A list replaced by another (or shortened) is copied anew
    into a fresh buffer, so tensors handed out earlier never change."""

    __slots__ = ("_src", "_buf", "_n", "_view")

    def __init__(self):
        self._src, self._buf, self._n, self._view = None, None, 0, None

    def of(self, slots: list[int]) -> torch.Tensor:
        """The tensor; the same object until the list changes (forwards group queries by it)."""
        n = len(slots)
        if self._src is slots and n == self._n and self._view is not None:
            return self._view
        if self._src is not slots or n < self._n:
            self._src, self._buf, self._n = slots, None, 0
        if self._buf is None or n > len(self._buf):
            buf = torch.empty(max(16, 2 * n), dtype=torch.long, device=HOST)
            if self._n:
                buf[: self._n] = self._buf[: self._n]
            self._buf = buf
        if n > self._n:
            self._buf[self._n:n] = torch.tensor(slots[self._n:n], dtype=torch.long, device=HOST)
            self._n = n
        self._view = self._buf[:n]
        return self._view
