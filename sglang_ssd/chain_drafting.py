"""Drafting chains step by step, all of them in one batched forward per step.

A chain (draft_seq.Chain) continues a context: a prefix tensor shared by every chain of one
request, then a few slots of its own (the glue positions before its fork). Each step allocates one
slot per chain and runs one forward whose groups are the distinct prefixes, each once, with every
chain's own slots and drafted slots as its query's own list: the Python work per step is
O(chains x depth), whatever the context length. The speculator's tree steps, its neural backup
and the first drafts all draft through here.
"""

from __future__ import annotations

import time
from typing import Callable, Optional

import torch

from sglang_ssd.draft_batch import Group
from sglang_ssd.draft_model import PoolFullError
from sglang_ssd.draft_seq import Chain
from sglang_ssd.grammar import accept_all, fill_masks, mask_logits
from sglang_ssd.proposals import propose


def _grouping(chains: list[Chain]) -> tuple[list[list[int]], Optional[torch.Tensor]]:
    """Chain indices per distinct prefix (first-seen order), and the permutation taking the
    forward's rows (group by group) back to chain order (None when it is the identity)."""
    by_prefix: dict[int, list[int]] = {}
    for i, c in enumerate(chains):
        by_prefix.setdefault(id(c.prefix), []).append(i)
    groups = list(by_prefix.values())
    order = [i for g in groups for i in g]
    if order == list(range(len(chains))):
        return groups, None
    back = torch.empty(len(order), dtype=torch.long)
    back[torch.tensor(order)] = torch.arange(len(order))
    return groups, back


class ChainDrafter:
    def __init__(self, alloc: Callable[[int], list[int]], pool, forward: Callable, vocab_size: int):
        self.alloc = alloc  # slots for each step's tokens (the prefix cache evicts first)
        self.pool = pool
        self.forward = forward  # (groups) -> logits; the speculator times it
        self.vocab_size = vocab_size  # the grammar masks' width
        self.progress = (0, 0.0)  # (steps done, last step's seconds) of the run in progress

    def run(self, chains: list[Chain], depth: int, fanout: list[int], saguaro_c: float, q_mass: float,
            between: Optional[Callable[[], bool]] = None) -> int:
        """Up to `depth` batched forwards (`between` runs after each, and stops them by returning
        True; so does a pool without a slot per chain); returns the steps run, every chain's out
        that long. Every chain's scratch KV is freed afterwards."""
        if not chains:
            return 0
        self.progress = (0, 0.0)
        groups, back = _grouping(chains)
        try:
            cur = [c.first for c in chains]
            for step in range(depth):
                t_step = time.perf_counter()
                try:
                    new = self.alloc(len(chains))
                except PoolFullError:  # a tree cut short (partial_tree.py completes its branches)
                    return step
                for c, s in zip(chains, new):
                    c.slots.append(s)
                batch = [Group(chains[idx[0]].prefix, [cur[i] for i in idx],
                               [chains[i].first_pos + step for i in idx], [chains[i].slots[-1] for i in idx],
                               [chains[i].own + chains[i].slots for i in idx]) for idx in groups]
                logits = self.forward(batch)
                if back is not None:
                    logits = logits[back.to(logits.device)]
                grammar = [c.matcher for c in chains]
                if any(m is not None for m in grammar):  # never propose what the grammar forbids
                    logits = mask_logits(logits, fill_masks(grammar, self.vocab_size, logits.device))
                nxt = propose(chains, logits, step, fanout[min(step, len(fanout) - 1)], saguaro_c, q_mass)
                for c, t in zip(chains, nxt):
                    c.out.append(t)
                    if c.matcher is not None and not accept_all(c.matcher, [t]):
                        c.matcher = None
                cur = nxt
                self.progress = (step + 1, time.perf_counter() - t_step)
                if between is not None and between() and step + 1 < depth:
                    return step + 1
            return depth
        finally:
            for c in chains:
                self.pool.free(c.slots)
