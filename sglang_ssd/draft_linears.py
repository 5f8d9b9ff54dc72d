"""A CPU draft's linear layers: int8, or each weight on the kernel measured fastest here.

The draft's precision never changes an output, only its acceptance; `--ssd-draft-dtype int8` loads
the draft in float32 and replaces its linear layers by PyTorch's dynamic int8 ones
(kernels/cpu_int8.py), any other dtype keeps its weights and routes each through the kernel this
CPU measured fastest for it (kernels/cpu_linear.py), the same choice SGLang's own layers get in
every CPU server of this package.
"""

from __future__ import annotations

import torch

from sglang_ssd.kernels import cpu_int8, cpu_linear

DTYPES = ("float32", "float16", "bfloat16", "int8")


def weights_dtype(dtype: str) -> torch.dtype:
    """The dtype the draft's weights load in (an int8 draft loads float32, then is quantized)."""
    return torch.float32 if dtype == "int8" else getattr(torch, dtype)


def prepare_linears(model: torch.nn.Module, dtype: str, device_type: str) -> None:
    if device_type != "cpu":
        return
    if dtype == "int8":
        cpu_int8.quantize_linears(model)
    else:
        cpu_linear.route_linears(model)
