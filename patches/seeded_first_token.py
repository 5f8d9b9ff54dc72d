"""Patch: keep the pre-sampling logits of an SSD prefill's seeded requests, so the first token of a
request with `sampling_seed` is reproducible on every backend.

Changes `capture_pre_sample_logits` as called by `TpModelWorker.forward_batch_generation`
(sglang/srt/managers/tp_worker.py, sglang 0.5.23), an AFTER hook: when the SSD worker marked the
batch (`batch._ssd_seeded_rows`), it stores a copy of those rows' logits on the batch before
SGLang's sampler scales them in place. Why: SGLang seeds its sampler only under
--enable-deterministic-inference, which the CPU backend refuses, so without this the same seed
gives a different first token; the SSD worker then draws that token itself from the same
distribution with a seeded uniform (every later round is seeded already). Does nothing for
batches the SSD worker did not mark. Not CPU-only.
"""

from __future__ import annotations

TARGET = "sglang.srt.managers.tp_worker.capture_pre_sample_logits"


def _after(result, batch, forward_batch, logits_output):
    rows = getattr(batch, "_ssd_seeded_rows", None)
    if rows and logits_output is not None and logits_output.next_token_logits is not None:
        batch._ssd_first_logits = logits_output.next_token_logits[rows].clone()
    return result


def apply() -> None:
    from sglang.srt.plugins.hook_registry import HookRegistry, HookType

    HookRegistry.register(TARGET, _after, HookType.AFTER)
