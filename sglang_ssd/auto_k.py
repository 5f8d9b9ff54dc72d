"""Automatic K: the speculation depth whose draft tree fits inside one target verification.

SSD hides the draft only while the tree for the next round is built before the target's verify
ends. A deeper tree proposes more tokens per round but costs draft time roughly in proportion to
K, and on a compute-bound target the verify costs more too (not even monotonically: on a CPU a
3-token forward can be slower than a 5-token one, GEMM kernels differ by shape). So K is chosen
from measurements, per batch-size bucket: for each K visited, the means over its latest visit of
the round's wall time R(K) and the tokens emitted per request-round, and from the round cost model
every planner reads (round_costs.py: the latest target forwards and draft trees, per bucket) the
verify V(K) and the draft's tree T(K). Tokens per round are noisy over one visit, so E(K) shrinks the measured
mean toward the geometric law G(K) = (1 - a^(K+1)) / (1 - a) at the per-token acceptance a
measured over all rounds (worth N0 rounds); it still learns what the law misses (the backup's
share, hits in easy stretches). Every `every` rounds the controller moves K one step toward the
neighbour with the best throughput E/R (a neighbour whose tree would outlast the verify is
predicted with that wait: R grows by T - V); a tree that does not fit sends K down unless the
shallower tree, measured or predicted, serves fewer tokens per second (its round no longer waits
for the tree, but it proposes fewer tokens: on the real pair on a CPU, a K=4 tree overrunning a
248 ms verify by 20 ms still served 18 tokens/s against K=3's 16). A neighbour not measured
recently is visited when predicted better (or, when no neighbour is measured, when predicted
close): E = G, V and T extrapolated by the cost model from the depths measured (linear; with one
depth the tree grows in proportion to K and the verify stays flat). A bucket's first FAST_DECISIONS
decisions come every `every` // 4 rounds: a request of a few dozen tokens lasts about a dozen
rounds, and a depth found only after 32 would serve none of them; those early decisions only move
K up (a young bucket's trees still carry the draft's warm-up), a step down waits for a full period.
Measurements age out after MAX_AGE decisions, so a verdict is revisited when the load or the text
changes. Each bucket keeps its own K: a server that alternates between light and heavy load
switches at once.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Optional

from sglang_ssd.request_acceptance import Acceptance
from sglang_ssd.round_costs import RoundCosts, bucket_label, bucket_of

AUTO_MAX_K = 8  # the deepest tree auto K may choose (and the KV SGLang reserves per round)
EVERY = int(os.environ.get("SGLANG_SSD_AUTO_K_EVERY", "32"))
DECAY = 0.99  # per round, for the acceptance estimate
OPTIMISM = 2.0  # accepted draft tokens added for an optimistic acceptance (accept_optimistic)
MAX_AGE = 16  # decisions after which a depth's measurements are no longer trusted
MARGIN = 0.03  # a move must promise this much more throughput
EXPLORE = 0.85  # with no neighbour measured, visit one predicted to reach this share of the rate
FAST_DECISIONS = 3  # a bucket's first decisions, each after a quarter of `every` rounds
N0 = 64.0  # request-rounds the geometric law is worth against a visit's measured tokens per round


@dataclass
class _Visit:
    """Sums over the latest visit of one K (one bucket): its tokens and round times. What its
    verify and tree cost is the round cost model's (round_costs.py), not kept here."""

    rounds: int = 0
    req_rounds: int = 0
    tokens: float = 0.0
    round_s: float = 0.0
    age: int = 0  # decisions since the visit ended (0 while it lasts)

    @property
    def fresh(self) -> bool:
        return self.rounds > 0 and self.age <= MAX_AGE

    def e(self, prior: float) -> float:
        return (self.tokens + N0 * prior) / (self.req_rounds + N0)

    @property
    def r(self) -> float:
        return self.round_s / self.rounds


@dataclass
class _Bucket:
    k: int
    size: int  # the bucket's smallest batch size (the cost model's key for it)
    visits: dict = field(default_factory=dict)  # K -> _Visit
    rounds: int = 0  # rounds at `k` since the last decision
    decisions: int = 0


