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

The prompts' KV is computed by prefill jobs (prefill_jobs.py): up to SYNC_TOKENS of it in the
Step that asks, the rest a chunk at a time between rounds; a prompt's first speculations are
drafted once its job is done. Requests with a grammar are left to the Begin (the grammar state
starts there). Entries are
dropped at their Begin or release, and the oldest beyond a cap (a request aborted between its
prefill and its Begin never claims its entry).
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Callable, Optional

import torch

from sglang_ssd.draft_batch import Group
from sglang_ssd.draft_model import PoolFullError
from sglang_ssd.draft_seq import Chain
from sglang_ssd.prefill_jobs import SYNC_TOKENS, PrefillJob, PrefillQueue
from sglang_ssd.prefix_cache import PrefixCache
from sglang_ssd.proposals import seeded_scores
from sglang_ssd.wire import Warm

MAX_ENTRIES = 64  # requests whose first speculations wait for their Begin


class FirstDrafts:
    def __init__(self, model, prefix: PrefixCache, forward: Callable, run_chains: Callable[[list], int]):
        self.model = model
        self.prefix = prefix
        self.forward = forward  # (groups) -> logits
        self.run_chains = run_chains  # drafts chains K steps deep (the speculator's own drafting)
        self.jobs = PrefillQueue(model, prefix)  # the prompts' KV, a chunk at a time (prefill_jobs.py)
        self.wanted: dict[str, tuple[Warm, int]] = {}  # rid -> (its Warm, F) to pre-draft once its job is done
        self.entries: OrderedDict[str, dict] = OrderedDict()  # rid -> {first token: (tokens, q)}
        self.found = 0  # Begins whose first speculation was drafted here
        self.missed = 0  # Begins of pre-drafted requests whose first token was not among the best F

    def warm(self, warms: list[Warm], width: int) -> int:
        """Queue the prompts' KV for the prefix cache, and the first speculations of those asking
        for it (`first`), after their `width` likeliest first tokens; computes up to SYNC_TOKENS of
        it now (the rest: work(), between rounds). Returns the prompt tokens computed."""
        for w in warms:
            self.jobs.add(w.rid, w.prompt)
            if w.first and width > 0:
                self.wanted[w.rid] = (w, width)
        return self.work(SYNC_TOKENS)

    def work(self, budget: int, only: Optional[str] = None) -> int:
        """Up to `budget` prompt tokens of the queued prefills, then the first speculations of
        the prompts that are done, all in one batch; returns the prompt tokens computed."""
        computed, _ = self.jobs.work(budget, only)
        ready = []
        for rid in list(self.wanted):
            job = self.jobs.get(rid)
            if job is None or job.failed:
                del self.wanted[rid]
            elif job.finished:
                ready.append((self.wanted.pop(rid), job))
        if ready:
            try:
                self._predraft(ready)
            except PoolFullError:  # (best effort: the Begin drafts them instead)
                pass
        return computed

    def pending(self) -> bool:
        return self.jobs.pending()

    def admit(self, rid: str, prompt: list[int]) -> tuple[str, int]:
        """Whether a Begin's prompt can be prefilled inline: ("", tokens computed here) when at
        most SYNC_TOKENS of it are missing (its job, if any, is finished first), else (why it
        waits, tokens computed): its job goes on between rounds (started here if need be), or the
        pool could not hold it."""
        if self.prefix.max_tokens == 0:
            return "", 0
        job, computed = self.jobs.get(rid), 0
        if job is not None and job.remaining and prompt[: len(job.prompt)] == job.prompt:
            if job.remaining > SYNC_TOKENS:
                return _waiting(job), 0
            self.wanted.pop(rid, None)  # the Begin knows its first token: nothing to pre-draft
            computed, _ = self.jobs.work(job.remaining, only=rid)
        if job is not None and job.failed:
            self.jobs.forget(rid)
            return job.failed, computed
        _, cached = self.prefix.match(prompt)
        if len(prompt) - len(cached) <= SYNC_TOKENS:
            return "", computed
        return _waiting(self.jobs.add(rid, prompt)), computed

    def _predraft(self, ready: list[tuple[tuple[Warm, int], PrefillJob]]) -> None:
        # The distribution after each prompt: its last token again, into a scratch slot (the job
        # holds the prompt's path in the cache).
        scratch = self.prefix.alloc(len(ready))
        try:
            groups = []
            for ((w, _), job), s in zip(ready, scratch):
                n = len(w.prompt)
                groups.append(Group(job.slot_tensor()[: n - 1], [w.prompt[-1]], [n - 1], [s], [[s]]))
            logits = self.forward(groups)
        finally:
            self.model.pool.free(scratch)
        chains, owners = [], []
        for ((w, width), job), g in zip(ready, logits):
            g = g.view(1, -1)
            if w.sampling is not None and w.sampling.seed is not None:
                g = seeded_scores(w.sampling, g, len(w.prompt))
            prefix = job.slot_tensor()
            for c in torch.topk(g[0], min(width, g.shape[-1])).indices.tolist():
                if bool(torch.isfinite(g[0, c])):
                    chains.append(Chain(prefix=prefix, own=[], first=c, first_pos=len(w.prompt), sampling=w.sampling))
                    owners.append((w.rid, c))
        self.run_chains(chains)
        for (rid, c), ch in zip(owners, chains):
            if ch.out:
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
        self.wanted.pop(rid, None)
        self.jobs.forget(rid)

    def clear(self) -> None:
        self.entries.clear()
        self.wanted.clear()
        self.jobs.clear()


def _waiting(job: PrefillJob) -> str:
    return f"draft prefill in progress: {len(job.slots)} of {len(job.prompt)} tokens"
