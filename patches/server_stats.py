"""Patch: SSD's running totals in SGLang's internal state (/server_info -> internal_states).

Changes `SchedulerInternalStateController._add_speculative`
(sglang/srt/managers/scheduler_components/internal_state.py, sglang 0.5.23), an AFTER hook that
adds `state["ssd"]` (acceptance length, cache hit rate, draft wait time, ...) next to SGLang's own
`avg_spec_accept_length`, with `target_tokens_used`: target KV tokens held by requests (SGLang's
own "#token" figure: the pool minus free and evictable cache), so an operator can see it return
to its idle value. Why: that is where SGLang reports speculative statistics. Not CPU-only.
"""

from __future__ import annotations

TARGET = ("sglang.srt.managers.scheduler_components.internal_state."
          "SchedulerInternalStateController._add_speculative")


def _after(result, self, state):
    from sglang_ssd.stats import RUNNING

    if RUNNING.draft_pid is not None:
        state["ssd"] = RUNNING.snapshot()
        try:
            pool = self.scheduler.pool_stats_observer.get_pool_stats()
            state["ssd"]["target_tokens_used"] = int(pool.full_num_used)
        except AttributeError:  # a pool layout without this figure
            state["ssd"]["target_tokens_used"] = None
    return result


def apply() -> None:
    from sglang.srt.plugins.hook_registry import HookRegistry, HookType

    HookRegistry.register(TARGET, _after, HookType.AFTER)
