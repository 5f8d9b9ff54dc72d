"""The fast backup speculator: propose from the request's own context, at no draft cost.

Prompt lookup: find the latest earlier occurrence of the context's longest suffix (up to
`max_ngram` tokens) and propose what followed it. Deterministic, so verification stays exact.
"""

from __future__ import annotations

from typing import Sequence


def ngram_propose(context: Sequence[int], k: int, max_ngram: int = 4) -> list[int]:
    n_ctx = len(context)
    for n in range(min(max_ngram, n_ctx - 1), 0, -1):
        suffix = list(context[n_ctx - n:])
        for start in range(n_ctx - n - 1, -1, -1):
            if list(context[start:start + n]) == suffix:
                follow = list(context[start + n:start + n + k])
                if follow:
                    while len(follow) < k:
                        follow.append(follow[-1])
                    return follow
    last = context[-1] if n_ctx else 0
    return [last] * k
