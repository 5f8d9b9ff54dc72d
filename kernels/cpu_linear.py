"""Linear layers of a few rows on CPU through oneDNN's prepacked weights (float32, bfloat16).

Why: a verify forwards K+1 tokens per request, and on CPU torch's F.linear (MKL sgemm) costs
2-3x more for 2-8 rows than for one (bench/cpu_gemm.py: Qwen2.5-1.5B's body, one core, 295 ms for
one row, 750 ms for five) although at these sizes the cost should be reading the weights once.
oneDNN's matmul over a weight reordered ahead for the batch size streams them once: five rows
cost what one does (~260 ms). So a round of K+1 tokens costs what the model costs.

In float32 one row stays on F.linear (the pack is tuned for several rows and ~10% slower there):
decode steps run exactly SGLang's own kernel. In bfloat16 F.linear is oneDNN's matmul already,
without the prepacked layout, and one row costs twice the pack's (the 0.5B draft: 106 vs 47 ms),
so every row count takes the pack. `linear_ref` is the contract the pack is tested against.
"""

from __future__ import annotations

import os

import torch
import torch.nn.functional as F

MIN_ROWS = {torch.float32: 2, torch.bfloat16: 1}  # fewer rows: F.linear
PACK_ROWS = 16  # the batch size oneDNN's weight layout is chosen for (5..64 rows measured fast)
DTYPES = (torch.float32, torch.bfloat16)


def available() -> bool:
    return torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_reorder_linear_weight")


def enabled() -> bool:
    """Available, and not turned off with SGLANG_SSD_CPU_PACKED_LINEAR=0 (to measure without it)."""
    return os.environ.get("SGLANG_SSD_CPU_PACKED_LINEAR", "1") != "0" and available()


def packable(weight: torch.Tensor) -> bool:
    """A plain dense CPU weight [out, in] of a dtype oneDNN's packed matmul takes."""
    return (available() and isinstance(weight, torch.Tensor) and weight.dim() == 2
            and weight.device.type == "cpu" and weight.dtype in DTYPES and weight.layout == torch.strided)


class PackedWeight:
    """A weight's oneDNN copy and the version of the weight it was made from (a weight changed in
    place, e.g. a weight update, is packed again on next use)."""

    def __init__(self, weight: torch.Tensor):
        self.weight = weight
        self._pack()

    def _pack(self) -> None:
        self.version = self.weight._version
        self.data_ptr = self.weight.data_ptr()
        self.packed = torch.ops.mkldnn._reorder_linear_weight(self.weight.detach().contiguous(), PACK_ROWS)

    def current(self, weight: torch.Tensor) -> torch.Tensor:
        if weight is not self.weight or weight._version != self.version or weight.data_ptr() != self.data_ptr:
            self.weight = weight
            self._pack()
        return self.packed


def linear_ref(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    return F.linear(x, weight, bias)


def packed_linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                  pack: PackedWeight | None) -> torch.Tensor:
    """linear_ref's contract; the packed matmul for MIN_ROWS[dtype] rows or more when `pack` is given
    and the input is a CPU tensor of the weight's dtype (anything else: F.linear)."""
    rows = x.numel() // max(x.shape[-1], 1)
    if (pack is None or rows < MIN_ROWS.get(weight.dtype, 1 << 62) or x.device.type != "cpu"
            or x.dtype != weight.dtype or (bias is not None and bias.dtype != weight.dtype)
            or torch.is_grad_enabled() and (x.requires_grad or weight.requires_grad)):
        return F.linear(x, weight, bias)
    x2 = x.reshape(rows, x.shape[-1]).contiguous()
    out = torch.ops.mkldnn._linear_pointwise(x2, pack.current(weight), bias, "none", [], "")
    return out.view(*x.shape[:-1], out.shape[-1])


def pack_linears(model: torch.nn.Module) -> int:
    """Route every torch.nn.Linear of `model` with a packable weight through packed_linear (the
    Hugging Face draft engine on CPU: its tree steps forward 5-60 rows); how many were."""
    n = 0
    for mod in model.modules():
        if type(mod) is torch.nn.Linear and packable(mod.weight):
            mod.forward = _PackedForward(mod, PackedWeight(mod.weight))
            n += 1
    return n


class _PackedForward:
    def __init__(self, mod: torch.nn.Linear, pack: PackedWeight):
        self.mod, self.pack = mod, pack

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return packed_linear(x, self.mod.weight, self.mod.bias, self.pack)
