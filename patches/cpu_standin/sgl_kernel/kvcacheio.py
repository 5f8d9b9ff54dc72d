"""``sgl_kernel.kvcacheio``: the one KV-copy wrapper SGLang 0.5.23 imports on CPU
(kernels/ops/kvcache/cache_move.py, used by speculative KV moves). Kernel in cache_ops.py."""

from __future__ import annotations

import torch

from . import cache_ops as _cache_ops  # noqa: F401  (registers the op)


def copy_all_layer_kv_cache_cpu(data_ptrs, strides, tgt_loc, src_loc) -> None:
    torch.ops.sgl_kernel.copy_all_layer_kv_cache_cpu(data_ptrs, strides, tgt_loc, src_loc)
