"""Running SSD counters of one scheduler process (rounds, acceptance, cache hits, draft timing)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional


@dataclass
class SSDStats:
    rounds: int = 0  # request-rounds verified (one per request per decode step)
    spec_rounds: int = 0  # of which speculated (not served by the plain path)
    accepted: int = 0  # draft tokens accepted in speculated rounds
    emitted: int = 0  # tokens emitted in speculated rounds (accepted + t*)
    lookups: int = 0  # rounds that asked for a pre-drafted speculation (after a request's first), answered or not
    hits: int = 0  # ... answered whole from the speculation cache (a failed or late draft is a miss)
    plain_rounds: int = 0
    steps: int = 0  # decode steps (batched rounds)
    draft_wait_s: float = 0.0  # worker time blocked on the draft's answer
    verify_s: float = 0.0  # the target's verify forwards
    round_s: float = 0.0  # whole decode rounds in the worker (wait + verify + acceptance + bookkeeping)
    first_wait_s: float = 0.0  # of draft_wait_s: rounds right after requests began (the draft's prefill)
    draft_tree_s: float = 0.0  # draft time spent pre-drafting (glue + tree)
    draft_lookup_s: float = 0.0
    draft_failures: int = 0  # decode steps served without the draft (dead, late, restarting)
    round_resyncs: int = 0  # rounds the draft refused as out of order (then resynced)
    draft_restarts: int = 0
    refusals: int = 0  # requests the draft refused (then served without it), by reason below
    refusal_reasons: dict = field(default_factory=dict)
    draft_pid: Optional[int] = None
    config: dict = field(default_factory=dict)  # the live SSD settings: K, C, backup, draft, ...
    fanout: list = field(default_factory=list)  # the live schedule F_0..F_K
    accept_rate_est: Optional[float] = None  # the draft's online estimates behind it
    power_est: Optional[float] = None
    predicted_hit: Optional[float] = None  # the time-sized budget's predicted hit rate and tree time
    tree_pred_ms: Optional[float] = None
    draft_overrun_s: float = 0.0  # wait for a draft tree that outlasted the verify
    partial_answers: int = 0  # hits answered from a tree stopped early (partial_tree.py): not in `hits`
    partial_drafted: int = 0  # ... and the tokens of theirs the draft model drafted
    handoff_s: float = 0.0  # the rest of the wait beyond the draft's lookup: transport, decoding
    backup_neural: int = 0  # rounds whose misses the neural backup answered
    backup_fast: int = 0
    backup_threshold: Optional[int] = None  # the adaptive backup's live b*
    draft_pool_used: Optional[int] = None  # draft KV slots in use after the last round
    draft_pool_size: Optional[int] = None
    draft_prefix_cached: Optional[int] = None  # draft KV slots only its prefix cache holds
    draft_prefill_tokens: int = 0  # prompt tokens the draft computed (since it started)
    draft_prefill_reused: int = 0  # prompt tokens it took from its prefix cache
    draft_first_predrafted: int = 0  # requests whose first speculation was drafted during their prefill
    draft_first_missed: int = 0  # ... pre-drafted, but after first tokens the target did not emit
    draft_rejected_messages: int = 0  # malformed/stale messages the draft refused
    worker_rejected_messages: int = 0  # ... and the worker dropped
    plain_reasons: dict = field(default_factory=dict)  # plain-path rounds by reason
    grammar_spec_rounds: int = 0  # speculated rounds of grammar-constrained requests
    grammar_accepted: int = 0
    live_k: Optional[int] = None  # K of the next round (automatic K moves it)
    k_steps: dict = field(default_factory=dict)  # decode steps verified at each K
    auto_k: dict = field(default_factory=dict)  # automatic K per batch-size bucket, with its timings
    live_mode: Optional[str] = None  # the mode of the next round (ssd / sync / plain, mode_planner.py)
    mode_steps: dict = field(default_factory=dict)  # decode steps served in each mode
    modes: dict = field(default_factory=dict)  # per batch-size bucket: the mode, its switches and measurements
    pauses: int = 0  # requests the draft was told to forget for plain rounds
    resyncs: int = 0  # requests the draft was brought back in sync with (after a pause or a restart)
    resync_s: float = 0.0  # rounds' waits for those resyncs
    target_ms: dict = field(default_factory=dict)  # per batch-size bucket, ms per target forward by width (round_costs.py)
    target_prior: dict = field(default_factory=dict)  # CPU: the target's linear layers timed at start, and their scale (target_prior.py)
    verify_graphs: dict = field(default_factory=dict)  # the target's verify graph replays and eager rounds by reason (GPU)
    target_threads: dict = field(default_factory=dict)  # CPU core split: target forwards per kind (prefill, ssd, sync, plain) and torch threads

    def record_threads(self, kind: str, threads: int) -> None:
        per = self.target_threads.setdefault(kind, {})
        per[threads] = per.get(threads, 0) + 1

    def record_round(self, ks, hits, wait_s, plain, depth: Optional[int] = None, mode: str = "ssd") -> None:
        self.steps += 1
        self.mode_steps[mode] = self.mode_steps.get(mode, 0) + 1
        if depth is not None:
            self.k_steps[depth] = self.k_steps.get(depth, 0) + 1
        self.draft_wait_s += wait_s
        for k, h, p in zip(ks, hits, plain):
            self.rounds += 1
            if p:
                self.plain_rounds += 1
                continue
            self.spec_rounds += 1
            self.accepted += k
            self.emitted += k + 1
            if h is not None:
                self.lookups += 1
                self.hits += int(h)

    def record_partial(self, drafted: list[int]) -> None:
        """Each answer's drafted depth when its tree was stopped early (0: a whole answer)."""
        for d in drafted:
            if d:
                self.partial_answers += 1
                self.partial_drafted += d

    def record_reasons(self, reasons, grammar_rows, ks) -> None:
        """Plain-path rounds by reason, and speculated grammar rounds."""
        for r in reasons:
            if r is not None:
                self.plain_reasons[r] = self.plain_reasons.get(r, 0) + 1
        self.grammar_spec_rounds += len(grammar_rows)
        self.grammar_accepted += sum(ks[i] for i in grammar_rows)

    def record_refusal(self, reason: str) -> None:
        self.refusals += 1
        key = reason.split(":")[0][:80]
        self.refusal_reasons[key] = self.refusal_reasons.get(key, 0) + 1

    def record_draft_times(self, tree_s: float, lookup_s: float, wait_s: float = 0.0,
                           gap_s: float = float("inf"), first: bool = False, resyncs: int = 0) -> None:
        """Split the wait: the draft's tree still running when the Step arrived (its tree took
        longer than the `gap_s` between the previous reply and this Step), its lookup, and the
        rest, the hand-off (transport, encoding, decoding). A round that brings requests their
        first speculation waits for the draft's prefill and first drafts instead: `first`; when
        it brought the draft back in sync with `resyncs` requests, that wait is the resync's too."""
        self.draft_tree_s += tree_s
        self.draft_lookup_s += lookup_s
        if resyncs:
            self.resyncs += resyncs
            self.resync_s += wait_s
        if first:
            self.first_wait_s += wait_s
            return
        overrun = max(0.0, tree_s - gap_s)
        self.draft_overrun_s += min(overrun, wait_s)
        self.handoff_s += max(0.0, wait_s - lookup_s - overrun)

    def record_health(self, h) -> None:
        self.draft_pool_used, self.draft_pool_size = h.pool_used, h.pool_size
        self.draft_prefix_cached = h.pool_cached
        self.draft_prefill_tokens, self.draft_prefill_reused = h.prefill_computed, h.prefill_reused
        self.draft_rejected_messages = h.rejected
        self.draft_first_predrafted, self.draft_first_missed = h.first_predrafted, h.first_missed
        if h.backup == "neural":
            self.backup_neural += 1
        elif h.backup == "fast":
            self.backup_fast += 1
        if h.backup_threshold:
            self.backup_threshold = h.backup_threshold

    def record_plan(self, plan) -> None:
        """The draft's live schedule, its estimates, and what the time-sized budget predicted."""
        if plan.fanout:
            self.fanout = list(plan.fanout)
        if plan.power > 0:
            self.accept_rate_est, self.power_est = plan.accept_rate, plan.power
        if plan.predicted_hit > 0:
            self.predicted_hit, self.tree_pred_ms = plan.predicted_hit, plan.tree_pred_s * 1e3

    def snapshot(self) -> dict:
        d = dict(self.__dict__)
        d["refusal_reasons"] = dict(self.refusal_reasons)
        d["config"] = dict(self.config, fanout=list(self.fanout), backup_threshold=self.backup_threshold)
        d["plain_reasons"] = dict(self.plain_reasons)
        d["k_steps"] = dict(self.k_steps)
        d["auto_k"] = {b: dict(v) for b, v in self.auto_k.items()}
        d["modes"] = {b: dict(v) for b, v in self.modes.items()}
        d["target_ms"] = {b: dict(v) for b, v in self.target_ms.items()}
        d["target_prior"] = {t: dict(v) for t, v in self.target_prior.items()}
        d["mode_steps"] = dict(self.mode_steps)
        d["target_threads"] = {kind: dict(v) for kind, v in self.target_threads.items()}
        d["resync_ms_per_request"] = 1e3 * self.resync_s / self.resyncs if self.resyncs else None
        d["accept_length"] = self.emitted / self.spec_rounds if self.spec_rounds else None
        d["cache_hit_rate"] = self.hits / self.lookups if self.lookups else None
        d["partial_rate"] = self.partial_answers / self.lookups if self.lookups else None
        d["partial_depth_mean"] = self.partial_drafted / self.partial_answers if self.partial_answers else None
        d["draft_wait_ms_per_step"] = 1e3 * self.draft_wait_s / self.steps if self.steps else None
        d["handoff_ms_per_step"] = 1e3 * self.handoff_s / self.steps if self.steps else None
        d["draft_tree_ms_per_step"] = 1e3 * self.draft_tree_s / self.steps if self.steps else None
        d["draft_overrun_ms_per_step"] = 1e3 * self.draft_overrun_s / self.steps if self.steps else None
        d["verify_ms_per_step"] = 1e3 * self.verify_s / self.steps if self.steps else None
        d["round_ms_per_step"] = 1e3 * self.round_s / self.steps if self.steps else None
        return d


RUNNING = SSDStats()
