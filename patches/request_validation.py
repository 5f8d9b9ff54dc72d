"""Patch: refuse requests that would crash a model (or the draft) with HTTP 400, naming the field.

Changes, in sglang 0.5.23 (applied in every server, with or without SSD; not CPU-only):
- `TokenizerManager._validate_one_request` (srt/managers/tokenizer_manager.py), BEFORE: every
  input token id must be an integer in [0, V), V = the target's vocabulary (the tokenizer's size
  when it has fewer ids than the padded embedding). Stock SGLang lets a negative or huge id reach
  the embedding lookup, which kills the scheduler, and silently embeds padding rows.
  An empty prompt (a tokenizer without BOS turns "" into no tokens) is refused too: it crashes
  the scheduler's extend forward.
- `GenerateReqInput._handle_parallel_sampling` (srt/managers/io_struct.py), AFTER: `n` must be an
  integer >= 1 (stock SGLang accepts n = 0).
Every entry point (/generate, /v1/completions with token prompts, /v1/chat/completions, batches)
goes through both; SGLang turns the ValueError into a 400 response. The checks are O(prompt
length) integer comparisons, done once per request.
"""

from __future__ import annotations

VALIDATE = "sglang.srt.managers.tokenizer_manager.TokenizerManager._validate_one_request"
PARALLEL = "sglang.srt.managers.io_struct.GenerateReqInput._handle_parallel_sampling"
MAX_N = 1024


def vocab_limit(tokenizer_manager) -> int:
    v = int(tokenizer_manager.model_config.vocab_size)
    tok = getattr(tokenizer_manager, "tokenizer", None)
    if tok is not None:
        try:
            v = min(v, len(tok))
        except TypeError:
            pass
    return v


def check_input_ids(input_ids, limit: int, field: str = "input_ids") -> None:
    if input_ids is None:
        return
    if len(input_ids) == 0:
        raise ValueError(f"{field} is empty: a prompt needs at least one token")
    for i, t in enumerate(input_ids):
        if isinstance(t, bool) or not isinstance(t, int):
            raise ValueError(f"{field}[{i}] = {t!r} is not an integer token id")
        if not 0 <= t < limit:
            raise ValueError(f"{field}[{i}] = {t} is outside the vocabulary [0, {limit})")


def check_n(n) -> None:
    if isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= MAX_N:
        raise ValueError(f"n = {n!r}: the number of samples must be an integer in [1, {MAX_N}]")


def _before_validate(self, obj, input_ids, *args, **kwargs):
    check_input_ids(input_ids, vocab_limit(self))
    return None


def _after_parallel(result, self, *args, **kwargs):
    check_n(self.parallel_sample_num)
    return result


def apply() -> None:
    from sglang.srt.plugins.hook_registry import HookRegistry, HookType

    HookRegistry.register(VALIDATE, _before_validate, HookType.BEFORE)
    HookRegistry.register(PARALLEL, _after_parallel, HookType.AFTER)
