"""One entry point per hot spot: Triton for CUDA tensors, the torch reference otherwise.

SGLANG_SSD_FORCE_TRITON=1 takes the Triton path for CPU tensors too, which only works under
TRITON_INTERPRET=1 (how the tests compare each kernel with its reference). The kernel modules
are imported on first use, so importing this one never touches Triton.
"""

from __future__ import annotations

import os
from typing import Sequence

import torch

from sglang_ssd.kernels.rejection import chain_accept_ref, saguaro_rescale_ref


def _use_triton(t: torch.Tensor) -> bool:
    return t.is_cuda or os.environ.get("SGLANG_SSD_FORCE_TRITON") == "1"


def chain_accept(p: torch.Tensor, q: torch.Tensor, drafts: torch.Tensor, u_accept: torch.Tensor,
                 u_residual: torch.Tensor, residual_q: torch.Tensor | None = None
                 ) -> tuple[torch.Tensor, torch.Tensor]:
    """rejection.chain_accept_ref's contract; the residual_q test hook always runs the reference."""
    if residual_q is None and _use_triton(p):
        from sglang_ssd.kernels.chain_accept_triton import chain_accept_triton
        return chain_accept_triton(p, q, drafts, u_accept, u_residual)
    return chain_accept_ref(p, q, drafts, u_accept, u_residual, residual_q)


def saguaro_rescale(q: torch.Tensor, top_n: torch.Tensor, c: float) -> torch.Tensor:
    """rejection.saguaro_rescale_ref's contract."""
    if _use_triton(q):
        from sglang_ssd.kernels.saguaro_triton import saguaro_rescale_triton
        return saguaro_rescale_triton(q, top_n, c)
    return saguaro_rescale_ref(q, top_n, c)


def fork_topf(glue_logits: torch.Tensor, spec: torch.Tensor, depth: Sequence[int]) -> torch.Tensor:
    """[B, K+1, max(depth)] fork candidates, -1 padded: forking.ranked_candidates per request."""
    from sglang_ssd.kernels import fork_triton
    if _use_triton(glue_logits):
        return fork_triton.fork_topf_triton(glue_logits, spec, depth)
    return fork_triton.fork_topf_ref(glue_logits, spec, depth)
