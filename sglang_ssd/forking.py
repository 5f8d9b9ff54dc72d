"""Which verification outcomes (k, t*) to pre-draft: the forks of one speculation.

At glue position j < K the target can only emit t* != x_{j+1} (the rejected draft token), so the
candidates are the draft's top-F_j tokens there with x_{j+1} excluded; at j = K (all accepted) the
bonus token's candidates are the plain top-F_K. Under a grammar only tokens it allows at a
reachable position are candidates; for a seeded request they are ranked by the Gumbel scores the
target will draw with.
"""

from __future__ import annotations

import torch

from sglang_ssd.draft_seq import Chain, DraftSeq
from sglang_ssd.grammar import accept_all, fill_masks, glue_states, mask_logits
from sglang_ssd.proposals import seeded_scores


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


def fork_chains(s: DraftSeq, g: torch.Tensor, fanout: list[int], depth: int, vocab_size: int):
    """One request's forks from its glue logits g [K+1, V]: (the ranked candidates per position,
    `depth` deep for the fan-out estimator; [(j, t*, the chain to pre-draft after it)] for the
    best fanout[j] at each position j)."""
    states = glue_states(s.matcher, s.spec) if s.matcher is not None else None
    if states is not None:  # rank only grammar-legal t* at reachable positions
        g = mask_logits(g, fill_masks(states, vocab_size, g.device))
    seeded = s.sampling is not None and s.sampling.seed is not None
    if seeded:
        g = seeded_scores(s.sampling, g, len(s.tokens) + 1)  # row j: the token after pending, x_1..x_j
    ranked = ranked_candidates(g, s.spec, [max(f, depth) for f in fanout])
    if states is not None:
        ranked = [[] if st is None or st.is_terminated() else cands for st, cands in zip(states, ranked)]
    if states is not None or seeded:  # never fork a token the target cannot emit
        ranked = [[c for c in cands if bool(torch.isfinite(g[j, c]))] for j, cands in enumerate(ranked)]
    forks, prefix = [], s.slot_tensor()  # one prefix for all of the request's branches
    for j, cands in enumerate(ranked):
        for c in cands[: fanout[j]]:
            m = None
            if states is not None:
                m = states[j].fork()
                if not accept_all(m, [c]):
                    m = None
            forks.append((j, c, Chain(prefix=prefix, own=s.glue_slots[: j + 1], first=c,
                                      first_pos=len(s.tokens) + j + 1, sampling=s.sampling, matcher=m)))
    return ranked, forks
