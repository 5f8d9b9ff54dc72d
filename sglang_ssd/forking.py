"""Which verification outcomes (k, t*) to pre-draft: the forks of one speculation.

At glue position j < K the target can only emit t* != x_{j+1} (the rejected draft token), so the
candidates are the draft's top-F_j tokens there with x_{j+1} excluded; at j = K (all accepted) the
bonus token's candidates are the plain top-F_K.
"""

from __future__ import annotations

import torch


def ranked_candidates(glue_logits: torch.Tensor, spec: list[int], depth: list[int]) -> list[list[int]]:
    """Per position j, the draft's best `depth[j]` candidates for t* (rejected token excluded).

    glue_logits is [K+1, V] (the distributions after t, x_1..x_j).
    """
    k = len(spec)
    assert glue_logits.shape[0] == k + 1 and len(depth) == k + 1
    width = min(max(depth) + 1, glue_logits.shape[1])
    top = torch.topk(glue_logits, width, dim=-1).indices.tolist()
    out = []
    for j in range(k + 1):
        rejected = spec[j] if j < k else None
        out.append([c for c in top[j] if c != rejected][: depth[j]])
    return out


def fork_candidates(glue_logits: torch.Tensor, spec: list[int], fanout: list[int]) -> list[tuple[int, int]]:
    """(j, c) pairs for one request, F_j of them at position j."""
    return [(j, c) for j, cands in enumerate(ranked_candidates(glue_logits, spec, fanout)) for c in cands]
