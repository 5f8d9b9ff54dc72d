"""Answering before the tree is done: branches drafted d < K deep, completed by the fast backup.

The draft service looks for the worker's outcome between tree steps (draft_service.serve). Then
finishing the tree costs the worker (K - d) more tree steps of waiting for branches K deep;
answering at once serves the hit branch's d drafted tokens followed by K - d n-gram tokens (seldom
accepted, never inexact: a greedy row takes the target's argmax whatever was proposed, and an
n-gram token is a deterministic function of its context, so its q' row is one-hot at it). The
draft stops when a round served now is predicted to give more tokens per second than one that
waits, by MARGIN (50%: measured on tiny models, where tree steps and rounds are a few noisy
milliseconds, smaller margins cut trees that were better waited for).
"""

from __future__ import annotations

import os
from typing import Optional

import torch

from sglang_ssd.backup import ngram_propose
from sglang_ssd.qlaw import CompactQ

MARGIN = float(os.environ.get("SGLANG_SSD_PARTIAL_MARGIN", "1.5"))  # "inf": never stop a tree


def expected_tokens(accept: float, drafted: int) -> float:
    """Tokens a round emits from a speculation whose first `drafted` tokens follow the draft, at
    per-token acceptance `accept` (a backup tail counted as nothing): 1 + a + ... + a^d."""
    a = min(max(float(accept), 0.0), 1.0)
    return sum(a ** i for i in range(drafted + 1))


def acceptance_of(tokens: float, k: int) -> float:
    """The per-token acceptance a at which a speculation k deep emits `tokens` per round."""
    lo, hi = 0.0, 1.0
    for _ in range(40):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if expected_tokens(mid, k) < tokens else (lo, mid)
    return (lo + hi) / 2


def worth_stopping(done: int, k: int, step_s: float, cycle_s: float, hit_tokens: float) -> bool:
    """Whether to answer from branches `done` steps deep rather than run the other k - done steps
    (each `step_s`) while the worker waits, its round otherwise `cycle_s` long, a whole hit
    emitting `hit_tokens` per round (measured)."""
    if not 1 <= done < k or cycle_s <= 0 or step_s <= 0:
        return False
    a = acceptance_of(hit_tokens, k)
    now = expected_tokens(a, done) / cycle_s
    wait = expected_tokens(a, k) / (cycle_s + (k - done) * step_s)
    return now > MARGIN * wait


def complete(tokens: list[int], q: Optional[CompactQ], context: list[int], depth: int):
    """A branch of fewer than `depth` tokens continued by the n-gram backup from `context` (what
    precedes the branch); a sampled branch's q' gains a one-hot row per backup token."""
    pad = ngram_propose(list(context) + list(tokens), depth - len(tokens))
    if q is not None:
        cpu = torch.device("cpu")  # compact q' rows live on the CPU (qlaw.py)
        q = CompactQ(list(q.rows) + [(torch.tensor([t], dtype=torch.int64, device=cpu), torch.ones(1, device=cpu))
                                     for t in pad])
    return list(tokens) + pad, q
