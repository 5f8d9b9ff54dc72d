"""Which captured CUDA graph a draft forward replays: its (tokens, read slots) bucket, or why none.

A CUDA graph replays fixed shapes, so a draft forward of n query tokens whose groups read r KV
slots in all (draft_batch.py, slot_attention.py) runs in the smallest captured bucket of at least
n tokens and at least r read slots, padded (draft_graphs.py pads). Tree steps, the forwards that repeat K times a
round, have n = requests x branches (every request of a round shares the tree's schedule, so B
branches each); the token buckets are the products of the request buckets (1, 2, 4, 8, ...) and
the branch counts the fan-out planner can choose, so a whole tree step pads only its requests.
Read widths are powers of two: padding at most doubles the attended slots, which cost far less
than the weights every step reads. Forwards outside every bucket (a long prefill, a huge batch)
run eagerly; each fallback is counted by reason and logged the 1st, 2nd, 4th, 8th, ... time.

Everything here is pure (no CUDA), so the choices are unit-tested on a CPU.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Iterable, Optional, Sequence

logger = logging.getLogger(__name__)

# Branch counts B a tree may have: the planner's budgets (tree_budget.py) come from 1..3(K+1);
# between the listed ones a tree pads up to the next.
BRANCH_BUCKETS = (1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48)
MIN_READ = 64  # the narrowest read bucket (slots)
MAX_MASK_ELEMENTS = 1 << 24  # a graph's static mask is tokens x read slots: at most 16M entries

# Why a forward ran eagerly (GraphStats.eager keys).
NOT_CUDA = "not on CUDA"
TOO_MANY_TOKENS = "more tokens than the largest bucket"
TOO_WIDE = "more read slots than the largest bucket"
TOO_LARGE = "mask too large for a graph"
CAPTURE_FAILED = "capture failed"
GRAPH_CAP = "graph cap reached"
DISABLED = "graphs disabled"
NO_LOGITS = "prefill (no logits wanted)"


def request_buckets(max_requests: int) -> list[int]:
    """1, 2, 4, 8, ... up to the first power of two >= max_requests."""
    if max_requests < 1:
        raise ValueError(f"max_requests={max_requests} < 1")
    out, r = [], 1
    while True:
        out.append(r)
        if r >= max_requests:
            return out
        r *= 2


def token_buckets(max_requests: int, branches: Iterable[int] = BRANCH_BUCKETS,
                  max_tokens: int = 2048) -> list[int]:
    """Sorted token counts to capture: requests x branches for every request bucket and branch
    count, capped at max_tokens (which is itself a bucket when some product exceeds it)."""
    if max_tokens < 1:
        raise ValueError(f"max_tokens={max_tokens} < 1")
    sizes = {r * b for r in request_buckets(max_requests) for b in branches if r * b <= max_tokens}
    if any(r * b > max_tokens for r in request_buckets(max_requests) for b in branches):
        sizes.add(max_tokens)
    return sorted(sizes)


def tree_step_tokens(requests: int, branches: int) -> int:
    """Query tokens of one tree step: every branch of every request advances one token."""
    return requests * branches


def smallest_at_least(n: int, sizes: Sequence[int]) -> Optional[int]:
    """The smallest of sorted `sizes` >= n, or None."""
    for s in sizes:
        if s >= n:
            return s
    return None


def read_bucket(r: int, max_read: int, min_read: int = MIN_READ) -> Optional[int]:
    """The power of two >= max(r, min_read) read slots, at most max_read (the pool's size, itself
    the last bucket); None past it."""
    if r > max_read:
        return None
    b = min_read
    while b < r:
        b *= 2
    return min(b, max_read)


@dataclass(frozen=True)
class Bucket:
    tokens: int
    read: int


@dataclass(frozen=True)
class Choice:
    bucket: Optional[Bucket]  # None: run eagerly, for `reason`
    reason: str = ""


def choose(n_tokens: int, n_read: int, sizes: Sequence[int], max_read: int,
           max_mask: int = MAX_MASK_ELEMENTS) -> Choice:
    """The bucket a forward of n_tokens queries over n_read distinct slots replays, or the
    reason it runs eagerly."""
    t = smallest_at_least(n_tokens, sizes)
    if t is None:
        return Choice(None, TOO_MANY_TOKENS)
    r = read_bucket(n_read, max_read)
    if r is None:
        return Choice(None, TOO_WIDE)
    if t * r > max_mask:
        return Choice(None, TOO_LARGE)
    return Choice(Bucket(t, r))


@dataclass
class GraphStats:
    """Replays, captures and eager fallbacks by reason; fallbacks are logged sparsely."""

    name: str = "draft"
    replays: int = 0
    captures: int = 0
    eager: dict = field(default_factory=dict)
    padded_tokens: int = 0  # query rows run only as padding (the cost of bucketing)

    def replayed(self, real: int, bucket_tokens: int) -> None:
        self.replays += 1
        self.padded_tokens += bucket_tokens - real

    def fell_back(self, reason: str) -> None:
        n = self.eager.get(reason, 0) + 1
        self.eager[reason] = n
        if n & (n - 1) == 0:  # the 1st, 2nd, 4th, 8th, ... time for this reason
            logger.info("%s CUDA graphs: eager forward (%s), %d time(s)", self.name, reason, n)

    def as_dict(self) -> dict:
        return {"replays": self.replays, "captures": self.captures, "eager": dict(self.eager),
                "padded_tokens": self.padded_tokens}
