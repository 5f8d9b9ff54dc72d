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
    lookups: int = 0  # cache lookups (speculated rounds after the first of a request)
    hits: int = 0
    plain_rounds: int = 0
    steps: int = 0  # decode steps (batched rounds)
    draft_wait_s: float = 0.0  # worker time blocked on the draft's answer
    draft_tree_s: float = 0.0  # draft time spent pre-drafting (glue + tree)
    draft_lookup_s: float = 0.0
    draft_failures: int = 0  # decode steps served without the draft (dead, late, restarting)
    draft_restarts: int = 0
    refusals: int = 0  # requests the draft refused (then served without it), by reason below
    refusal_reasons: dict = field(default_factory=dict)
    draft_pid: Optional[int] = None
    fanout: list = field(default_factory=list)  # the live schedule F_0..F_K
    accept_rate_est: Optional[float] = None  # the draft's online estimates behind it
    power_est: Optional[float] = None

    def record_round(self, ks, hits, wait_s, plain) -> None:
        self.steps += 1
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

    def record_refusal(self, reason: str) -> None:
        self.refusals += 1
        key = reason.split(":")[0][:80]
        self.refusal_reasons[key] = self.refusal_reasons.get(key, 0) + 1

    def record_draft_times(self, tree_s: float, lookup_s: float) -> None:
        self.draft_tree_s += tree_s
        self.draft_lookup_s += lookup_s

    def record_plan(self, fanout, accept_rate: float, power: float) -> None:
        if fanout:
            self.fanout = list(fanout)
        if power > 0:
            self.accept_rate_est, self.power_est = accept_rate, power

    def snapshot(self) -> dict:
        d = dict(self.__dict__)
        d["refusal_reasons"] = dict(self.refusal_reasons)
        d["accept_length"] = self.emitted / self.spec_rounds if self.spec_rounds else None
        d["cache_hit_rate"] = self.hits / self.lookups if self.lookups else None
        d["draft_wait_ms_per_step"] = 1e3 * self.draft_wait_s / self.steps if self.steps else None
        return d


RUNNING = SSDStats()
