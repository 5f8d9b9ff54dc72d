"""Draft-side SSD state: per-request sequences, the speculation cache, lookup and pre-drafting.

One round for a request whose last speculation was S = x_1..x_K after pending token t:
  lookup(k, t*)  -> cached K tokens on a hit, else the backup's; commits t, x_1..x_k;
  speculate()    -> glue forward over [t*, S'] (writes its KV), forks the likely outcomes and
                    drafts every branch of every request K steps deep, one batched forward a step.

A full KV pool degrades, never fails: the prefix cache gives its slots back first (PrefixCache.
alloc); a request the pool still cannot hold (its prompt, its commits, its glue) is forgotten and
its next outcome refused as retryable (Refusal.retry): the worker serves it by plain rounds and
begins it again later, when there may be room. A Begin missing more than SYNC_TOKENS of its
context waits the same way for its prefill job (prefill_jobs.py). Tree steps and neural backups
the pool cannot hold stop early; the n-gram backup completes their speculations.
"""

from __future__ import annotations

import time
from typing import Callable, Optional

import torch

from sglang_ssd import device_clock, qlaw
from sglang_ssd.backup import ngram_propose
from sglang_ssd.backup_policy import BackupPolicy
from sglang_ssd.chain_drafting import ChainDrafter
from sglang_ssd.draft_batch import run
from sglang_ssd.draft_model import DraftModel, PoolFullError
from sglang_ssd.draft_seq import Chain, DraftSeq, give_back, share_prompt, to_spec, write_committed_kv
from sglang_ssd.fanout import FanoutEstimator
from sglang_ssd.first_drafts import FirstDrafts
from sglang_ssd.forking import fork_chains
from sglang_ssd.grammar import DraftGrammars, accept_all, begin_matcher, model_path_of
from sglang_ssd.partial_tree import complete, worth_stopping
from sglang_ssd.prefill_jobs import CHUNK_TOKENS
from sglang_ssd.prefix_cache import PrefixCache
from sglang_ssd.tree_budget import BudgetPlanner, plan_budget
from sglang_ssd.wire import Begin, Outcome, Plan, Refusal, Spec, Warm


class RequestRefused(ValueError):
    """This request cannot be speculated for (bad ids, lengths or round); the worker serves it plainly."""


