"""Chain rejection sampling (rejection.chain_accept_ref) as one Triton program per batch row.

The row's K acceptance tests are one vector op; the residual draw then streams the chosen row of
p (and q) over V in blocks twice: once for the totals, once to count cumsum <= u * total.

Exactness: the reference's inverse CDF accumulates a sequential float64 cumsum, so the kernel
accumulates in float64 too and folds the running carry into each block's first element before
the block scan, so every partial sum is the reference's (carry + w_0) + w_1 + ... . Under
TRITON_INTERPRET the block scan is numpy's sequential cumsum and the outputs are bit-identical
(tests/test_kernels.py). On a GPU the block scan is a tree, so a partial sum can differ from the
sequential one in its last float64 bit; a draw can then differ only when u * total lies within
that rounding of a token boundary. The acceptance ratio uses div_rn because Triton's default
float32 division is approximate on NVIDIA GPUs.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl


@triton.jit
def _row_carry(w, offs, carry):
    """Sequential-order cumsum of block w continuing from carry, and the new carry."""
    c = tl.cumsum(tl.where(offs == 0, w + carry, w), 0)
    return c, tl.max(c, 0)  # weights are >= 0, so the last partial sum is the largest


@triton.jit
def _chain_accept_kernel(p_ptr, q_ptr, drafts_ptr, u_acc_ptr, u_res_ptr, n_acc_ptr, t_ptr,
                         K, V, BLOCK_K: tl.constexpr, BLOCK_V: tl.constexpr):
    b = tl.program_id(0).to(tl.int64)
    p_row0 = p_ptr + b * (K + 1) * V
    q_row0 = q_ptr + b * K * V

    ks = tl.arange(0, BLOCK_K)
    kmask = ks < K
    x = tl.load(drafts_ptr + b * K + ks, mask=kmask, other=0).to(tl.int64)
    px = tl.load(p_row0 + ks * V + x, mask=kmask, other=0.0)
    qx = tl.load(q_row0 + ks * V + x, mask=kmask, other=0.0)
    u = tl.load(u_acc_ptr + b * K + ks, mask=kmask, other=1.0)
    ratio = tl.where(qx > 0, tl.math.div_rn(px, tl.maximum(qx, 1e-30)), 0.0)
    rejected = kmask & ~(u < ratio)
    n_acc = tl.min(tl.where(rejected, ks, K), 0).to(tl.int64)

    p_row = p_row0 + n_acc * V
    q_row = q_row0 + n_acc * V
    q_len = tl.where(n_acc < K, V, 0)  # all accepted: the bonus draws from p itself

    offs = tl.arange(0, BLOCK_V)
    tot_r = tl.zeros((), tl.float64)
    tot_p = tl.zeros((), tl.float64)
    last_r = tl.zeros((), tl.int64)
    last_p = tl.zeros((), tl.int64)
    for start in range(0, V, BLOCK_V):
        idx = start + offs
        m = idx < V
        pv = tl.load(p_row + idx, mask=m, other=0.0)
        qv = tl.load(q_row + idx, mask=idx < q_len, other=0.0)
        r = tl.maximum(pv - qv, 0.0)
        _, tot_r = _row_carry(r.to(tl.float64), offs, tot_r)
        _, tot_p = _row_carry(pv.to(tl.float64), offs, tot_p)
        last_r = tl.maximum(last_r, tl.max(tl.where(r > 0, idx, 0), 0))
        last_p = tl.maximum(last_p, tl.max(tl.where(pv > 0, idx, 0), 0))

    # A rejection with an all-zero residual cannot happen in exact arithmetic; fall back to p.
    use_r = tot_r > 0
    total = tl.where(use_r, tot_r, tot_p)
    last = tl.where(use_r, last_r, last_p)
    q_len = tl.where(use_r, q_len, 0)
    target = tl.load(u_res_ptr + b).to(tl.float64) * total

    below = tl.zeros((), tl.int64)
    carry = tl.zeros((), tl.float64)
    for start in range(0, V, BLOCK_V):
        idx = start + offs
        m = idx < V
        pv = tl.load(p_row + idx, mask=m, other=0.0)
        qv = tl.load(q_row + idx, mask=idx < q_len, other=0.0)
        w = tl.maximum(pv - qv, 0.0).to(tl.float64)
        c, carry = _row_carry(w, offs, carry)
        below += tl.sum((m & (c <= target)).to(tl.int64), 0)

    tl.store(n_acc_ptr + b, n_acc)
    tl.store(t_ptr + b, tl.minimum(below, last))


def chain_accept_triton(p: torch.Tensor, q: torch.Tensor, drafts: torch.Tensor, u_accept: torch.Tensor,
                        u_residual: torch.Tensor, block_v: int = 1024) -> tuple[torch.Tensor, torch.Tensor]:
    """Same contract as rejection.chain_accept_ref (without the residual_q test hook)."""
    b, k1, v = p.shape
    k = k1 - 1
    dtype = torch.promote_types(p.dtype, q.dtype)  # the reference's p - q promotes the same way
    p = p.to(dtype).contiguous()
    q = q.to(dtype).contiguous()
    n_acc = torch.empty(b, dtype=torch.int64, device=p.device)
    t_star = torch.empty(b, dtype=torch.int64, device=p.device)
    if b:
        _chain_accept_kernel[(b,)](
            p, q, drafts.contiguous(), u_accept.contiguous(), u_residual.contiguous(), n_acc, t_star,
            k, v, BLOCK_K=triton.next_power_of_2(max(k, 1)),
            BLOCK_V=min(block_v, triton.next_power_of_2(v)))
    return n_acc, t_star
