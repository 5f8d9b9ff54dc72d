"""KV-slot bookkeeping kernels of the CPU engine, in plain torch.

SGLang 0.5.23 dispatches these on CPU instead of its Triton kernels (see
sglang/srt/mem_cache/allocation.py, sglang/kernels/ops/speculative/cache_locs.py and
sglang/kernels/ops/kvcache/cache_move.py); the CUDA wheel of sgl_kernel lacks them, so a
CPU-only machine needs these stand-ins. Each mirrors the Triton reference next to its caller.
Batch sizes on CPU are small, so per-request Python loops are fine and easy to check.
"""

from __future__ import annotations

import ctypes

import numpy as np
import torch

from ._registry import define


def _exclusive_cumsum(lens: torch.Tensor) -> list[int]:
    out, acc = [], 0
    for n in lens.tolist():
        out.append(acc)
        acc += int(n)
    return out


def assign_req_to_token_pool(req_pool_indices, req_to_token, start_offset, end_offset, out_cache_loc, pool_len):
    """req_to_token[req_i, start_i:end_i] = the i-th run of out_cache_loc (runs packed back to back).

    Reference: triton ``assign_req_to_token_pool`` in srt/mem_cache/allocation.py.
    """
    starts, ends = start_offset.tolist(), end_offset.tolist()
    offs = _exclusive_cumsum(end_offset - start_offset)
    for i, req in enumerate(req_pool_indices.tolist()):
        n = int(ends[i]) - int(starts[i])
        if n > 0:
            req_to_token[req, starts[i] : ends[i]] = out_cache_loc[offs[i] : offs[i] + n].to(req_to_token.dtype)


def assign_extend_cache_locs(req_pool_indices, req_to_token, start_offset, end_offset, out_cache_loc, pool_len):
    """Inverse gather: the i-th run of out_cache_loc = req_to_token[req_i, start_i:end_i].

    Reference: triton ``assign_extend_cache_locs`` in kernels/ops/speculative/cache_locs.py.
    """
    starts, ends = start_offset.tolist(), end_offset.tolist()
    offs = _exclusive_cumsum(end_offset - start_offset)
    for i, req in enumerate(req_pool_indices.tolist()):
        n = int(ends[i]) - int(starts[i])
        if n > 0:
            out_cache_loc[offs[i] : offs[i] + n] = req_to_token[req, starts[i] : ends[i]].to(out_cache_loc.dtype)


def assign_draft_cache_locs_contiguous(req_pool_indices, req_to_token, seq_lens, out_cache_loc, pool_len, topk, num_steps):
    """out_cache_loc[i*w:(i+1)*w] = req_to_token[req_i, seq_len_i : seq_len_i + w], w = topk*num_steps.

    Reference: triton ``assign_draft_cache_locs_contiguous`` (cache_locs.py).
    """
    w = int(topk) * int(num_steps)
    for i, (req, s) in enumerate(zip(req_pool_indices.tolist(), seq_lens.tolist())):
        out_cache_loc[i * w : (i + 1) * w] = req_to_token[req, s : s + w].to(out_cache_loc.dtype)


def build_draft_decode_metadata(req_to_token, req_pool_indices, seq_lens, topk, num_steps, pool_len):
    """Per-candidate KV tables for multi-step draft decode: a new [bs*topk, pool_len] table whose
    row b*topk+j is request b's committed prefix req_to_token[req_b, :s_b] followed by candidate
    j's draft slots req_to_token[req_b, s_b + j*num_steps : s_b + (j+1)*num_steps]; entries past
    s_b + num_steps are left undefined (zero here).

    Reference: sgl-kernel's C++ ``build_draft_decode_metadata_cpu`` (used by
    IntelAMXMultiStepDraftBackend), the read pattern of triton ``generate_draft_decode_kv_indices``.
    """
    topk, num_steps = int(topk), int(num_steps)
    out = req_to_token.new_zeros((req_pool_indices.numel() * topk, int(pool_len)))
    for b, (req, s) in enumerate(zip(req_pool_indices.tolist(), seq_lens.tolist())):
        row = req_to_token[req]
        for j in range(topk):
            start = s + j * num_steps
            out[b * topk + j, :s] = row[:s]
            out[b * topk + j, s : s + num_steps] = row[start : start + num_steps]
    return out