class Speculator:
    def __init__(self, model: DraftModel, k: int, fanout: list[int], backup: str,
                 backup_batch_threshold: int, saguaro_c: float = 1.0,
                 estimator: Optional[FanoutEstimator] = None, prefix_cache_tokens: Optional[int] = None,
                 prefix: Optional[PrefixCache] = None, planner: Optional[BudgetPlanner] = None,
                 q_mass: float = qlaw.MASS):
        self.model = model
        self.planner = planner  # None: B is fixed (by the user, or by a schedule given as a list)
        self.q_mass = q_mass  # the share of q each compact q' row keeps (qlaw.py)
        # The draft's radix cache (a previous session's, if given: the KV is the same model's);
        # by default it may hold a quarter of the pool.
        cap = model.pool.size // 4 if prefix_cache_tokens is None else prefix_cache_tokens
        self.prefix = prefix if prefix is not None else PrefixCache(model.pool, cap)
        self.prefill_computed = 0  # prompt tokens the draft ran its model on
        self.prefill_reused = 0  # prompt tokens whose KV came from the prefix cache
        self.saguaro_c = saguaro_c
        self.estimator = estimator  # None: a fixed (user-given) schedule
        self.k = k  # the session's K: the deepest speculation the worker may ask for
        self.depth = k  # this round's K (the worker's automatic K may lower it, auto_k.py)
        self.fanout = fanout
        self.tree_rids: set = set()  # the requests of the tree in progress (empty between trees)
        self.tree_fanout: list[int] = []  # the schedule of the last tree built (what Plan reports)
        self._fixed_fanout = list(fanout)
        self.backup = backup
        self.backup_batch_threshold = backup_batch_threshold
        self.seqs: dict[str, DraftSeq] = {}
        self.last_tree_s = 0.0
        self.last_tree_depth = 0
        self.grammars = DraftGrammars(model_path_of(model), int(model.vocab_size))
        self.policy = BackupPolicy(backup, backup_batch_threshold, k)
        self.last_backup, self.last_misses = "", 0
        self.deferred: dict[str, str] = {}  # rid -> why its next outcome is refused as retryable
        self.drafter = ChainDrafter(self.prefix.alloc, model.pool, self._timed_forward, self.grammars.vocab_size)
        self.first = FirstDrafts(model, self.prefix, self._timed_forward, self._run_chains)

    @property
    def verify_s(self) -> float:
        return self.policy.verify_s

    @verify_s.setter
    def verify_s(self, seconds: float) -> None:
        if seconds > 0:
            self.policy.verify_s = float(seconds)

    def set_depth(self, depth: int) -> None:
        """K for this round's answers and the next tree; the fan-out is re-planned for it."""
        if not 1 <= depth <= self.k:
            raise ValueError(f"depth={depth} outside [1, {self.k}]")
        if depth == self.depth:
            return
        self.depth = depth
        if self.estimator is not None:
            self.fanout = self.estimator.set_k(depth)
        else:
            self.fanout = self._fixed_fanout[: depth + 1]

    def backup_threshold(self) -> int:
        """The adaptive backup's live b* (requests per batch from which misses get the fast one)."""
        return self.policy.live_threshold

    # ---- request lifecycle -------------------------------------------------------------
    def release(self, rids, cache: bool = True, keep_jobs=()) -> None:
        """Forget requests; their committed KV goes to the prefix cache unless `cache` is False
        (a request dropped after an error, whose KV may be incomplete). Prefill jobs of the rids
        in `keep_jobs` go on (a request begun again in the same Step)."""
        for rid in rids:
            self.deferred.pop(rid, None)
            if rid not in keep_jobs:
                self.first.forget(rid)
            self._drop(rid, cache)
        self.prefix.trim()

    def close(self) -> None:
        """Forget every request, prefill job and first speculation (a session ends)."""
        self.release(list(self.seqs))
        self.first.clear()
        self.deferred.clear()
        self.prefix.trim()

    def _drop(self, rid: str, cache: bool = True) -> None:
        seq = self.seqs.pop(rid, None)
        if seq is not None:
            give_back(seq, self.model.pool, self.prefix, cache)

    def _pool_full(self, seq: DraftSeq, e: PoolFullError) -> None:
        """The pool cannot hold this request now: forget it (its KV to the prefix cache, which
        gives it back first when room is short) and refuse its next outcome as retryable."""
        self._drop(seq.rid)
        self.deferred[seq.rid] = str(e)

    def pool_usage(self) -> tuple[int, int]:
        """(slots in use by live requests and speculation, slots only the prefix cache holds)."""
        cached = self.prefix.evictable
        return self.model.pool.num_used - cached, cached

    def warm(self, warms: list[Warm]) -> None:
        """While the target prefills these requests: their prompts' KV into the prefix cache and
        their first speculations (first_drafts.py), off the first round's critical path. Best
        effort: a prompt with bad ids or beyond the draft's context is skipped (its Begin refuses
        it with the reason)."""
        if self.prefix.max_tokens == 0:
            return
        ok = []
        for w in warms:
            try:
                self._check_ids(w.prompt, "a warmed prompt")
            except RequestRefused:
                continue
            if w.prompt and len(w.prompt) + 2 * self.k + 2 <= self.model.max_positions:
                ok.append(w)
        self.prefill_computed += self.first.warm(ok, max(1, self.fanout[0]))
        self.prefix.trim()

    def has_background(self) -> bool:
        """Whether prefill jobs wait for background(): the draft service runs them between rounds."""
        return self.first.pending()

    def background(self) -> int:
        """One chunk of the queued prefills (and the first speculations of prompts it completes);
        returns the prompt tokens computed."""
        n = self.first.work(CHUNK_TOKENS)
        self.prefill_computed += n
        self.prefix.trim()
        return n

    def begin(self, begins: list[Begin]) -> list[Refusal]:
        refusals, fresh, seen = [], [], set()
        for b in begins:
            if b.rid in seen:
                refusals.append(Refusal(rid=b.rid, reason="duplicate begin in one round"))
                continue
            seen.add(b.rid)
            try:
                self._check_ids(b.prompt + [b.pending], b.rid)
                if len(b.prompt) + 2 * self.k + 2 > self.model.max_positions:
                    raise RequestRefused(f"prompt of {len(b.prompt)} tokens exceeds the draft's context")
            except RequestRefused as e:
                refusals.append(Refusal(rid=b.rid, reason=str(e)))
                continue
            self.deferred.pop(b.rid, None)
            self._drop(b.rid)  # what the draft knew of it is stale (its prefill job goes on)
            why, computed = self.first.admit(b.rid, b.prompt)
            self.prefill_computed += computed
            if why:  # its prefill goes on between rounds, or the pool cannot hold it: plain rounds
                self.deferred[b.rid] = why
                continue
            found = self.first.take(b.rid, b.pending)
            seq = DraftSeq(rid=b.rid, tokens=list(b.prompt), pending=b.pending, sampling=b.sampling)
            if found is not None:
                seq.spec, seq.spec_q = found
            seq.node, cached = self.prefix.match(b.prompt)
            self.prefix.lock(seq.node)
            self.first.jobs.take(b.rid)  # (after the lock: a finished job held the prompt till now)
            seq.slots, seq.shared = list(cached), len(cached)
            self.prefill_reused += len(cached)
            self.prefill_computed += len(b.prompt) - len(cached)
            seq.matcher = begin_matcher(self.grammars, b)
            self.seqs[b.rid] = seq
            fresh.append(seq)
        if fresh:
            write_committed_kv(self.model, self.prefix.alloc, fresh, on_full=self._pool_full)
            fresh = [s for s in fresh if self.seqs.get(s.rid) is s]
            for seq in fresh:
                share_prompt(seq, self.model.pool, self.prefix)
            self.prefix.trim()
            late = [s for s in fresh if not s.spec]  # the rest were pre-drafted during the prefill
            for seq, (toks, q) in zip(late, self._neural([(s, s.pending) for s in late])):
                seq.spec, seq.spec_q = toks, q
        return refusals

    # ---- the round ---------------------------------------------------------------------
    def lookup(self, outcomes: list[Outcome]) -> tuple[list[Spec], list[Refusal], float]:
        """Answer every outcome; only the missed requests get a backup speculation."""
        specs: dict[str, Spec] = {}
        refusals: list[Refusal] = []
        missed: list[tuple[DraftSeq, int]] = []
        seen: set[str] = set()
        for o in outcomes:
            if o.rid in seen:  # one outcome per request per round; the first one stands
                refusals.append(Refusal(rid=o.rid, reason="duplicate outcome in one round"))
                continue
            seen.add(o.rid)
            why = self.deferred.pop(o.rid, None)
            if why is not None:  # plain rounds for now; the worker begins it again later
                refusals.append(Refusal(rid=o.rid, reason=why, retry=True))
                continue
            seq = self.seqs.get(o.rid)
            try:
                if seq is None:
                    raise RequestRefused(f"unknown request {o.rid!r}")
                if o.k == -1:
                    if len(seq.tokens) != o.committed_len:
                        raise RequestRefused(f"committed length {o.committed_len} from the target, "
                                             f"draft has {len(seq.tokens)}")
                    seq.partial = 0
                    if len(seq.spec) >= self.depth:
                        seq.spec, seq.spec_q = self._cut(seq.spec, seq.spec_q)
                        specs[o.rid] = to_spec(seq, hit=False)
                    else:  # drafted at begin before K grew: draft it again at this depth
                        missed.append((seq, seq.pending))
                    continue
                self._commit(seq, o)
            except RequestRefused as e:
                refusals.append(Refusal(rid=o.rid, reason=str(e)))
                self.release([o.rid], cache=False)
                continue
            self._observe(seq, o)
            self.policy.observe_tokens(seq.source, o.k + 1)
            hit = seq.cache.get((o.k, o.t_star))
            if hit is not None and not hit[0]:  # its tree stopped before drafting anything
                hit = None
            self.policy.observe_lookup(hit is not None)
            seq.partial = 0
            if hit is not None:
                if len(hit[0]) < self.depth:  # a tree stopped early (or K grew since): complete it
                    seq.partial = len(hit[0])
                    hit = complete(*hit, seq.tokens + [seq.pending], self.depth)
                seq.spec, seq.spec_q = self._cut(*hit)
                seq.source = "partial" if seq.partial else "hit"
                specs[o.rid] = to_spec(seq, hit=True)
            else:
                missed.append((seq, o.t_star))
            seq.cache = {}
        t0 = time.perf_counter()
        self.last_backup, self.last_misses = "", len(missed)
        if missed:
            kind = self.policy.choose(len(outcomes))
            if kind == "fast":  # deterministic proposals: no q' (the target treats them as one-hot)
                drafts = [(ngram_propose(s.tokens + [t], self.depth), None) for s, t in missed]
            else:
                drafts = self._neural(missed)
            for (seq, _), (toks, q) in zip(missed, drafts):
                seq.spec, seq.spec_q, seq.partial = toks, q, 0
                seq.source = kind
                specs[seq.rid] = to_spec(seq, hit=False)
            self.last_backup = kind
        backup_s = time.perf_counter() - t0
        if self.last_backup == "neural":
            self.policy.observe_neural(len(missed), backup_s)
        ordered = [specs.pop(o.rid) for o in outcomes if o.rid in specs]
        return ordered, refusals, backup_s

    def _cut(self, tokens: list[int], q: Optional[torch.Tensor]):
        """A speculation drafted deeper than this round's K: its first K tokens (and q' rows)
        are a K-chain."""
        return tokens[: self.depth], (None if q is None else q[: self.depth])

    def _commit(self, seq: DraftSeq, o: Outcome) -> None:
        if not (0 <= o.k <= len(seq.spec)):
            raise RequestRefused(f"k={o.k} outside [0, {len(seq.spec)}] (the speculation's length)")
        self._check_ids([o.t_star], seq.rid)
        accepted = [seq.pending] + seq.spec[: o.k]
        emitted = seq.spec[: o.k] + [o.t_star]
        new_len = len(seq.tokens) + len(accepted)
        if new_len != o.committed_len:
            raise RequestRefused(
                f"committed length {o.committed_len} from the target, draft has {new_len}"
            )
        if new_len + 2 * self.k + 2 > self.model.max_positions:
            raise RequestRefused("context reached the draft's maximum length")
        if seq.glue_slots and len(seq.slots) == len(seq.tokens):
            seq.slots += seq.glue_slots[: o.k + 1]
            self.model.pool.free(seq.glue_slots[o.k + 1:])
        else:
            self.model.pool.free(seq.glue_slots)
        seq.glue_slots = []
        seq.tokens += accepted
        seq.pending = o.t_star
        seq.spec_q = None
        if seq.matcher is not None and not accept_all(seq.matcher, emitted):
            seq.matcher = None  # out of step with the target's grammar: draft unmasked from now

    def speculate(self, between: Optional[Callable[[], bool]] = None) -> None:
        """Glue every live speculation, fork its likely outcomes and pre-draft them. `between` runs
        after each forward (the draft service answers first speculations there, mid-tree); when it
        returns True after a tree step the tree stops there, its branches as deep as they got
        (partial_tree.py)."""
        t0 = time.perf_counter()
        self.last_tree_s, self.last_tree_depth = 0.0, 0
        k = self.depth  # a speculation of another length (K changed) misses and gets a backup
        seqs = [s for s in self.seqs.values() if len(s.spec) == k and not s.glue_slots]
        if not seqs:
            return
        write_committed_kv(self.model, self.prefix.alloc, seqs, on_full=self._pool_full)
        glued, groups = [], []
        for s in seqs:
            if self.seqs.get(s.rid) is not s:  # the pool could not hold its commits
                continue
            try:
                s.glue_slots = self.prefix.alloc(k + 1)
            except PoolFullError as e:
                self._pool_full(s, e)
                continue
            glued.append(s)
            groups.append(run(s.slot_tensor(), [s.pending] + s.spec, len(s.tokens), s.glue_slots))
        seqs = glued
        if not seqs:
            return
        self.tree_rids = {s.rid for s in seqs}  # (a Step releasing all of them makes the tree moot)
        fan = plan_budget(self.planner, self.policy, self.estimator, k, len(seqs), self.verify_s,
                          self.model.vocab_size - 1)
        if fan is not None:
            self.fanout = fan
        # This tree's schedule: a lookup answered mid-tree (between) re-plans self.fanout.
        self.tree_fanout = tree_fan = list(self.fanout)
        logits = self._timed_forward(groups).view(len(seqs), k + 1, -1)
        if between is not None:
            between()
        chains, owners = [], []
        depth = self.estimator.depth if self.estimator is not None else 0
        for s, g in zip(seqs, logits):
            ranked, forks = fork_chains(s, g, tree_fan, depth, self.grammars.vocab_size)
            if depth:
                s.ranked = ranked
            chains += [ch for _, _, ch in forks]
            owners += [(s, j, c) for j, c, _ in forks]
        done = self._run_chains(chains, between, tree_fan)
        self.tree_rids = set()
        for (s, j, c), ch in zip(owners, chains):
            s.cache[(j, c)] = (ch.out, ch.q())
        self.last_tree_s, self.last_tree_depth = time.perf_counter() - t0, done
        if self.planner is not None and done == k:  # a whole tree: what the next budget must fit
            self.planner.observe_tree(k, len(seqs), sum(tree_fan), self.last_tree_s)

    def worth_stopping(self, cycle_s: float) -> bool:
        """Whether the tree in progress should stop now that the worker's outcome is waiting, its
        round taking `cycle_s` (at least its verify) when it does not wait for the draft."""
        done, step_s = self.drafter.progress
        return worth_stopping(done, self.depth, step_s, max(cycle_s, self.verify_s), self.policy.hit_tokens)

    def drop_speculation(self) -> None:
        """Forget this round's glue and cache (pool pressure): the next lookups miss."""
        self.tree_rids = set()
        for s in self.seqs.values():
            self.model.pool.free(s.glue_slots)
            s.glue_slots = []
            s.cache = {}

    def plan(self) -> Plan:
        e = self.estimator
        last = self.planner.last if self.planner is not None else {}
        return Plan(fanout=list(self.tree_fanout or self.fanout), accept_rate=e.accept if e else 0.0, power=e.power if e else 0.0,
                    predicted_hit=float(last.get("predicted_hit", 0.0)),
                    tree_pred_s=float(last.get("tree_ms", 0.0)) / 1e3, jit_s=self.jit_seconds(len(self.seqs)))

    def jit_seconds(self, n: int) -> float:
        """Seconds to draft n requests K deep just in time, as a sync round (or a neural backup for
        n misses) would: the backup's measured latency, else the forward-cost curve's K-chain
        (B = 1); 0 when neither is known. The worker's mode planner weighs sync rounds with it."""
        if n < 1:
            return 0.0
        if self.policy.neural_measured():
            return self.policy.neural_seconds(n)
        return self.planner.tree_seconds(self.depth, n, 1) if self.planner is not None else 0.0

    def _timed_forward(self, groups):
        """A glue or tree forward, its time fed to the planner's cost curve."""
        if self.planner is None:
            return self.model.forward(groups)
        t0 = device_clock.now(self.model.device)
        out = self.model.forward(groups)
        self.planner.cost.observe(sum(len(g) for g in groups), device_clock.now(self.model.device) - t0)
        return out

    def _observe(self, seq: DraftSeq, o: Outcome) -> None:
        """Feed the fan-out estimator with this outcome and the rank of t* among the forks."""
        if self.estimator is None or o.k >= len(seq.ranked):  # no forks ranked at that position
            return
        cands = seq.ranked[o.k]
        rank = cands.index(o.t_star) if o.t_star in cands else self.estimator.depth
        self.estimator.observe(o.k, rank, k=len(seq.spec))
        self.fanout = self.estimator.schedule
        seq.ranked = []

    # ---- helpers -----------------------------------------------------------------------
    def _check_ids(self, ids, rid) -> None:
        v = self.model.vocab_size
        for t in ids:
            if not (0 <= t < v):
                raise RequestRefused(f"token id {t} outside the draft vocabulary [0, {v}) for {rid!r}")

    def _neural(self, items: list[tuple[DraftSeq, int]]) -> list[tuple[list[int], Optional[torch.Tensor]]]:
        """Just-in-time drafting: K steps from the true context (seq committed + t). What the pool
        cannot hold (the commits' KV, the chain's steps) the n-gram backup completes."""
        short = set()
        write_committed_kv(self.model, self.prefix.alloc, [s for s, _ in items],
                           on_full=lambda s, e: short.add(s.rid))
        chains = [None if s.rid in short else
                  Chain(prefix=s.slot_tensor(), own=[], first=t, first_pos=len(s.tokens), sampling=s.sampling,
                        matcher=s.matcher.fork() if s.matcher is not None else None)
                  for s, t in items]
        self._run_chains([c for c in chains if c is not None])
        out = []
        for (s, t), c in zip(items, chains):
            toks, q = (c.out, c.q()) if c is not None else ([], None)
            if len(toks) < self.depth:
                toks, q = complete(toks, q, s.tokens + [t], self.depth)
            out.append((toks, q))
        return out

    def _run_chains(self, chains: list[Chain], between: Optional[Callable[[], bool]] = None,
                    fanout: Optional[list[int]] = None) -> int:
        """Up to K batched forwards (chain_drafting.py; `between` runs after each, and stops them
        by returning True); the steps run."""
        return self.drafter.run(chains, self.depth, list(fanout or self.fanout), self.saguaro_c, self.q_mass, between)
