"""Lossless verification of a sampled chain speculation, and Saguaro's proposal rescaling.

Torch references (they also serve CPU). Randomness comes in as uniforms so a kernel and its
reference can be compared bit for bit, and so a seeded request is reproducible.

Chain rule (any proposal q' is exact): accept x_{i+1} ~ q'_i with probability
min(1, p_i(x) / q'_i(x)); at the first rejection emit t* ~ norm(max(0, p_i - q'_i)); if all K are
accepted emit the bonus t* ~ p_K.
"""

from __future__ import annotations

import torch


def inverse_cdf(weights: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """Index drawn from unnormalised `weights` [R, V] with uniforms `u` [R] in [0, 1)."""
    c = torch.cumsum(weights.double(), dim=-1)
    total = c[:, -1:]
    target = u.double().view(-1, 1) * total
    idx = torch.searchsorted(c, target, right=True).view(-1)
    # Never land on a zero-weight token through rounding at the top end.
    last_nonzero = (weights > 0).to(torch.int64).cumsum(-1).argmax(-1)
    return torch.minimum(idx, last_nonzero)


def chain_accept_ref(p: torch.Tensor, q: torch.Tensor, drafts: torch.Tensor, u_accept: torch.Tensor,
                     u_residual: torch.Tensor, residual_q: torch.Tensor | None = None
                     ) -> tuple[torch.Tensor, torch.Tensor]:
    """k [B] (drafts accepted) and t* [B].

    p [B, K+1, V] target probabilities at positions 0..K; q [B, K, V] the proposal the drafts were
    sampled from; drafts [B, K]; u_accept [B, K], u_residual [B] uniforms in [0, 1).
    residual_q replaces q in the residual: only the tests use it, to show a wrong rule is caught.
    """
    b, k1, v = p.shape
    k = k1 - 1
    px = p[:, :k, :].gather(2, drafts.view(b, k, 1)).view(b, k)
    qx = q.gather(2, drafts.view(b, k, 1)).view(b, k)
    ratio = torch.where(qx > 0, px / qx.clamp_min(1e-30), torch.zeros_like(px))
    accepted = u_accept < ratio  # u < min(1, r)
    n_acc = torch.cumprod(accepted.to(torch.int64), dim=1).sum(dim=1)
    rows = torch.arange(b, device=p.device)
    p_at = p[rows, n_acc]  # [B, V]
    rq = q if residual_q is None else residual_q
    q_pad = torch.cat([rq, torch.zeros_like(rq[:, :1])], dim=1)
    residual = (p_at - q_pad[rows, n_acc]).clamp_min(0)
    # All accepted: the bonus comes from p itself (q_pad is zero there).
    # A rejection with an all-zero residual cannot happen in exact arithmetic; fall back to p.
    empty = residual.sum(-1) <= 0
    residual = torch.where(empty.view(-1, 1), p_at, residual)
    t_star = inverse_cdf(residual, u_residual)
    return n_acc, t_star


def saguaro_top(q: torch.Tensor, top_n: torch.Tensor, c: float):
    """(n_max, each row's top-n_max token ids [R, n_max]); None when nothing is rescaled. The
    reference and the kernel share this selection, so they scale the same tokens on ties."""
    r, v = q.shape
    n_max = int(top_n.max().item()) if r and c < 1.0 else 0
    if n_max <= 0:
        return None
    n_max = min(n_max, v)
    return n_max, torch.topk(q, n_max, dim=-1).indices


def saguaro_rescale_ref(q: torch.Tensor, top_n: torch.Tensor, c: float) -> torch.Tensor:
    """q' from q [R, V]: the top-`top_n` [R] tokens of each row scaled by C, then renormalised."""
    top = saguaro_top(q, top_n, c)
    if top is None:
        return q
    n_max, idx = top
    keep = torch.arange(n_max, device=q.device).view(1, -1) < top_n.view(-1, 1)
    scale = torch.ones_like(q)
    scale.scatter_(1, idx, torch.where(keep, torch.full_like(idx, 0, dtype=q.dtype) + c,
                                       torch.ones_like(idx, dtype=q.dtype)))
    out = q * scale
    return out / out.sum(-1, keepdim=True)
