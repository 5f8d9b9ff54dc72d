"""Automatic K: the speculation depth whose draft tree fits inside one target verification.

SSD hides the draft only while the tree for the next round is built before the target's verify
ends. A deeper tree proposes more tokens per round but costs draft time roughly in proportion to
K, and (on a compute-bound target) verify time too. The worker measures, per batch-size bucket and
per K, the verify time V(K) and the draft's tree time T(K); every `every` rounds it moves K one
step toward the depth with the best expected tokens per second among those whose tree fits:

    E(K) = (1 - a^(K+1)) / (1 - a)      tokens per round, a = per-token acceptance
    R(K) = max(V(K), T(K)) + h          seconds per round, h = hand-off and lookup (measured)

a is the maximum-likelihood estimate of the truncated geometric law of accepted counts. Depths not
measured yet are extrapolated: linearly from two measured depths, else the tree grows in
proportion to K and the verify stays flat (optimistic; the next measurement corrects it).
Measurements of depths not visited for a while age out, so an old verdict is revisited: with
only one depth measured, the controller first steps to a neighbour to learn the slope.
Each batch-size bucket remembers its own K: a server that alternates between light and heavy
load switches at once instead of re-learning.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Optional

AUTO_MAX_K = 8  # the deepest tree auto K may choose (and the KV SGLang reserves per round)
EVERY = int(os.environ.get("SGLANG_SSD_AUTO_K_EVERY", "32"))
DECAY = 0.99  # per round, for the acceptance estimate
WEIGHT = 0.2  # EWMA weight of a new timing
MAX_AGE = 16  # decisions after which a depth's timings are no longer trusted
MARGIN = 0.03  # a move must promise this much more throughput


@dataclass
class _Ewma:
    value: float = 0.0
    n: int = 0
    age: int = 0  # decisions since the last sample

    def add(self, x: float) -> None:
        self.value = x if self.n == 0 else (1 - WEIGHT) * self.value + WEIGHT * x
        self.n += 1
        self.age = 0

    @property
    def fresh(self) -> bool:
        return self.n > 0 and self.age <= MAX_AGE


@dataclass
class _Bucket:
    k: int
    verify: dict = field(default_factory=dict)  # K -> _Ewma seconds
    tree: dict = field(default_factory=dict)  # K -> _Ewma seconds
    rounds: int = 0  # rounds at `k` since the last decision


def expected_tokens(a: float, k: int) -> float:
    """Tokens per round (accepted drafts plus the target's own) at per-token acceptance a."""
    a = min(max(a, 0.0), 1.0 - 1e-9)
    return (1.0 - a ** (k + 1)) / (1.0 - a)


def _predict(samples: dict, k: int, proportional: bool) -> Optional[float]:
    """A timing at depth k: measured if fresh, else extrapolated from the fresh ones."""
    s = samples.get(k)
    if s is not None and s.fresh:
        return s.value
    pts = sorted((kk, e.value) for kk, e in samples.items() if e.fresh)
    if not pts:
        return None
    if len(pts) == 1:
        k0, v0 = pts[0]
        return v0 * k / k0 if proportional else v0
    n = len(pts)
    mx = sum(p[0] for p in pts) / n
    my = sum(p[1] for p in pts) / n
    var = sum((p[0] - mx) ** 2 for p in pts)
    slope = sum((p[0] - mx) * (p[1] - my) for p in pts) / var
    return max(0.0, my + slope * (k - mx))


class DepthController:
    """Chooses K for the next round. `auto=False`: K stays at `k_init` (the user fixed it)."""

    def __init__(self, k_init: int, k_max: int, auto: bool, every: int = EVERY, k_min: int = 1):
        if not 1 <= k_min <= k_init <= k_max:
            raise ValueError(f"need 1 <= k_min <= k_init <= k_max, got {k_min}, {k_init}, {k_max}")
        self.k, self.k_max, self.k_min, self.auto, self.every = k_init, k_max, k_min, auto, max(1, every)
        self._buckets: dict[int, _Bucket] = {}
        self._acc, self._rej = 0.0, 0.0
        self.overhead_s = 0.0  # h: wait beyond the tree's overrun (lookup, backup, transport)
        self.moves = 0

    @property
    def accept(self) -> float:
        """Per-token acceptance (0.5 until measured)."""
        n = self._acc + self._rej
        return self._acc / n if n > 0 else 0.5

    def observe(self, k: int, batch_size: int, accepted: list[int], verify_s: float,
                tree_s: float = 0.0, tree_k: int = 0, wait_s: float = 0.0) -> int:
        """One verified round at depth k; returns K for the next round.

        accepted: draft tokens accepted per speculated request (each <= k); tree_s: the draft's
        time for the tree this round's speculation came from, which it built at depth tree_k.
        """
        for j in accepted:
            self._acc = self._acc * DECAY + min(j, k)
            self._rej = self._rej * DECAY + (1.0 if j < k else 0.0)
        if not self.auto or batch_size < 1:
            return self.k
        b = self._bucket(batch_size)
        b.verify.setdefault(k, _Ewma()).add(verify_s)
        if tree_k >= 1 and tree_s > 0:
            b.tree.setdefault(tree_k, _Ewma()).add(tree_s)
        overrun = max(0.0, tree_s - verify_s) if tree_k == k else 0.0
        h = max(0.0, wait_s - overrun)
        self.overhead_s = h if self.overhead_s == 0 else 0.9 * self.overhead_s + 0.1 * h
        if b.k != self.k:  # the batch moved to another bucket: use what that bucket learned
            self.k = b.k
            b.rounds = 0
            return self.k
        b.rounds += 1
        if b.rounds >= self.every:
            b.rounds = 0
            self._decide(b)
        return self.k

    def score(self, b: _Bucket, k: int) -> Optional[tuple[float, bool]]:
        """(expected tokens per second, whether the tree fits inside the verify) at depth k."""
        v = _predict(b.verify, k, proportional=False)
        t = _predict(b.tree, k, proportional=True)
        if v is None or t is None:
            return None
        return expected_tokens(self.accept, k) / (max(v, t) + self.overhead_s + 1e-9), t <= v

    def _decide(self, b: _Bucket) -> None:
        for d in (b.verify, b.tree):
            for e in d.values():
                e.age += 1
        here = self.score(b, b.k)
        if here is None:
            return
        rate, fits = here
        best, best_rate = b.k, rate
        unknown = [k for k in (b.k - 1, b.k + 1) if self.k_min <= k <= self.k_max
                   and not (k in b.verify and b.verify[k].fresh)]
        if not fits:  # the target is waiting for the tree: shallower, whatever it costs
            best = max(self.k_min, b.k - 1)
        elif unknown and sum(e.fresh for e in b.verify.values()) < 2:
            # One verify timing says nothing about how the verify grows with K: measure a
            # neighbour (the shallower one first: it cannot overrun).
            k = unknown[0]
            s = self.score(b, k)
            if k < b.k or (s is not None and s[1]):
                best = k
        else:
            for k in (b.k - 1, b.k + 1):
                if not self.k_min <= k <= self.k_max:
                    continue
                s = self.score(b, k)
                if s is not None and s[1] and s[0] > best_rate * (1 + MARGIN):
                    best, best_rate = k, s[0]
        if best != b.k:
            self.moves += 1
        b.k = self.k = best

    def _bucket(self, batch_size: int) -> _Bucket:
        key = batch_size.bit_length()  # 1, 2-3, 4-7, 8-15, ...
        b = self._buckets.get(key)
        if b is None:
            b = self._buckets[key] = _Bucket(k=self.k)
        return b

    def table(self) -> dict:
        """Per bucket: its K and the timings behind it (ms), for the statistics."""
        out = {}
        for key, b in sorted(self._buckets.items()):
            lo = 1 << (key - 1)
            out[f"bs{lo}-{2 * lo - 1}"] = {
                "k": b.k,
                "verify_ms": {k: round(e.value * 1e3, 3) for k, e in sorted(b.verify.items())},
                "tree_ms": {k: round(e.value * 1e3, 3) for k, e in sorted(b.tree.items())},
            }
        return out
