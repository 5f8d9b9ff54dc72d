"""Saguaro rescale (rejection.saguaro_rescale_ref) as one Triton program per row.

The top-n selection stays with torch.topk: a per-row select over the whole vocabulary inside
Triton would need a sort or radix select, and only torch.topk's own tie-breaking makes the
chosen set equal to the reference's when probabilities tie. The kernel fuses the rest (scale,
row sum, normalise) into two streaming passes over V, in float32 (processed_probs' dtype); the row sum is a tree
reduction, so the output equals the reference up to float rounding, not bit for bit.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from sglang_ssd.kernels.rejection import saguaro_top


@triton.jit
def _scaled(q_ptr, top_ptr, n_top, c, idx, V, N_TOP: tl.constexpr):
    """q over block idx with the row's first n_top top tokens multiplied by c."""
    ns = tl.arange(0, N_TOP)
    top = tl.load(top_ptr + ns, mask=ns < n_top, other=-1)
    hit = tl.max((idx[:, None] == top[None, :]).to(tl.int32), 1)
    q = tl.load(q_ptr + idx, mask=idx < V, other=0.0).to(tl.float32)
    return q * tl.where(hit > 0, c, 1.0)


@triton.jit
def _saguaro_kernel(q_ptr, top_ptr, top_n_ptr, out_ptr, c, V, N_MAX,
                    N_TOP: tl.constexpr, BLOCK_V: tl.constexpr):
    r = tl.program_id(0).to(tl.int64)
    q_row = q_ptr + r * V
    top_row = top_ptr + r * N_MAX
    n_top = tl.minimum(tl.load(top_n_ptr + r), N_MAX)
    offs = tl.arange(0, BLOCK_V)
    total = tl.zeros((BLOCK_V,), tl.float32)
    for start in range(0, V, BLOCK_V):
        total += _scaled(q_row, top_row, n_top, c, start + offs, V, N_TOP)
    denom = tl.sum(total, 0)
    for start in range(0, V, BLOCK_V):
        idx = start + offs
        out = _scaled(q_row, top_row, n_top, c, idx, V, N_TOP) / denom
        tl.store(out_ptr + r * V + idx, out.to(out_ptr.dtype.element_ty), mask=idx < V)


def saguaro_rescale_triton(q: torch.Tensor, top_n: torch.Tensor, c: float, block_v: int = 1024) -> torch.Tensor:
    """Same contract as rejection.saguaro_rescale_ref."""
    sel = saguaro_top(q, top_n, c)
    if sel is None:
        return q
    n_max, top = sel
    r, v = q.shape
    q = q.contiguous()
    top = top.contiguous()
    out = torch.empty_like(q)
    _saguaro_kernel[(r,)](q, top, top_n.to(device=q.device, dtype=torch.int64).contiguous(), out,
                          float(c), v, n_max, N_TOP=triton.next_power_of_2(n_max),
                          BLOCK_V=min(block_v, triton.next_power_of_2(v)))
    return out
