"""Which target verify widths get CUDA graphs, and which width a round verifies at.

A verify forward of a batch of b requests at depth K runs K+1 tokens per request. The worker's
planners choose K every round (auto_k.py: 1..K_max when --speculative-num-steps is not given;
mode_planner.py: sync rounds at that K, plain rounds at K = 0, one token), so a target with
graphs for one width only replays them for some rounds and runs the others eagerly, which on a
GPU costs most of SSD's gain. The rule here: capture every width the planners may choose (K+1
for each K they may pick, and 1 when plain rounds can happen), for each batch bucket; a round
whose (b, K) has no graph verifies at the largest captured K below it when there is one (a
shallower speculation of the same tree is still exact: its first K tokens are a K-chain), else
eagerly, counted and logged (graph_buckets.GraphStats).

SGLang 0.5.23's graph runner captures one verify width, speculative_num_draft_tokens = K+1 (a
batch of another width runs eagerly: `can_run_graph` compares the widths), so on a target that
replays graphs the worker restricts automatic K to the captured depths (`VerifyGraphs.depths`)
and asks `choose` each round; plain rounds and batches past the largest captured one run eagerly,
counted. Pure (no CUDA): the worker applies it (see docs/guide.md, GPU section).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence

from sglang_ssd.graph_buckets import GraphStats, request_buckets, smallest_at_least

NO_WIDTH = "no captured width at or below K+1"
TOO_MANY_REQUESTS = "more requests than the largest batch bucket"


def capture_widths(k_max: int, auto_k: bool, k_fixed: Optional[int] = None, plain: bool = True) -> list[int]:
    """Sorted verify widths (tokens per request) to capture: K+1 for each K the planners may
    choose (1..k_max when K is automatic, else k_fixed), and 1 for plain rounds."""
    if k_max < 1:
        raise ValueError(f"k_max={k_max} < 1")
    if auto_k:
        ks = range(1, k_max + 1)
    else:
        k = k_max if k_fixed is None else k_fixed
        if not 1 <= k <= k_max:
            raise ValueError(f"k_fixed={k} outside [1, {k_max}]")
        ks = [k]
    widths = {k + 1 for k in ks}
    if plain:
        widths.add(1)
    return sorted(widths)


def graph_count(widths: Sequence[int], max_requests: int) -> int:
    """Graphs that capture_widths x the batch buckets make (each holds its own activations)."""
    return len(widths) * len(request_buckets(max_requests))


@dataclass(frozen=True)
class VerifyChoice:
    k: int  # the depth to verify at (may be below the planner's)
    batch_bucket: Optional[int]  # the padded batch a graph replays; None: eager
    reason: str = ""  # why eager ("" when a graph replays)

    @property
    def graphed(self) -> bool:
        return self.batch_bucket is not None


def choose_verify(k_wanted: int, batch_size: int, widths: Sequence[int], max_requests: int,
                  stats: Optional[GraphStats] = None, batch_buckets: Optional[Sequence[int]] = None) -> VerifyChoice:
    """The verify of a round the planners gave depth k_wanted (0: a plain round) for batch_size
    requests: the largest captured K <= k_wanted and the batch bucket, or eager at k_wanted.
    The batch buckets are the captured batch sizes (default: powers of two to max_requests)."""
    widths = sorted(widths)
    buckets = sorted(batch_buckets) if batch_buckets else request_buckets(max_requests)
    bucket = smallest_at_least(batch_size, buckets)
    below = [w - 1 for w in widths if w - 1 <= k_wanted and (w - 1 >= 1 or k_wanted == 0)]
    if bucket is None or not below:
        reason = TOO_MANY_REQUESTS if bucket is None else NO_WIDTH
        if stats is not None:
            stats.fell_back(reason)
        return VerifyChoice(k_wanted, None, reason)
    k = max(below)
    if stats is not None:
        stats.replayed(batch_size * (k + 1), bucket * (k + 1))
    return VerifyChoice(k, bucket)


def restrict_depths(ks: Sequence[int], widths: Sequence[int]) -> list[int]:
    """The depths a planner may explore when only captured widths are wanted: those of `ks`
    whose K+1 is captured (all of `ks` if none is, so a planner always has a choice)."""
    have = set(widths)
    out = [k for k in ks if k + 1 in have]
    return out or list(ks)


class VerifyGraphs:
    """The target's captured verify graphs as the worker sees them: the widths and batch sizes
    captured, the depths automatic K may choose, and each round's choice, counted."""

    def __init__(self, widths: Sequence[int], batch_sizes: Sequence[int]):
        if not widths or not batch_sizes:
            raise ValueError(f"captured widths {list(widths)} and batch sizes {list(batch_sizes)} must be non-empty")
        self.widths = sorted(set(widths))
        self.batch_sizes = sorted(set(batch_sizes))
        self.stats = GraphStats(name="target verify")

    def depths(self, k_max: int) -> list[int]:
        """The depths 1..k_max whose verify replays a graph (all of them when none does)."""
        return restrict_depths(range(1, k_max + 1), self.widths)

    def choose(self, k_wanted: int, batch_size: int) -> VerifyChoice:
        return choose_verify(k_wanted, batch_size, self.widths, self.batch_sizes[-1], self.stats,
                             batch_buckets=self.batch_sizes)
