"""Patch: tell the SSD draft to free finished requests as soon as the scheduler goes idle.

Changes `Scheduler.on_idle` (sglang/srt/managers/scheduler.py, sglang 0.5.23), a BEFORE hook that
calls the SSD worker's `on_idle()` when nothing is running (before the idle sleeper parks the
scheduler, so it happens at once). Why: the worker learns that a
request finished only from its absence in the next batch, so after the last request of a burst the
draft would hold that request's KV until the next one arrives. Cheap: one check per idle poll, a
message only when the draft still holds requests. Not CPU-only.
"""

from __future__ import annotations

TARGET = "sglang.srt.managers.scheduler.Scheduler.on_idle"


def _before(self, *args, **kwargs):
    worker = getattr(self, "draft_worker", None)
    hook = getattr(worker, "on_idle", None)
    if (hook is not None and getattr(worker, "synced", None) and self.running_batch.is_empty()
            and self.chunked_req is None):
        hook()
    return None


def apply() -> None:
    from sglang.srt.plugins.hook_registry import HookRegistry, HookType

    HookRegistry.register(TARGET, _before, HookType.BEFORE)
