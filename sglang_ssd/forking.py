"""Which verification outcomes (k, t*) to pre-draft: the forks of one speculation.

At glue position j < K the target can only emit t* != x_{j+1} (the rejected draft token), so the
candidates are the draft's top-F_j tokens there with x_{j+1} excluded; at j = K (all accepted) the
bonus token's candidates are the plain top-F_K.
"""

from __future__ import annotations

import torch


def fork_candidates(glue_logits: torch.Tensor, spec: list[int], fanout: list[int]) -> list[tuple[int, int]]:
    """(j, c) pairs for one request; glue_logits is [K+1, V] (after t, x_1..x_j)."""
    k = len(spec)
    assert glue_logits.shape[0] == k + 1 and len(fanout) == k + 1
    width = min(max(fanout) + 1, glue_logits.shape[1])
    top = torch.topk(glue_logits, width, dim=-1).indices.tolist()
    out: list[tuple[int, int]] = []
    for j in range(k + 1):
        if fanout[j] <= 0:
            continue
        rejected = spec[j] if j < k else None
        picks = [c for c in top[j] if c != rejected][: fanout[j]]
        out.extend((j, c) for c in picks)
    return out