def copy_all_layer_kv_cache(data_ptrs, strides, tgt_loc, src_loc):
    """For every KV buffer b (raw base pointer data_ptrs[b], row size strides[b] bytes), copy
    row src_loc[j] onto row tgt_loc[j]; all sources are read before any write (safe in place).

    Reference: triton ``copy_all_layer_kv_cache_tiled`` (kernels/ops/kvcache/cache_move.py). The op
    only receives raw addresses, so each buffer is viewed through ctypes as a uint8 [rows, stride]
    tensor that spans up to the largest row touched (the caller guarantees rows are in bounds).
    """
    if tgt_loc.numel() == 0:
        return
    tgt = tgt_loc.to(torch.int64)
    src = src_loc.to(torch.int64)
    rows = int(max(int(tgt.max()), int(src.max()))) + 1
    for ptr, stride in zip(data_ptrs.tolist(), strides.tolist()):
        stride = int(stride)
        raw = (ctypes.c_uint8 * (rows * stride)).from_address(int(ptr))
        view = torch.from_numpy(np.ctypeslib.as_array(raw)).view(rows, stride)
        view[tgt] = view[src].clone()


def fill_accept_out_cache_loc(accept_index, out_cache_loc, accept_out_cache_loc):
    """Compact: the k-th non-negative entry a of accept_index (row-major) gives
    accept_out_cache_loc[k] = out_cache_loc[a]; -1 entries are skipped.

    Reference: triton ``fill_accept_out_cache_loc`` (kernels/ops/speculative/eagle.py).
    """
    flat = accept_index.reshape(-1).to(torch.int64)
    src = flat[flat != -1]
    accept_out_cache_loc[: src.numel()] = out_cache_loc[src].to(accept_out_cache_loc.dtype)


def fill_bonus_tokens(accept_tokens, accept_lens, bonus_tokens, accept_stride):
    """bonus_tokens[i] = accept_tokens.flat[accept_stride*i + accept_lens[i] - 1] (last accepted).

    Reference: triton ``fill_bonus_tokens`` (kernels/ops/speculative/eagle.py).
    """
    bs = accept_lens.numel()
    idx = torch.arange(bs, dtype=torch.int64) * int(accept_stride) + accept_lens.to(torch.int64) - 1
    bonus_tokens[:bs] = accept_tokens.reshape(-1)[idx].to(bonus_tokens.dtype)


define(
    "assign_req_to_token_pool_cpu(Tensor req_pool_indices, Tensor(a!) req_to_token, Tensor start_offset,"
    " Tensor end_offset, Tensor out_cache_loc, int pool_len) -> ()",
    assign_req_to_token_pool,
)
define(
    "assign_extend_cache_locs_cpu(Tensor req_pool_indices, Tensor req_to_token, Tensor start_offset,"
    " Tensor end_offset, Tensor(a!) out_cache_loc, int pool_len) -> ()",
    assign_extend_cache_locs,
)
define(
    "assign_draft_cache_locs_contiguous_cpu(Tensor req_pool_indices, Tensor req_to_token, Tensor seq_lens,"
    " Tensor(a!) out_cache_loc, int pool_len, int topk, int num_steps) -> ()",
    assign_draft_cache_locs_contiguous,
)
define(
    "build_draft_decode_metadata_cpu(Tensor req_to_token, Tensor req_pool_indices, Tensor seq_lens,"
    " int topk, int num_steps, int pool_len) -> Tensor",
    build_draft_decode_metadata,
)
define(
    "copy_all_layer_kv_cache_cpu(Tensor data_ptrs, Tensor strides, Tensor tgt_loc, Tensor src_loc) -> ()",
    copy_all_layer_kv_cache,
)
define(
    "fill_accept_out_cache_loc_cpu(Tensor accept_index, Tensor out_cache_loc,"
    " Tensor(a!) accept_out_cache_loc) -> ()",
    fill_accept_out_cache_loc,
)
define(
    "fill_bonus_tokens_cpu(Tensor accept_tokens, Tensor accept_lens, Tensor(a!) bonus_tokens,"
    " int accept_stride) -> ()",
    fill_bonus_tokens,
)
