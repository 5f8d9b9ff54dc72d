"""The draft's work while the target prefills: the prompt's KV, and the first round's speculations.

A request's first decode round needs a speculation after the target's first token t, which the
draft learns only from the Begin that follows the target's prefill; drafted then, just in time,
its K steps sit on the first round's critical path (on the real pair on a CPU: ~200 ms of a
~250 ms round, once per request). But the target's prefill of the prompt is long and the draft's
is short, so during it the draft computes the prompt's KV, ranks its own likeliest first tokens
(by the request's law: Gumbel scores for a seeded request, whose first token SSD draws with the
same noise) and drafts the K-step speculation after each of the best F. The Begin then usually
finds its first speculation drafted, a cache hit like any other round's: the one drafted after
the real t is a draw from the draft's law given t (its q' shipped with it), as one drafted at the
Begin would be, so verifying it stays exact.

Requests with a grammar are left to the Begin (the grammar state starts there). Entries are
dropped at their Begin or release, and the oldest beyond a cap (a request aborted between its
prefill and its Begin never claims its entry).
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Callable, Optional

import torch

from sglang_ssd.draft_seq import Chain
from sglang_ssd.prefix_cache import PrefixCache, prefill_into_cache
from sglang_ssd.proposals import seeded_scores
from sglang_ssd.wire import Warm

MAX_ENTRIES = 64  # requests whose first speculations wait for their Begin


class FirstDrafts:
    def __init__(self, model, prefix: PrefixCache, forward: Callable, run_chains: Callable[[list], int]):
        self.model = model
        self.prefix = prefix
        self.forward = forward  # (tokens, positions, write slots, visible slots) -> logits
        self.run_chains = run_chains  # drafts chains K steps deep (the speculator's own drafting)
        self.entries: OrderedDict[str, dict] = OrderedDict()  # rid -> {first token: (tokens, q)}
        self.found = 0  # Begins whose first speculation was drafted here
        self.missed = 0  # Begins of pre-drafted requests whose first token was not among the best F

    def warm(self, warms: list[Warm], width: int) -> int:
        """Compute the prompts' KV into the prefix cache, then pre-draft the first speculations
        of those asking for it (`first`), after their `width` likeliest first tokens, all in one
        batch; returns the prompt tokens computed."""
        computed, ready = 0, []
        for w in warms:
            computed += prefill_into_cache(self.model, self.prefix, w.prompt)
            if w.first and width > 0:
                node, slots = self.prefix.match(w.prompt)
                if len(slots) == len(w.prompt):  # (a cache too small to hold it: no pre-draft)
                    self.prefix.lock(node)
                    ready.append((w, node, slots))
        try:
            if ready:
                self._predraft(ready, width)
        finally:
            for _, node, _ in ready:
                self.prefix.unlock(node)
        return computed

    def _predraft(self, ready: list, width: int) -> None:
        # The distribution after each prompt: its last token again, into a scratch slot.
        scratch = self.prefix.alloc(len(ready))
        try:
            logits = self.forward([w.prompt[-1] for w, _, _ in ready], [len(w.prompt) - 1 for w, _, _ in ready],
                                  scratch, [slots[:-1] + [s] for (_, _, slots), s in zip(ready, scratch)])
        finally:
            self.model.pool.free(scratch)
        chains, owners = [], []
        for (w, _, slots), g in zip(ready, logits):
            g = g.view(1, -1)
            if w.sampling is not None and w.sampling.seed is not None:
                g = seeded_scores(w.sampling, g, len(w.prompt))
            for c in torch.topk(g[0], min(width, g.shape[-1])).indices.tolist():
                if bool(torch.isfinite(g[0, c])):
                    chains.append(Chain(context=list(slots), first=c, first_pos=len(w.prompt), sampling=w.sampling))
                    owners.append((w.rid, c))
        self.run_chains(chains)
        for (rid, c), ch in zip(owners, chains):
            self.entries.setdefault(rid, {})[c] = (ch.out, ch.q())
            self.entries.move_to_end(rid)
        while len(self.entries) > MAX_ENTRIES:
            self.entries.popitem(last=False)

    def take(self, rid: str, first: int) -> Optional[tuple]:
        """The speculation pre-drafted after `first` for this request (tokens, q'), or None."""
        entry = self.entries.pop(rid, None)
        if entry is None:
            return None
        hit = entry.get(first)
        if hit is None or not hit[0]:
            self.missed += 1
            return None
        self.found += 1
        return hit

    def forget(self, rid: str) -> None:
        self.entries.pop(rid, None)
