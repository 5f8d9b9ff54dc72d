"""SSD's counters on SGLang's Prometheus endpoint (`/metrics`, with `--enable-metrics`).

SGLang serves /metrics from a prometheus_client multiprocess directory that every scheduler writes
into; the SSD worker lives in a scheduler, so metrics it creates there appear next to SGLang's
own `sglang:*` series. Running totals are Counters (incremented by the change since the last
publish); live values are Gauges.
"""

from __future__ import annotations

from sglang_ssd.mode_planner import MODES
from sglang_ssd.stats import SSDStats

# name -> (stats field, help)
COUNTERS = {
    "ssd_rounds": ("rounds", "Request-rounds verified by the SSD worker (one per request per decode step)."),
    "ssd_spec_rounds": ("spec_rounds", "Request-rounds served with a speculation (not the plain path)."),
    "ssd_plain_rounds": ("plain_rounds", "Request-rounds served by the exact plain path (one token)."),
    "ssd_emitted_tokens": ("emitted", "Tokens emitted in speculated rounds (accepted drafts plus the target's token)."),
    "ssd_accepted_tokens": ("accepted", "Draft tokens accepted by the target."),
    "ssd_cache_lookups": ("lookups", "Speculation-cache lookups (rounds after a request's first)."),
    "ssd_cache_hits": ("hits", "Speculation-cache hits: the next speculation was pre-drafted."),
    "ssd_backup_neural_rounds": ("backup_neural", "Rounds whose cache misses the neural backup answered."),
    "ssd_backup_fast_rounds": ("backup_fast", "Rounds whose cache misses the fast (n-gram) backup answered."),
    "ssd_draft_wait_seconds": ("draft_wait_s", "Time the target waited for the draft's answer."),
    "ssd_handoff_seconds": ("handoff_s", "Waiting time not spent in the draft's lookup: transport and decoding."),
    "ssd_draft_tree_seconds": ("draft_tree_s", "Draft time spent pre-drafting speculation trees."),
    "ssd_draft_overrun_seconds": ("draft_overrun_s", "Waiting for a draft tree that outlasted the target's verify."),
    "ssd_partial_answers": ("partial_answers", "Hits answered from a draft tree stopped before it was done."),
    "ssd_fallback_steps": ("draft_failures", "Decode steps served without the draft (dead, late or restarting)."),
    "ssd_draft_restarts": ("draft_restarts", "Times the draft was restarted or reconnected."),
    "ssd_refusals": ("refusals", "Requests the draft refused (then served exactly without it)."),
    "ssd_rejected_messages": ("draft_rejected_messages", "Malformed or stale messages the draft refused."),
}
GAUGES = {
    "ssd_accept_length": ("accept_length", "Mean tokens emitted per speculated round."),
    "ssd_cache_hit_rate": ("cache_hit_rate", "Speculation-cache hits per lookup."),
    "ssd_draft_pool_used_tokens": ("draft_pool_used", "Draft KV slots in use by live requests."),
    "ssd_draft_prefix_cached_tokens": ("draft_prefix_cached", "Draft KV slots held only by its prefix cache."),
    "ssd_draft_prefill_tokens": ("draft_prefill_tokens", "Prompt tokens the draft computed since it started."),
    "ssd_draft_prefill_reused_tokens": ("draft_prefill_reused", "Prompt tokens the draft took from its prefix cache since it started."),
    "ssd_draft_first_predrafted_requests": ("draft_first_predrafted", "Requests whose first speculation the draft drafted during their prefill, since it started."),
    "ssd_speculation_depth": ("live_k", "K (draft tokens per speculation) of the next round; automatic unless --speculative-num-steps fixed it."),
    "ssd_backup_threshold": ("backup_threshold", "Adaptive backup's live b* (batch size from which misses get the fast backup)."),
}
# Per batch-size bucket and mode (mode_planner.py): labels bucket="bs4-7", mode="ssd"|"sync"|"plain".
MODE_GAUGES = {
    "ssd_round_mode": "1 for the kind of round the planner uses in this batch-size bucket, 0 for the others.",
    "ssd_mode_tokens_per_second": "Measured tokens per second per request of each mode's latest visit in this bucket.",
}


class SSDMetrics:
    def __init__(self, labels: dict[str, str]):
        from prometheus_client import Counter, Gauge  # after SGLang set PROMETHEUS_MULTIPROC_DIR

        names = list(labels)
        self.labels = labels
        self.counters = {n: Counter(f"sglang:{n}", h, labelnames=names) for n, (_, h) in COUNTERS.items()}
        self.gauges = {n: Gauge(f"sglang:{n}", h, labelnames=names, multiprocess_mode="mostrecent")
                       for n, (_, h) in GAUGES.items()}
        self.mode_gauges = {n: Gauge(f"sglang:{n}", h, labelnames=names + ["bucket", "mode"],
                                     multiprocess_mode="mostrecent") for n, h in MODE_GAUGES.items()}
        self._last: dict[str, float] = {}
        for c in self.counters.values():  # every series exists from the start, at 0
            c.labels(**labels)

    def publish(self, stats: SSDStats) -> None:
        snap = stats.snapshot()
        for name, (field, _) in COUNTERS.items():
            v = float(snap.get(field) or 0)
            delta = v - self._last.get(field, 0.0)
            if delta > 0:
                self.counters[name].labels(**self.labels).inc(delta)
            self._last[field] = v
        for name, (field, _) in GAUGES.items():
            v = snap.get(field)
            if v is not None:
                self.gauges[name].labels(**self.labels).set(float(v))
        for bucket, row in (snap.get("modes") or {}).items():
            for mode in MODES:
                self.mode_gauges["ssd_round_mode"].labels(**self.labels, bucket=bucket, mode=mode).set(
                    1.0 if row["mode"] == mode else 0.0)
            for mode, m in row["measured"].items():
                self.mode_gauges["ssd_mode_tokens_per_second"].labels(**self.labels, bucket=bucket, mode=mode).set(
                    float(m["tok_per_s"]))
