"""What a round costs on this machine, as measured: the one cost model the worker's planners read.

The planners decide from what rounds cost where they run, never from a guess carried over from
another CPU: on an avx512_bf16 EPYC a verify of K+1 = 5 tokens per request cost about one decode
step, on an AVX2-only one 2.4x (a plain round predicted there "as the K+1 verify" looked 2.4x
too slow, so plain rounds were never tried while SSD lost to them). So, per batch-size bucket:

- every target forward of a decode round by width (K+1 tokens per request, 1 for a plain decode
  step): `forward`, `step` (plain decode) and `verify` (a speculated round's K+1 forward);
- every draft tree the round's speculation came from, by the depth it was built at: `tree`.

A cost is the median of the latest few measurements at that point (contexts grow: old ones age
out). Between two measured widths a target forward is interpolated; a width never measured around
(a bucket's first plain step) is unknown, and the mode planner probes it rather than guess. Only a
speculated depth never visited is extrapolated, for automatic K's "is the neighbour worth a
visit" (`verify`: linear in K over the measured speculated widths, flat from one; `tree`: linear,
proportional to K from one depth). The mode planner feeds every round in (ModePlanner.observe);
the mode planner (plain and sync predictions) and automatic K (verify and tree by K) read it.
The draft's own half of a round (its forward cost by tokens, the tree by branches, the backup,
the hit rate by budget) is measured where it runs, in the draft process (tree_budget.py), which
gets this model's verify with every Step.

Before a forward is measured anywhere near, a CPU server's prior answers (target_prior.py: the
target's linear layers timed at start per row count and thread count, before the draft runs),
scaled to this server's forwards by the median ratio of those measured to the prior: a sync
verify on the draft's cores too, or a plain step, is then predicted from the first rounds instead
of after the mode planner visited it (`predict`, `fastest`, `step_predicted`).

On a CPU server whose target borrows the draft's cores while the draft is idle (cpu_cores.py),
target forwards are also keyed by the torch threads they ran on: `speculating` is the count of
SSD rounds (the verify automatic K and the tree sizing read), a plain step is the fastest count
measured, and cpu_cores.ThreadChoice picks the count of idle-draft forwards from the same table.
"""

from __future__ import annotations

import statistics
from collections import deque
from typing import Optional

RECENT = 5  # measurements per (bucket, point) the median is taken over
FIT_POINTS = 64  # latest target forwards per thread count the cross-bucket line is fitted to


def bucket_of(batch_size: int) -> int:
    """1, 2-3, 4-7, 8-15, ...: the batch-size buckets every planner keys on."""
    return max(1, batch_size).bit_length()


def bucket_label(key: int) -> str:
    lo = 1 << (key - 1)
    return f"bs{lo}-{2 * lo - 1}"


class _Series:
    """The latest `recent` values per (bucket, point)."""

    def __init__(self, recent: int):
        self.recent = recent
        self.seen: dict[int, dict[int, deque]] = {}

    def add(self, batch_size: int, point: int, seconds: float) -> None:
        points = self.seen.setdefault(bucket_of(batch_size), {})
        points.setdefault(point, deque(maxlen=self.recent)).append(seconds)

    def at(self, batch_size: int, point: int) -> Optional[float]:
        d = self.seen.get(bucket_of(batch_size), {}).get(point)
        return statistics.median(d) if d else None

    def points(self, batch_size: int) -> list[int]:
        return sorted(self.seen.get(bucket_of(batch_size), {}))

    def table(self) -> dict:
        return {bucket_label(key): {p: round(1e3 * statistics.median(d), 3) for p, d in sorted(points.items())}
                for key, points in sorted(self.seen.items())}


def extrapolate(points: list[tuple[int, float]], x: int, proportional: bool) -> Optional[float]:
    """Least squares line through `points` at x; from one point, flat or proportional to x."""
    if not points:
        return None
    if len(points) == 1:
        x0, y0 = points[0]
        return y0 * x / x0 if proportional else y0
    n = len(points)
    mx = sum(p[0] for p in points) / n
    my = sum(p[1] for p in points) / n
    var = sum((p[0] - mx) ** 2 for p in points)
    if var == 0:
        return my * x / mx if proportional else my
    slope = max(0.0, sum((p[0] - mx) * (p[1] - my) for p in points) / var)  # more work never costs less
    return max(0.0, my + slope * (x - mx))


