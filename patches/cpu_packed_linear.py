"""Linear layers and the lm_head through the kernel measured fastest on this CPU (CPU-only).

Changes (SGLang 0.5.23), applied by sglang_ssd.patches.cpu_engine, so in every CPU server this
package starts (plain, STANDALONE and SSD alike; STANDALONE's in-process draft too):
- ``sglang.srt.model_executor.model_runner.ModelRunner.load_model`` (AFTER): once the model is
  loaded (before SGLang measures free memory for its KV pool), every CPU float32/bfloat16/float16
  weight of an ``UnquantizedLinearMethod`` layer, and a plain untied lm_head, gets its measured
  kernel (kernels/cpu_linear.py). Where the plan is a oneDNN pack, the pack replaces the weight's
  memory (the parameter keeps its shape over a one-element placeholder); a weight that another
  parameter shares (tied embeddings) keeps its memory and a kernel that reads it in place.
- ``sglang.srt.layers.quantization.unquant.UnquantizedLinearMethod.apply`` (AROUND): such layers
  run their kernel.
- ``sglang.srt.layers.logits_processor.LogitsProcessor._compute_lm_head`` (AROUND): the same for
  an lm_head given a kernel at load (only plain ones are: no LoRA, no quantized method, no fp32
  upcast, no AMX or RL-policy branch).

Why: a verify forwards K+1 tokens per request, and which kernel multiplies a few rows at the cost
of one depends on the CPU (on an avx512_bf16 EPYC oneDNN's pack reads the weights once; on an
AVX2-only one it costs 2x for 5 rows and cannot pack bfloat16 at all); measuring it is the only
choice that holds everywhere, and the baselines get the same kernels as SSD.
SGLANG_SSD_CPU_LINEAR=torch (or SGLANG_SSD_CPU_PACKED_LINEAR=0) leaves SGLang's own F.linear.
"""

from __future__ import annotations

import logging

from sglang_ssd.kernels import cpu_linear

logger = logging.getLogger(__name__)

_APPLIED = False
_ATTR = "_ssd_linear"


def _after_load_model(result, runner, *args, **kwargs):
    model = getattr(runner, "model", None)
    if model is None or str(getattr(runner, "device", "cpu")) != "cpu":
        return result
    prepare_model(model)
    return result


def prepare_model(model) -> dict:
    """Give every eligible layer of a loaded SGLang model its kernel; counts for the log."""
    from sglang.srt.layers.quantization.unquant import UnquantizedLinearMethod

    shared = cpu_linear.shared_storages(model)
    processor = getattr(model, "logits_processor", None)
    done = {"layers": 0, "packed": 0, "freed_mb": 0.0}
    for mod in model.modules():
        weight = getattr(mod, "weight", None)
        if not cpu_linear.eligible(weight) or getattr(mod, "use_intel_amx_backend", False):
            continue
        linear = isinstance(getattr(mod, "quant_method", None), UnquantizedLinearMethod)
        lm_head = type(mod).__name__ == "ParallelLMHead" and processor is not None and _plain_lm_head(processor, mod)
        if not (linear or lm_head):
            continue
        plan = cpu_linear.plan_for(weight)
        if weight.data_ptr() in shared:
            plan = cpu_linear.keep_plan(plan)
        kernel = cpu_linear.LinearKernel(weight, plan)
        done["freed_mb"] += kernel.release(weight) / 2 ** 20
        setattr(mod, _ATTR, kernel)
        done["layers"] += 1
        done["packed"] += kernel.packed is not None
    if done["layers"]:
        logger.info("sglang-ssd: %d linear layers on their measured CPU kernels (%d oneDNN packs replacing "
                    "their weights, %.0f MB of duplicates avoided)", done["layers"], done["packed"], done["freed_mb"])
    return done


def _apply(original, self, layer, x, bias=None, *args, **kwargs):
    kernel = getattr(layer, _ATTR, None)
    if kernel is None or args or kwargs:
        return original(self, layer, x, bias, *args, **kwargs)
    return kernel(x, layer.weight, bias)


def _compute_lm_head(original, self, hidden_states, lm_head, embedding_bias=None, *args, **kwargs):
    kernel = getattr(lm_head, _ATTR, None)
    if (kernel is None or embedding_bias is not None or args or set(kwargs) - {"out"}
            or hidden_states.dim() != 2 or not _plain_lm_head(self, lm_head)):
        return original(self, hidden_states, lm_head, embedding_bias, *args, **kwargs)
    return kernel(hidden_states, lm_head.weight, None)


def _plain_lm_head(processor, lm_head) -> bool:
    """The lm_head the original computes as hidden @ weight.T in the weight's dtype (its plain
    branch): no LoRA, no quantized method, no fp32 upcast, no AMX or RL-policy branch."""
    from sglang.srt.layers.logits_processor import should_apply_lm_head_quant_method

    return (not hasattr(lm_head, "set_lora") and cpu_linear.eligible(getattr(lm_head, "weight", None))
            and not should_apply_lm_head_quant_method(lm_head, getattr(lm_head, "quant_method", None))
            and not getattr(processor, "use_fp32_lm_head", False)
            and not getattr(processor, "use_fp32_lm_head_output", False)
            and getattr(processor, "rl_on_policy_target", None) is None
            and not getattr(lm_head, "use_intel_amx_backend", False))


def apply() -> None:
    """Register the hooks (idempotent within a process); nothing when forced to torch's F.linear."""
    global _APPLIED
    if _APPLIED or cpu_linear.forced_path() == "torch":
        return
    from sglang.srt.plugins.hook_registry import HookRegistry, HookType

    HookRegistry.register("sglang.srt.model_executor.model_runner.ModelRunner.load_model",
                          _after_load_model, HookType.AFTER)
    HookRegistry.register("sglang.srt.layers.quantization.unquant.UnquantizedLinearMethod.apply",
                          _apply, HookType.AROUND)
    HookRegistry.register("sglang.srt.layers.logits_processor.LogitsProcessor._compute_lm_head",
                          _compute_lm_head, HookType.AROUND)
    _APPLIED = True
