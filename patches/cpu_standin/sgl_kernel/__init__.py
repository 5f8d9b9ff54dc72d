"""A pure-torch stand-in for the ``sgl_kernel`` package, for running SGLang 0.5.23 on a CPU-only
machine (CPU-only; never used on GPU).

Why: the PyPI ``sgl_kernel`` (sglang-kernel 0.4.10) is a CUDA build: importing it needs
libcuda.so.1, and it has none of the ``*_cpu`` ops SGLang's CPU engine calls. sglang_ssd.cpu_serve
puts this package's parent directory first on PYTHONPATH so ``import sgl_kernel`` finds it.

Scope: only what a plain decoding server and a speculative TARGET_VERIFY step reach on CPU
(KV-slot bookkeeping, KV moves, tree build / reconstruct / greedy verify, the per-candidate KV
tables of multi-step draft decode), with real implementations. It deliberately does NOT define
``torch.ops.sgl_kernel.convert_weight_packed``: SGLang takes that op as the sign of the Intel AMX
kernel library (srt/utils/common.py ``_is_intel_amx_backend_available``) and would then route
norms, activations, rotary embedding and attention to AMX kernels; without it those layers use
their torch-native paths.
"""

__version__ = "0.0.0+sglang_ssd_cpu_standin"

from .kvcacheio import copy_all_layer_kv_cache_cpu
from .speculative import (
    assign_draft_cache_locs_contiguous_cpu,
    assign_extend_cache_locs_cpu,
    assign_req_to_token_pool_cpu,
    build_draft_decode_metadata_cpu,
    build_tree_kernel_efficient_cpu,
    fill_accept_out_cache_loc_cpu,
    fill_bonus_tokens_cpu,
    reconstruct_indices_from_tree_mask,
    verify_tree_greedy_cpu,
)

__all__ = [
    "assign_draft_cache_locs_contiguous_cpu",
    "assign_extend_cache_locs_cpu",
    "assign_req_to_token_pool_cpu",
    "build_draft_decode_metadata_cpu",
    "build_tree_kernel_efficient_cpu",
    "copy_all_layer_kv_cache_cpu",
    "fill_accept_out_cache_loc_cpu",
    "fill_bonus_tokens_cpu",
    "reconstruct_indices_from_tree_mask",
    "verify_tree_greedy_cpu",
]
