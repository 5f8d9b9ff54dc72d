"""Sampling distributions, exactly as SGLang's sampler forms them, and seeded randomness.

`processed_probs` mirrors SGLang 0.5.23's torch sampler (srt/layers/sampler.py): softmax of
logits / temperature, then top-k, top-p (mass before the token > top_p is cut) and min-p
(relative to the top token), renormalised. Both the target (p) and the draft (q) use it, so a
sampled request's p is the distribution the target alone would sample from.

A request with `sampling_seed` is sampled by the Gumbel-max trick with noise that is a pure
function of (seed, position, token id), like SGLang's own seeded sampler: the token at position n
is argmax(log p_n + G_n). The target and the draft draw with the same G, so verification is a
plain equality test and the output is the same whatever the draft proposed, hit or miss, alone or
batched: reproducible, and distributed exactly as p (G_n are independent across positions).
"""

from __future__ import annotations

import functools
import hashlib
from typing import Sequence

import torch

SAMPLING_EPS = 1e-6


def is_greedy(temperature: float, top_k: int) -> bool:
    return top_k == 1 or temperature < SAMPLING_EPS


PARAMS = ("temperature", "top_k", "top_p", "min_p")


def param_tensors(items, device: torch.device | str = "cpu") -> dict:
    """processed_probs' parameters as [R] tensors, one row per item: anything with the four
    attributes (SGLang's SamplingParams, the wire's Sampling). Pass the logits' device."""
    return {name: torch.tensor([getattr(x, name) for x in items], device=device) for name in PARAMS}


def processed_probs(logits: torch.Tensor, temperature: torch.Tensor, top_k: torch.Tensor,
                    top_p: torch.Tensor, min_p: torch.Tensor) -> torch.Tensor:
    """[R, V] float32 probabilities; parameters are [R] tensors (top_k <= 0 means all).

    Rows without top-k / top-p / min-p are the plain softmax (SGLang's simple sampling case) and
    skip the sort over the vocabulary, the cost of every sampled draft step and verify row.
    The parameters follow the logits' device (a no-op when they are there already)."""
    v = logits.shape[-1]
    dev = logits.device
    temperature, top_k, top_p, min_p = (t.to(dev) for t in (temperature, top_k, top_p, min_p))
    probs = torch.softmax(logits.float() / temperature.float().clamp_min(SAMPLING_EPS).view(-1, 1), dim=-1)
    need = ((top_k > 0) & (top_k < v)) | (top_p < 1.0) | (min_p > 0.0)
    if not bool(need.any()):
        return probs
    rows = need.nonzero().view(-1)
    probs[rows] = _filtered(probs[rows], top_k[rows].to(torch.int64), top_p[rows].float(), min_p[rows].float())
    return probs


def _filtered(probs: torch.Tensor, top_k: torch.Tensor, top_p: torch.Tensor, min_p: torch.Tensor) -> torch.Tensor:
    """Top-k, then top-p (mass before the token > top_p is cut), then min-p, renormalised."""
    v = probs.shape[-1]
    srt, idx = probs.sort(dim=-1, descending=True)
    csum = torch.cumsum(srt, dim=-1)
    k = torch.where(top_k > 0, top_k, torch.full_like(top_k, v)).view(-1, 1)
    rank = torch.arange(v, device=probs.device).view(1, -1)
    srt = torch.where(rank >= k, torch.zeros_like(srt), srt)
    srt = torch.where((csum - srt) > top_p.view(-1, 1), torch.zeros_like(srt), srt)
    thresh = srt[:, :1] * min_p.view(-1, 1)
    srt = torch.where(srt < thresh, torch.zeros_like(srt), srt)
    out = torch.zeros_like(probs).scatter_(1, idx, srt)
    return out / out.sum(-1, keepdim=True)


def seeded_gumbel(seed: int, positions: Sequence[int], v: int,
                  device: torch.device | str = "cpu") -> torch.Tensor:
    """[len(positions), v] float64 Gumbel noise, a pure function of (seed, position, token id)."""
    return torch.stack([_gumbel_row(int(seed), int(pos), int(v)) for pos in positions]).to(device)


@functools.lru_cache(maxsize=64)
def _gumbel_row(seed: int, pos: int, v: int) -> torch.Tensor:
    """One position's noise; cached because a round's tree samples each position many times.
    Drawn on the CPU whatever the caller's device, so draft and target draw the same bits."""
    h = hashlib.blake2b(repr(("gumbel", seed, pos)).encode(), digest_size=8)
    g = torch.Generator(device="cpu").manual_seed(int.from_bytes(h.digest(), "little") & ((1 << 63) - 1))
    u = torch.rand(v, generator=g, dtype=torch.float64, device="cpu").clamp_(min=1e-300, max=1.0 - 2.0 ** -53)
    return u.log_().neg_().log_().neg_()


def gumbel_scores(probs: torch.Tensor, seed: int, positions: Sequence[int]) -> torch.Tensor:
    """log probs + G for rows that sample positions `positions` of a seeded request (-inf where
    probs is 0): the argmax is the seeded sample, the order ranks the likely alternatives."""
    return probs.double().log() + seeded_gumbel(seed, positions, probs.shape[-1], probs.device)


def gumbel_choice(probs: torch.Tensor, seed: int, positions: Sequence[int]) -> torch.Tensor:
    """[R] the seeded samples at `positions` from probs [R, V]."""
    return gumbel_scores(probs, seed, positions).argmax(dim=-1)
