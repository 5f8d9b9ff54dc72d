"""How long the requests of a batch take to finish under a plan: the term per-round rates miss.

A burst of requests ends when its last request does. A speculating round serves each request its
own expected tokens (its own acceptance), a plain round one token each; as requests finish, the
batch shrinks and its rounds get cheaper. On the real pair at T=0 (2-core EPYC, 4 requests of 48
tokens) sync rounds served 1.3x the tokens of plain ones, but the request the draft predicted worst
made 2 tokens a 575 ms round against 7.7 a second in plain steps, and finished 3 s after the others:
the burst ran 0.87x plain decoding. Judged per request instead (serve plain while any request
would gain less than in a plain step), a batch at T=0.7 whose three fast requests were about to
finish was held in plain steps that slowed them down more than the slow one gained.

So the planner compares two futures of the batch, each simulated to its end from the rounds
measured: every round in its bucket's mode (`keep`), or plain rounds until the first request
leaves and then the buckets' modes (`plain_first`). Rounds are jumped from one departure to the
next (a batch of n requests costs O(n^2)).
"""

from __future__ import annotations

import math
from typing import Callable, Optional

# A round's cost and its tokens for a batch of n requests: (seconds, speculating) or None (unknown)
RoundOf = Callable[[int], Optional[tuple[float, bool]]]


def finish_s(remaining: list[float], tokens: list[float], round_of: RoundOf,
             plain_step: Callable[[int], Optional[float]], plain_first: bool = False) -> Optional[float]:
    """Seconds until every request has its `remaining` tokens, each speculating round serving a
    request `tokens` (its expected tokens per round) and a plain one 1; `round_of(n)` the round a
    batch of n requests is served by, `plain_step(n)` a plain round's cost. `plain_first`: plain
    rounds until the first request leaves. None when a cost is unknown."""
    left = [(r, e) for r, e in zip(remaining, tokens) if r > 0]
    total, first = 0.0, plain_first
    while left:
        n = len(left)
        if first:
            step = plain_step(n)
            if step is None:
                return None
            cost, spec = step, False
        else:
            got = round_of(n)
            if got is None:
                return None
            cost, spec = got
        per = [max(e, 1.0) if spec else 1.0 for _, e in left]
        rounds = min(math.ceil(r / p) for (r, _), p in zip(left, per))
        total += rounds * cost
        left = [(r - rounds * p, e) for (r, e), p in zip(left, per) if r - rounds * p > 0]
        first = False
    return total
