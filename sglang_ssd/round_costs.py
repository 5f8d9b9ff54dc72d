"""What the target's forwards cost on this machine, by batch size and width, as measured.

The planners decide from what rounds cost where they run, never from a guess carried over from
another CPU: on an avx512_bf16 EPYC a verify of K+1 = 5 tokens per request cost about one decode
step, on an AVX2-only one 2.4x (a plain round predicted there "as the K+1 verify" looked 2.4x
too slow, so plain rounds were never tried while SSD lost to them). So every target forward of a
decode round is recorded here by (batch-size bucket, width: K+1 tokens per request, 1 for a plain
decode step), and a cost is only predicted where it was measured: the median of the latest few
forwards at that width, or a linear interpolation between two measured widths of the bucket. A
width never measured around (a bucket's first plain step) is unknown, and the mode planner probes
it rather than guess. The worker feeds it (through RoundTiming); the mode planner and automatic K
read it.
"""

from __future__ import annotations

import statistics
from collections import deque
from typing import Optional

RECENT = 5  # forwards per (bucket, width) the median is taken over (contexts grow: old ones age out)


def bucket_of(batch_size: int) -> int:
    """1, 2-3, 4-7, 8-15, ...: the batch-size buckets every planner keys on."""
    return max(1, batch_size).bit_length()


class TargetCosts:
    def __init__(self, recent: int = RECENT):
        self.recent = recent
        self._seen: dict[int, dict[int, deque]] = {}  # bucket -> width -> latest seconds

    def observe(self, batch_size: int, width: int, seconds: float) -> None:
        if batch_size < 1 or width < 1 or seconds <= 0:
            return
        widths = self._seen.setdefault(bucket_of(batch_size), {})
        widths.setdefault(width, deque(maxlen=self.recent)).append(seconds)

    def measured(self, batch_size: int, width: int) -> Optional[float]:
        d = self._seen.get(bucket_of(batch_size), {}).get(width)
        return statistics.median(d) if d else None

    def forward(self, batch_size: int, width: int) -> Optional[float]:
        """The forward of `width` tokens per request: measured, or interpolated between the two
        measured widths around it in this bucket; None when nothing brackets it."""
        got = self.measured(batch_size, width)
        if got is not None:
            return got
        widths = sorted(self._seen.get(bucket_of(batch_size), {}))
        lo = [w for w in widths if w < width]
        hi = [w for w in widths if w > width]
        if not lo or not hi:
            return None
        a, b = lo[-1], hi[0]
        ta, tb = self.measured(batch_size, a), self.measured(batch_size, b)
        return ta + (tb - ta) * (width - a) / (b - a)

    def step(self, batch_size: int) -> Optional[float]:
        """A plain decode step (one token per request), or None before one was measured here."""
        return self.forward(batch_size, 1)

    def table(self) -> dict:
        """Per bucket, ms per forward at each measured width (for the statistics)."""
        out = {}
        for key, widths in sorted(self._seen.items()):
            lo = 1 << (key - 1)
            out[f"bs{lo}-{2 * lo - 1}"] = {w: round(1e3 * statistics.median(d), 3) for w, d in sorted(widths.items())}
        return out