def expected_tokens(a: float, k: int) -> float:
    """Tokens per round (accepted drafts plus the target's own) at per-token acceptance a."""
    a = min(max(a, 0.0), 1.0 - 1e-9)
    return (1.0 - a ** (k + 1)) / (1.0 - a)


class DepthController:
    """Chooses K for the next round. `auto=False`: K stays at `k_init` (the user fixed it)."""

    def __init__(self, k_init: int, k_max: int, auto: bool, every: int = EVERY, k_min: int = 1,
                 costs: Optional[RoundCosts] = None):
        if not 1 <= k_min <= k_init <= k_max:
            raise ValueError(f"need 1 <= k_min <= k_init <= k_max, got {k_min}, {k_init}, {k_max}")
        self.k, self.k_max, self.k_min, self.auto, self.every = k_init, k_max, k_min, auto, max(1, every)
        self.costs = costs if costs is not None else RoundCosts()  # fed by the mode planner
        self._buckets: dict[int, _Bucket] = {}
        self._acceptance = Acceptance()  # over every request, DECAY a judged draft
        self.moves = 0
        self.version = 0  # bumped at every decision and new bucket: when table() has news
        self.allowed: Optional[frozenset] = None  # the depths it may choose (None: k_min..k_max)

    def restrict(self, ks) -> None:
        """Choose only among `ks` from now on (the target's verify graphs exist for those depths
        only: verify_widths.py); K moves to the deepest allowed one at or below it (else the
        shallowest allowed)."""
        allowed = frozenset(k for k in ks if self.k_min <= k <= self.k_max)
        if not allowed:
            raise ValueError(f"no depth of {sorted(ks)} in [{self.k_min}, {self.k_max}]")
        self.allowed = allowed
        below = [k for k in allowed if k <= self.k]
        self.k = max(below) if below else min(allowed)
        for b in self._buckets.values():
            b.k = self.k
        self.version += 1

    def _neighbours(self, k: int) -> list[int]:
        """The nearest depths below and above k that K may move to."""
        ks = range(self.k_min, self.k_max + 1) if self.allowed is None else sorted(self.allowed)
        below = [x for x in ks if x < k]
        above = [x for x in ks if x > k]
        return below[-1:] + above[:1]

    @property
    def observed(self) -> float:
        """How much acceptance evidence there is (decayed draft tokens judged)."""
        return self._acceptance.observed

    @property
    def accept(self) -> float:
        """Per-token acceptance: the truncated geometric MLE (0.5 until measured)."""
        return self._acceptance.value()

    @property
    def accept_optimistic(self) -> float:
        """The acceptance with OPTIMISM draft tokens more accepted than measured: what a few rounds
        cannot pin to 0 (4 cold rounds of no acceptance: 0.33; a random draft's 17: 0.11)."""
        return self._acceptance.value(1.0, OPTIMISM)

    def observe_acceptance(self, k: int, accepted: list[int]) -> None:
        """Acceptance from rounds K was not measured in (the draft spoke, but no tree was built)."""
        for j in accepted:
            self._acceptance.add(k, j, DECAY)

    def observe(self, k: int, batch_size: int, accepted: list[int], round_s: float) -> int:
        """One verified round at depth k; returns K for the next round.

        accepted: draft tokens accepted per speculated request (each <= k); round_s: the round's
        wall time on the worker (draft exchange, verify, acceptance). Its verify and the tree its
        speculation came from are in the cost model (the mode planner records them first).
        """
        self.observe_acceptance(k, accepted)
        if not self.auto or batch_size < 1:
            return self.k
        b = self._bucket(batch_size)
        if b.k != self.k:  # the batch moved to another bucket: use what that bucket learned
            self.k = b.k
            b.rounds = 0
            return self.k
        v = b.visits.get(k)
        if v is None or v.age > 0:  # a new visit replaces what an earlier one measured
            v = b.visits[k] = _Visit()
        v.rounds += 1
        v.req_rounds += len(accepted)
        v.tokens += sum(min(j, k) + 1 for j in accepted)
        v.round_s += round_s
        b.rounds += 1
        if b.rounds >= self._period(b):
            b.rounds = 0
            b.decisions += 1
            self._decide(b)
        return self.k

    def _period(self, b: _Bucket) -> int:
        """Rounds between decisions: a quarter of `every` while the bucket is new."""
        return max(1, self.every // 4) if b.decisions < FAST_DECISIONS else self.every

    def _predict(self, b: _Bucket, k: int) -> Optional[tuple[float, bool, bool]]:
        """(tokens per second, whether the tree fits, whether measured) at depth k."""
        c, n = self.costs, b.size
        here, v = b.visits.get(b.k), b.visits.get(k)
        g = expected_tokens(self.accept, k)
        vk, tk = c.verify(n, k), c.tree(n, k)
        if v is not None and v.fresh and c.tree_measured(n, k) is not None and vk is not None:
            return v.e(g) / v.r, tk <= vk, True
        vh, th = c.verify(n, b.k), c.tree_measured(n, b.k)
        if here is None or here.rounds == 0 or th is None or vh is None or vk is None or tk is None:
            return None
        r = max(1e-9, here.r - max(vh, th) + max(vk, tk))
        return g / r, tk <= vk, False

    def _decide(self, b: _Bucket) -> None:
        self.version += 1
        for kk, v in b.visits.items():
            if kk != b.k:
                v.age += 1
        here = self._predict(b, b.k)
        if here is None:
            return
        rate, fits, _ = here
        best = b.k
        measured, unmeasured = [], []
        for k in self._neighbours(b.k):
            p = self._predict(b, k)
            if p is not None:  # its rate counts any wait for its tree (R = ... + max(V, T))
                (measured if p[2] else unmeasured).append((p[0], k))
        if not fits:  # the target waits for the tree: shallower, unless that serves fewer tokens/s
            if any(k < b.k and r > rate for r, k in measured + unmeasured):
                best = max(k for _, k in measured + unmeasured if k < b.k)
        else:
            better = [x for x in measured + unmeasured if x[0] > rate * (1 + MARGIN)]
            worth = [x for x in unmeasured if x[0] >= rate * EXPLORE] if not measured else []
            if better:  # the best measured or predicted neighbour (a prediction gets measured)
                best = max(better)[1]
            elif worth:  # nothing measured around: learn how the verify grows with K
                best = max(worth)[1]
        if best < b.k and b.decisions <= FAST_DECISIONS:
            best = b.k  # an early decision only explores upward: a young bucket's trees still
            # carry the draft's warm-up (on the real pair the first K=4 trees overran by 0-60 ms
            # and fitted later), so a step down waits for a full period's evidence
        if best != b.k:
            self.moves += 1
            b.visits[b.k].age = max(b.visits[b.k].age, 1)  # the visit is over
        b.k = self.k = best

    def _bucket(self, batch_size: int) -> _Bucket:
        key = bucket_of(batch_size)
        b = self._buckets.get(key)
        if b is None:
            b = self._buckets[key] = _Bucket(k=self.k, size=1 << (key - 1))
            self.version += 1
        return b

    def table(self) -> dict:
        """Per bucket: its K and, per K measured, tokens per request-round and ms per round,
        verify and tree, for the statistics."""
        out, c = {}, self.costs
        for key, b in sorted(self._buckets.items()):
            visits = sorted((k, v) for k, v in b.visits.items() if v.rounds)
            out[bucket_label(key)] = {
                "k": b.k,
                "tokens_per_round": {k: round(v.tokens / max(v.req_rounds, 1), 3) for k, v in visits},
                "round_ms": {k: round(v.r * 1e3, 3) for k, v in visits},
                "verify_ms": {k: round(c.measured(b.size, k + 1) * 1e3, 3) for k, v in visits
                              if c.measured(b.size, k + 1) is not None},
                "tree_ms": {k: round(c.tree_measured(b.size, k) * 1e3, 3) for k, v in visits
                            if c.tree_measured(b.size, k) is not None},
            }
        return out
