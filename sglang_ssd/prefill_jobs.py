"""Prompts prefilled into the draft's prefix cache a chunk at a time, between the rounds it serves.

A long prompt's prefill (thousands of tokens: a whole source file) holds the draft's loop for
seconds, and every other request's round waits behind it. So the draft computes a prompt's KV as a
job of chunks of CHUNK_TOKENS: a Step handled inline computes at most SYNC_TOKENS of prefill, and
the draft service runs the rest one chunk at a time whenever no message is waiting
(draft_service.serve), so a round waits for at most one chunk. Jobs come from Step.warm (the
target is about to prefill these prompts) and from Begins that find more than SYNC_TOKENS of their
context missing (the speculator serves those requests by plain rounds until their job is done).

A finished job's prompt is in the prefix cache and stays locked there until its request's Begin
takes it (or it is forgotten, or the oldest beyond MAX_JOBS jobs, or beyond the cache's own size
in held tokens, let go), so a cache smaller than the prompt cannot evict it first. A job the pool
cannot hold stops; what it computed goes to the cache.
"""

from __future__ import annotations

import os
from collections import OrderedDict
from typing import Optional, Sequence

from sglang_ssd.draft_batch import SlotMirror, run
from sglang_ssd.draft_model import PoolFullError
from sglang_ssd.prefix_cache import PrefixCache

CHUNK_TOKENS = int(os.environ.get("SGLANG_SSD_PREFILL_CHUNK", "256"))  # prompt tokens per forward
SYNC_TOKENS = int(os.environ.get("SGLANG_SSD_SYNC_PREFILL", "512"))  # prefill a handled Step may do inline
MAX_JOBS = 64


class PrefillJob:
    def __init__(self, rid: str, prompt: Sequence[int], cache: PrefixCache):
        self.rid, self.prompt = rid, list(prompt)
        self.node, cached = cache.match(self.prompt)
        cache.lock(self.node)
        self.n0 = len(cached)  # slots[:n0] came from the cache (locked through node)
        self.slots = list(cached)
        self.mirror = SlotMirror()
        self.failed = ""  # why the job stopped (the pool could not hold it)
        self.finished = False

    @property
    def remaining(self) -> int:
        return 0 if self.finished or self.failed else len(self.prompt) - len(self.slots)

    def slot_tensor(self):
        return self.mirror.of(self.slots)

    def step(self, model, cache: PrefixCache, n: int) -> int:
        """Compute up to n more tokens; returns how many were computed."""
        a = len(self.slots)
        b = min(len(self.prompt), a + n)
        if b > a:
            try:
                new = cache.alloc(b - a)
            except PoolFullError as e:
                self._stop(model, cache, str(e))
                return 0
            try:
                model.forward([run(self.slot_tensor(), self.prompt[a:b], a, new)], logits=False)
            except BaseException:
                model.pool.free(new)
                raise
            self.slots += new
        if len(self.slots) == len(self.prompt):
            self._finish(model, cache)
        return b - a

    def _finish(self, model, cache: PrefixCache) -> None:
        model.pool.free(cache.insert(self.prompt, self.slots, self.n0))
        node, slots = cache.match(self.prompt)
        cache.lock(node)
        cache.unlock(self.node)
        self.node, self.slots, self.finished = node, slots, True

    def _stop(self, model, cache: PrefixCache, why: str) -> None:
        self.drop(model, cache)  # (what it computed is valid KV: a retry takes it from the cache)
        self.failed = why

    def drop(self, model, cache: PrefixCache) -> None:
        """Give everything back; what it computed stays in the cache, evictable."""
        if self.node is None:
            return
        if not self.finished:
            model.pool.free(cache.insert(self.prompt[: len(self.slots)], self.slots, self.n0))
        cache.unlock(self.node)
        self.node = None


class PrefillQueue:
    def __init__(self, model, cache: PrefixCache):
        self.model, self.cache = model, cache
        self.jobs: OrderedDict[str, PrefillJob] = OrderedDict()

    def add(self, rid: str, prompt: Sequence[int]) -> PrefillJob:
        job = self.jobs.get(rid)
        if job is not None and job.prompt == list(prompt) and not job.failed:
            return job
        self.forget(rid)
        job = self.jobs[rid] = PrefillJob(rid, prompt, self.cache)
        if job.remaining == 0:
            job.step(self.model, self.cache, 0)  # all of it cached already: finished at once
        while len(self.jobs) > MAX_JOBS:
            self.forget(next(iter(self.jobs)))
        self._bound()
        return job

    def _bound(self) -> None:
        """Let the oldest finished jobs go while more than the cache's size is held for Begins
        that have not come (a request aborted, or served to its end by plain rounds)."""
        held = [j for j in self.jobs.values() if j.finished]
        total = sum(len(j.prompt) for j in held)
        for j in held[:-1]:  # (the newest is kept whatever its size)
            if total <= self.cache.max_tokens:
                break
            total -= len(j.prompt)
            self.forget(j.rid)

    def get(self, rid: str) -> Optional[PrefillJob]:
        return self.jobs.get(rid)

    def pending(self) -> bool:
        return any(j.remaining for j in self.jobs.values())

    def work(self, budget: int, only: Optional[str] = None) -> tuple[int, list[PrefillJob]]:
        """Run chunks of unfinished jobs (oldest first; `only`: that request's) until `budget`
        tokens are computed; (tokens computed, the jobs that finished)."""
        computed, done = 0, []
        for job in list(self.jobs.values()):
            if only is not None and job.rid != only:
                continue
            while job.remaining and computed < budget:
                computed += job.step(self.model, self.cache, min(CHUNK_TOKENS, budget - computed))
                if job.finished:
                    done.append(job)
            if computed >= budget:
                break
        if done:
            self._bound()
        return computed, done

    def take(self, rid: str) -> None:
        """The request's Begin has locked its own path: the job's hold ends."""
        self.forget(rid)

    def forget(self, rid: str) -> None:
        job = self.jobs.pop(rid, None)
        if job is not None:
            job.drop(self.model, self.cache)

    def clear(self) -> None:
        for rid in list(self.jobs):
            self.forget(rid)