class RoundCosts:
    def __init__(self, recent: int = RECENT, speculating: int = 0, counts: tuple = ()):
        self.recent = recent
        self.speculating = speculating  # torch threads of speculated rounds' verifies (0: one count)
        self.counts = tuple(counts)  # every thread count a target forward may run on (() : one)
        self._target: dict[int, _Series] = {}  # threads -> (bucket, width) -> target forward seconds
        self._raw: dict[int, deque] = {}  # threads -> latest (batch size x width, seconds)
        self._tree = _Series(recent)  # (bucket, K) -> draft tree seconds
        self.prior: dict[int, list[tuple[int, float]]] = {}  # threads -> [(tokens, seconds)] (target_prior.py)

    def set_prior(self, prior: dict[int, dict[int, float]]) -> None:
        """The target's linear layers timed at start: {threads: {tokens per forward: seconds}}."""
        self.prior = {int(t): sorted((int(n), float(v)) for n, v in p.items()) for t, p in prior.items() if p}

    def _prior_at(self, threads: int, tokens: int) -> Optional[float]:
        """The prior at `tokens`: linear between the timed row counts, along the last two beyond."""
        pts = self.prior.get(threads)
        if not pts:
            return None
        if tokens <= pts[0][0] or len(pts) == 1:
            return pts[0][1]
        for (a, ta), (b, tb) in zip(pts, pts[1:]):
            if tokens <= b:
                return ta + (tb - ta) * (tokens - a) / (b - a)
        (a, ta), (b, tb) = pts[-2], pts[-1]
        return tb + max(0.0, (tb - ta) / (b - a)) * (tokens - b)

    def _prior_scale(self, threads: int) -> Optional[float]:
        """Measured over prior: the median over this count's latest forwards, else over every
        count's (None before any forward was measured)."""
        def ratios(t):
            return [sec / at for n, sec in self._raw.get(t, ()) if (at := self._prior_at(t, n))]

        r = ratios(threads) if threads in self.prior else []
        if not r:
            r = [x for t in self._raw if t in self.prior for x in ratios(t)]
        return statistics.median(r) if r else None

    def from_prior(self, threads: int, tokens: int) -> Optional[float]:
        """A forward of `tokens` tokens on `threads` threads by the prior, scaled to what this
        server's forwards measured; None without a prior for that count or a forward measured."""
        at = self._prior_at(threads, tokens)
        scale = self._prior_scale(threads) if at is not None else None
        return None if scale is None else at * scale

    def _series(self, threads: Optional[int]) -> Optional[_Series]:
        return self._target.get(self.speculating if threads is None else threads)

    # ---- fed by the mode planner, once per verified round --------------------------------------
    def observe(self, batch_size: int, width: int, seconds: float, threads: Optional[int] = None) -> None:
        """A target forward of `width` tokens per request took `seconds` on `threads` torch
        threads (None: the speculating count)."""
        if batch_size >= 1 and width >= 1 and seconds > 0:
            t = self.speculating if threads is None else threads
            self._target.setdefault(t, _Series(self.recent)).add(batch_size, width, seconds)
            self._raw.setdefault(t, deque(maxlen=FIT_POINTS)).append((batch_size * width, seconds))

    def observe_tree(self, batch_size: int, k: int, seconds: float) -> None:
        """The draft's tree for this round's speculation, built at depth k, took `seconds`."""
        if batch_size >= 1 and k >= 1 and seconds > 0:
            self._tree.add(batch_size, k, seconds)

    # ---- target forwards -------------------------------------------------------------------------
    def measured(self, batch_size: int, width: int, threads: Optional[int] = None) -> Optional[float]:
        s = self._series(threads)
        return s.at(batch_size, width) if s is not None else None

    def fastest_measured(self, batch_size: int, width: int, threads: Optional[int] = None) -> Optional[float]:
        """The fastest of the recent forwards at this point (None: none)."""
        s = self._series(threads)
        d = s.seen.get(bucket_of(batch_size), {}).get(width) if s is not None else None
        return min(d) if d else None

    def samples(self, batch_size: int, width: int, threads: Optional[int] = None) -> int:
        """How many recent measurements the median at this point is taken over."""
        s = self._series(threads)
        if s is None:
            return 0
        return len(s.seen.get(bucket_of(batch_size), {}).get(width, ()))

    def forward(self, batch_size: int, width: int, threads: Optional[int] = None) -> Optional[float]:
        """The forward of `width` tokens per request: measured, or interpolated between the two
        measured widths around it in this bucket; None when nothing brackets it."""
        got = self.measured(batch_size, width, threads)
        if got is not None:
            return got
        s = self._series(threads)
        widths = s.points(batch_size) if s is not None else []
        lo = [w for w in widths if w < width]
        hi = [w for w in widths if w > width]
        if not lo or not hi:
            return None
        a, b = lo[-1], hi[0]
        ta, tb = self.measured(batch_size, a, threads), self.measured(batch_size, b, threads)
        return ta + (tb - ta) * (width - a) / (b - a)

    def _line(self, threads: int, tokens: int, skip: Optional[int] = None) -> Optional[float]:
        """The line t = a + c x tokens through this thread count's latest forwards in every bucket,
        leaving out those of `skip` tokens (None with fewer than two distinct token counts)."""
        pts = [p for p in self._raw.get(threads, ()) if p[0] != skip]
        if len({n for n, _ in pts}) < 2:
            return None
        return extrapolate(pts, tokens, proportional=False)

    def line(self, threads: int, tokens: int) -> Optional[float]:
        """At `tokens` tokens per forward, the line through this thread count's latest forwards of
        other token counts (what the rest of the machine's forwards say this one should cost; None
        with fewer than two distinct token counts)."""
        return self._line(threads, tokens, skip=tokens)

    def predict(self, batch_size: int, width: int, threads: Optional[int] = None) -> Optional[float]:
        """A forward in a bucket that may not have measured it: forward() where it can, else the
        prior scaled to the forwards measured (from_prior), else the line in tokens per forward
        (batch size x width: a forward reads the weights once and computes per token) through this thread count's forwards in every bucket, else (a thread
        count measured at one token count only, e.g. plain steps at one batch size) another count's
        line scaled by the two counts' ratio where both were measured; None when nothing relates."""
        got = self.forward(batch_size, width, threads)
        if got is not None:
            return got
        t = self.speculating if threads is None else threads
        tokens = batch_size * width
        prior = self.from_prior(t, tokens)
        if prior is not None:
            return prior
        line = self._line(t, tokens)
        if line is not None or t not in self._raw:
            return line
        mine: dict[int, list] = {}
        for n, sec in self._raw[t]:
            mine.setdefault(n, []).append(sec)
        for other in self._raw:
            base = self._line(other, tokens) if other != t else None
            if base is None:
                continue
            ratios = [statistics.median(v) / at for n, v in mine.items()
                      if (at := self._line(other, n)) and at > 0]
            if ratios:
                return base * statistics.median(ratios)
        return None

    def fastest(self, batch_size: int, width: int, others: bool = False) -> Optional[float]:
        """predict() at the thread count that makes this forward cheapest (None: unpredictable);
        `others`: among the counts other than the speculating one only."""
        counts = [t for t in {*self._target, *self.prior} if not (others and t == self.speculating)]
        preds = [x for x in (self.predict(batch_size, width, t) for t in counts) if x is not None]
        return min(preds) if preds else None

    def step_predicted(self, batch_size: int) -> Optional[float]:
        """step(), else the fastest thread count's predict() of a decode step; None while a thread
        count a plain step may run on (`counts`) has never been measured at all: it may be the
        fastest (on the 2-core EPYC a decode step on both cores costs 0.5x the one core's that SSD
        rounds measure), so the planner probes plain rather than judge it by the slower count."""
        got = self.step(batch_size)
        if got is not None:
            return got
        if any(t not in self._raw and self.from_prior(t, batch_size) is None for t in self.counts):
            return None
        return self.fastest(batch_size, 1)

    def step(self, batch_size: int) -> Optional[float]:
        """A plain decode step (one token per request) at the fastest thread count measured, or
        None before one was measured here."""
        got = [x for x in (self.forward(batch_size, 1, t) for t in self._target) if x is not None]
        return min(got) if got else None

    def verify(self, batch_size: int, k: int) -> Optional[float]:
        """A speculated round's verify at depth k: measured or interpolated, else extrapolated over
        the speculated widths measured (a decode step is not a verify: it never anchors one)."""
        got = self.forward(batch_size, k + 1)
        if got is not None:
            return got
        s = self._series(None)
        widths = s.points(batch_size) if s is not None else []
        spec = [(w - 1, self.measured(batch_size, w)) for w in widths if w >= 2]
        return extrapolate(spec, k, proportional=False)

    # ---- draft trees -----------------------------------------------------------------------------
    def tree_measured(self, batch_size: int, k: int) -> Optional[float]:
        return self._tree.at(batch_size, k)

    def tree(self, batch_size: int, k: int) -> Optional[float]:
        """The draft's tree at depth k: measured, else extrapolated from the depths measured."""
        got = self.tree_measured(batch_size, k)
        if got is not None:
            return got
        pts = [(kk, self.tree_measured(batch_size, kk)) for kk in self._tree.points(batch_size)]
        return extrapolate(pts, k, proportional=True)

    # ---- statistics ------------------------------------------------------------------------------
    def table(self) -> dict:
        """Per bucket, ms per target forward at each measured width (on a split CPU server, per
        thread count: {"threads1": {...}, "threads2": {...}})."""
        if len(self._target) <= 1:
            return next(iter(self._target.values())).table() if self._target else {}
        return {f"threads{t}": s.table() for t, s in sorted(self._target.items())}

    def prior_table(self) -> dict:
        """The prior (ms by tokens per forward, per thread count) and its scale to the forwards measured."""
        return {f"threads{t}": {"ms": {n: round(1e3 * v, 3) for n, v in pts},
                                "scale": None if (sc := self._prior_scale(t)) is None else round(sc, 3)}
                for t, pts in sorted(self.prior.items())}

    def tree_table(self) -> dict:
        """Per bucket, ms per draft tree at each measured depth."""
        return self._tree.table()
