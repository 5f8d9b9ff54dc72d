"""Sampling distributions, exactly as SGLang's sampler forms them, and seeded uniforms.

`processed_probs` mirrors SGLang 0.5.23's torch sampler (srt/layers/sampler.py): softmax of
logits / temperature, then top-k, top-p (mass before the token > top_p is cut) and min-p
(relative to the top token), renormalised. Both the target (p) and the draft (q) use it, so a
sampled request's p is the distribution the target alone would sample from.
"""

from __future__ import annotations

import hashlib
from typing import Optional, Sequence

import torch

SAMPLING_EPS = 1e-6


def is_greedy(temperature: float, top_k: int) -> bool:
    return top_k == 1 or temperature < SAMPLING_EPS


def processed_probs(logits: torch.Tensor, temperature: torch.Tensor, top_k: torch.Tensor,
                    top_p: torch.Tensor, min_p: torch.Tensor) -> torch.Tensor:
    """[R, V] float32 probabilities; parameters are [R] tensors (top_k <= 0 means all)."""
    v = logits.shape[-1]
    probs = torch.softmax(logits.float() / temperature.float().clamp_min(SAMPLING_EPS).view(-1, 1), dim=-1)
    srt, idx = probs.sort(dim=-1, descending=True)
    csum = torch.cumsum(srt, dim=-1)
    k = torch.where(top_k > 0, top_k, torch.full_like(top_k, v)).view(-1, 1)
    rank = torch.arange(v, device=logits.device).view(1, -1)
    srt = torch.where(rank >= k, torch.zeros_like(srt), srt)
    srt = torch.where((csum - srt) > top_p.view(-1, 1), torch.zeros_like(srt), srt)
    thresh = srt[:, :1] * min_p.view(-1, 1)
    srt = torch.where(srt < thresh, torch.zeros_like(srt), srt)
    out = torch.zeros_like(probs).scatter_(1, idx, srt)
    return out / out.sum(-1, keepdim=True)


def seeded_uniforms(seed: Optional[int], key: Sequence[int], n: int,
                    device: torch.device | str = "cpu") -> torch.Tensor:
    """n uniforms in [0, 1): a pure function of (seed, key) when seeded, fresh randomness if not."""
    if seed is None:
        return torch.rand(n, device=device)
    h = hashlib.blake2b(repr((int(seed), tuple(int(x) for x in key))).encode(), digest_size=8)
    g = torch.Generator().manual_seed(int.from_bytes(h.digest(), "little") & ((1 << 63) - 1))
    return torch.rand(n, generator=g).to(device)
