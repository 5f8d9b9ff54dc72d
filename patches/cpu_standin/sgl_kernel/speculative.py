"""``sgl_kernel.speculative``: the Python wrappers SGLang 0.5.23 imports on CPU.

Same names and argument names as the real wheel's sgl_kernel/speculative.py (SGLang passes
some by keyword, e.g. ``retrive_index=``); each forwards to ``torch.ops.sgl_kernel.<name>``,
whose pure-torch kernels live in cache_ops.py and tree_ops.py.
"""

from __future__ import annotations

import torch

from . import cache_ops as _cache_ops  # noqa: F401  (registers the ops)
from . import tree_ops as _tree_ops  # noqa: F401


def reconstruct_indices_from_tree_mask(
    tree_mask, verified_seq_len, positions, retrive_index, retrive_next_token,
    retrive_next_sibling, batch_size, draft_token_num,
) -> None:
    torch.ops.sgl_kernel.reconstruct_indices_from_tree_mask_cpu(
        tree_mask, verified_seq_len, positions, retrive_index, retrive_next_token,
        retrive_next_sibling, batch_size, draft_token_num,
    )


def verify_tree_greedy_cpu(
    predicts, accept_index, accept_token_num, candidates, retrive_index,
    retrive_next_token, retrive_next_sibling, target_predict,
) -> None:
    torch.ops.sgl_kernel.verify_tree_greedy_cpu(
        predicts, accept_index, accept_token_num, candidates, retrive_index,
        retrive_next_token, retrive_next_sibling, target_predict,
    )


def build_tree_kernel_efficient_cpu(
    parent_list, selected_index, verified_seq_len, tree_mask, positions, retrive_index,
    retrive_next_token, retrive_next_sibling, topk, depth, draft_token_num, tree_mask_mode,
) -> None:
    torch.ops.sgl_kernel.build_tree_kernel_efficient_cpu(
        parent_list, selected_index, verified_seq_len, tree_mask, positions, retrive_index,
        retrive_next_token, retrive_next_sibling, topk, depth, draft_token_num, int(tree_mask_mode),
    )


def assign_req_to_token_pool_cpu(req_pool_indices, req_to_token, start_offset, end_offset, out_cache_loc, pool_len) -> None:
    torch.ops.sgl_kernel.assign_req_to_token_pool_cpu(
        req_pool_indices, req_to_token, start_offset, end_offset, out_cache_loc, pool_len
    )


def assign_extend_cache_locs_cpu(req_pool_indices, req_to_token, start_offset, end_offset, out_cache_loc, pool_len) -> None:
    torch.ops.sgl_kernel.assign_extend_cache_locs_cpu(
        req_pool_indices, req_to_token, start_offset, end_offset, out_cache_loc, pool_len
    )


def assign_draft_cache_locs_contiguous_cpu(req_pool_indices, req_to_token, seq_lens, out_cache_loc, pool_len, topk, num_steps) -> None:
    torch.ops.sgl_kernel.assign_draft_cache_locs_contiguous_cpu(
        req_pool_indices, req_to_token, seq_lens, out_cache_loc, pool_len, topk, num_steps
    )


def fill_accept_out_cache_loc_cpu(accept_index, out_cache_loc, accept_out_cache_loc) -> None:
    torch.ops.sgl_kernel.fill_accept_out_cache_loc_cpu(accept_index, out_cache_loc, accept_out_cache_loc)


def fill_bonus_tokens_cpu(accept_tokens, accept_lens, bonus_tokens, accept_stride) -> None:
    torch.ops.sgl_kernel.fill_bonus_tokens_cpu(accept_tokens, accept_lens, bonus_tokens, accept_stride)


def build_draft_decode_metadata_cpu(req_to_token, req_pool_indices, seq_lens, topk, num_steps, pool_len):
    return torch.ops.sgl_kernel.build_draft_decode_metadata_cpu(
        req_to_token, req_pool_indices, seq_lens, topk, num_steps, pool_len
    )
