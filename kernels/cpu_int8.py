"""A draft's linear layers in int8 on CPU, through PyTorch's own dynamic quantization (fbgemm/x86).

Why: the draft's precision never changes an output (the target verifies whatever is drafted),
only how often its guesses are accepted, and on a CPU a draft step is bound by reading the
weights. Dynamic int8 (weights quantized once per output channel, activations per call) reads a
quarter of float32's bytes through fbgemm's AVX2 / AVX-512 kernels: on a 2-core EPYC the 0.5B
Qwen draft's body took 8-14 ms per step for 1-5 rows against 33-65 ms for oneDNN's packed
float32 (bench/draft_precision.py measures step time and greedy agreement on the real pair).
"""

from __future__ import annotations

import warnings

import torch


def unavailable() -> str:
    """Why int8 linear layers cannot run here ("" when they can)."""
    engines = set(getattr(torch.backends.quantized, "supported_engines", ()))
    if not engines & {"x86", "fbgemm"}:
        return f"torch has no x86/fbgemm quantized engine (supported: {sorted(engines)})"
    return ""


def quantize_linears(model: torch.nn.Module) -> int:
    """Replace every torch.nn.Linear of a float32 CPU model by its dynamic-int8 version (in place);
    how many were replaced."""
    why = unavailable()
    if why:
        raise RuntimeError(f"int8 draft: {why}")
    from torch.ao.quantization import per_channel_dynamic_qconfig, quantize_dynamic

    engines = torch.backends.quantized.supported_engines
    torch.backends.quantized.engine = "x86" if "x86" in engines else "fbgemm"
    n = sum(1 for m in model.modules() if type(m) is torch.nn.Linear)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.ao's deprecation notice (torchao is not a dependency)
        quantize_dynamic(model, {torch.nn.Linear: per_channel_dynamic_qconfig}, dtype=torch.qint8, inplace=True)
    return n
