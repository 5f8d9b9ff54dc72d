"""Linear layers and the lm_head of several rows through oneDNN's prepacked weights (CPU-only).

Changes (SGLang 0.5.23), applied by sglang_ssd.patches.cpu_engine, so on every CPU server this
package starts (plain, STANDALONE and SSD alike):
- ``sglang.srt.layers.quantization.unquant.UnquantizedLinearMethod.process_weights_after_loading``
  (AFTER): a CPU float32/bfloat16 weight gets a oneDNN copy laid out for a few rows
  (kernels/cpu_linear.py), made at load time so SGLang's memory accounting sees it.
- ``...UnquantizedLinearMethod.apply`` (AROUND): two rows or more (any in bfloat16) go through it.
- ``sglang.srt.layers.logits_processor.LogitsProcessor._compute_lm_head`` (AROUND): the same for
  the plain (unquantized, no LoRA, no fp32-upcast) lm_head, packed on first use.

Why: torch's F.linear on CPU costs 2-3x more for the 2-8 rows of a verify (K+1 tokens) than for
one, where reading the weights once should cost the same; prefill and batched decode steps get
faster too. One float32 row (a batch-1 decode step) still runs SGLang's own F.linear; bfloat16
rows all take the pack (the same numbers as F.linear, ~2x faster). The copy costs the memory of
the weights once more. SGLANG_SSD_CPU_PACKED_LINEAR=0 turns it off (to measure).
"""

from __future__ import annotations

from sglang_ssd.kernels import cpu_linear

_APPLIED = False
_ATTR = "_ssd_packed_weight"


def _after_loading(result, self, layer, *args, **kwargs):
    weight = getattr(layer, "weight", None)
    if not getattr(layer, "use_intel_amx_backend", False) and cpu_linear.packable(weight):
        setattr(layer, _ATTR, cpu_linear.PackedWeight(weight))
    return result


def _apply(original, self, layer, x, bias=None, *args, **kwargs):
    pack = getattr(layer, _ATTR, None)
    if pack is None or args or kwargs or getattr(layer, "use_intel_amx_backend", False):
        return original(self, layer, x, bias, *args, **kwargs)
    return cpu_linear.packed_linear(x, layer.weight, bias, pack)


def _compute_lm_head(original, self, hidden_states, lm_head, embedding_bias=None, *args, **kwargs):
    if not (_plain_lm_head(self, lm_head) and embedding_bias is None and not args and set(kwargs) <= {"out"}
            and hidden_states.dtype == lm_head.weight.dtype and hidden_states.dim() == 2
            and hidden_states.shape[0] >= cpu_linear.MIN_ROWS[lm_head.weight.dtype]):
        return original(self, hidden_states, lm_head, embedding_bias, *args, **kwargs)
    pack = getattr(lm_head, _ATTR, None)
    if pack is None:
        pack = cpu_linear.PackedWeight(lm_head.weight)
        setattr(lm_head, _ATTR, pack)
    return cpu_linear.packed_linear(hidden_states, lm_head.weight, None, pack)


def _plain_lm_head(processor, lm_head) -> bool:
    """The lm_head the original computes as hidden @ weight.T in the weight's dtype (its plain
    branch): no LoRA, no quantized method, no fp32 upcast, no AMX or RL-policy branch."""
    from sglang.srt.layers.logits_processor import should_apply_lm_head_quant_method

    return (not hasattr(lm_head, "set_lora") and cpu_linear.packable(getattr(lm_head, "weight", None))
            and not should_apply_lm_head_quant_method(lm_head, getattr(lm_head, "quant_method", None))
            and not getattr(processor, "use_fp32_lm_head", False)
            and getattr(processor, "rl_on_policy_target", None) is None
            and not getattr(lm_head, "use_intel_amx_backend", False))


def apply() -> None:
    """Register the hooks (idempotent within a process); nothing when disabled or oneDNN is absent."""
    global _APPLIED
    if _APPLIED or not cpu_linear.enabled():
        return
    from sglang.srt.plugins.hook_registry import HookRegistry, HookType

    base = "sglang.srt.layers.quantization.unquant.UnquantizedLinearMethod"
    HookRegistry.register(f"{base}.process_weights_after_loading", _after_loading, HookType.AFTER)
    HookRegistry.register(f"{base}.apply", _apply, HookType.AROUND)
    HookRegistry.register("sglang.srt.layers.logits_processor.LogitsProcessor._compute_lm_head",
                          _compute_lm_head, HookType.AROUND)
    _APPLIED = True
