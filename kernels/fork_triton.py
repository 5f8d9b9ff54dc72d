"""Batched fork candidates: forking.ranked_candidates for a whole batch as one [B, K+1, D] tensor.

Row (b, j) holds the draft's best depth[j] tokens at glue position j with the rejected draft
token spec[b, j] excluded (none excluded at j = K), padded with -1 to D = max(depth).
Selection is one torch.topk of width D + 1 for both paths (the same call ranked_candidates
makes, so ties rank the same); the Triton kernel fuses the exclusion and compaction that the
torch path spells out as a cumsum and a scatter.
"""

from __future__ import annotations

from typing import Sequence

import torch
import triton
import triton.language as tl


def _ranked(glue_logits: torch.Tensor, spec: torch.Tensor, depth: Sequence[int]):
    """topk indices [B, K+1, W] and the token to exclude per row [B, K+1] (-1: none)."""
    b, k1, v = glue_logits.shape
    assert spec.shape == (b, k1 - 1) and len(depth) == k1
    top = torch.topk(glue_logits, min(max(depth) + 1, v), dim=-1).indices
    rejected = torch.cat([spec.to(top), torch.full_like(top[:, :1, 0], -1)], dim=1)
    return top, rejected


def fork_topf_ref(glue_logits: torch.Tensor, spec: torch.Tensor, depth: Sequence[int]) -> torch.Tensor:
    """[B, K+1, max(depth)] candidates, -1 padded. glue_logits [B, K+1, V]; spec [B, K]."""
    top, rejected = _ranked(glue_logits, spec, depth)
    d, w = max(depth), top.shape[-1]
    keep = top != rejected.unsqueeze(-1)
    slot = keep.cumsum(-1) - 1
    keep &= slot < torch.tensor(depth, device=top.device).view(1, -1, 1)
    out = torch.full((*top.shape[:2], max(d, w) + 1), -1, dtype=top.dtype, device=top.device)
    out.scatter_(2, torch.where(keep, slot, max(d, w)), torch.where(keep, top, -1))
    return out[..., :d]


@triton.jit
def _fork_kernel(top_ptr, rejected_ptr, depth_ptr, out_ptr, K1, W, D, BLOCK_W: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)  # (b, j) flattened
    ws = tl.arange(0, BLOCK_W)
    valid = ws < W
    top = tl.load(top_ptr + row * W + ws, mask=valid, other=-1)
    keep = valid & (top != tl.load(rejected_ptr + row))
    slot = tl.cumsum(keep.to(tl.int32), 0) - 1
    keep = keep & (slot < tl.load(depth_ptr + row % K1))
    tl.store(out_ptr + row * D + slot, top, mask=keep)


def fork_topf_triton(glue_logits: torch.Tensor, spec: torch.Tensor, depth: Sequence[int]) -> torch.Tensor:
    """Same contract as fork_topf_ref."""
    top, rejected = _ranked(glue_logits, spec, depth)
    b, k1, w = top.shape
    d = max(depth)
    out = torch.full((b, k1, d), -1, dtype=top.dtype, device=top.device)
    if b and d:
        depth_t = torch.tensor(depth, dtype=torch.int32, device=top.device)
        _fork_kernel[(b * k1,)](top.contiguous(), rejected.contiguous(), depth_t, out, k1, w, d,
                                BLOCK_W=triton.next_power_of_2(w))
    return out
