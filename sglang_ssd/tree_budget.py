"""The fan-out budget B sized by time: the tree that serves most tokens per second of the round.

SSD hides the draft only while its tree (a glue forward of K+1 tokens per request, then K steps of
B branches per request, all requests batched) is built before the target's verify ends; a larger
B hits more often but may outlast the verify, and once the hit rate saturates more branches buy
nothing. So each round, for the K the worker asked for, the draft picks B maximising

    tokens / second = [h(B) E_hit + (1 - h(B)) E_miss] / [E max(V, T(B)) + (1 - h(B)) T_miss]

from measured quantities only: V the target's verify (sent by the worker), T(B) the tree time
predicted by this draft's own forward-cost curve (calibrated at start on the device, scaled by
every forward it runs since) times the measured ratio of whole trees to their predictions (what
a tree costs besides its forwards: proposing, forking, and kernels whose cost is not linear in
the rows, e.g. oneDNN's packed matmul), spread by the measured scatter of whole trees around
their prediction (a tree planned to end just at the verify's end overruns half the time: the
expectation over that scatter leaves the margin the noise asks for), h(B) the hit rate the
fan-out estimator predicts for B's schedule from the observed acceptance and ranks of t*, and the
backup's measured tokens and latency. A user's --ssd-fanout-budget or --ssd-fanout fixes B and
this is not used.
"""

from __future__ import annotations

import math
import time
from typing import Callable, Optional

from sglang_ssd import device_clock
from sglang_ssd.auto_k import expected_tokens
from sglang_ssd.fanout import FanoutEstimator, geometric_fanout

CALIBRATION_TOKENS = (1, 2, 4, 8, 16, 32, 64)
SCALE_DECAY = 0.9  # per forward: the scale follows the live context length within ~10 forwards
TREE_DECAY = 0.7  # per tree: a tree that overran the verify shrinks the next budget within ~3 trees
SPREAD_DECAY = 0.9  # per tree: the scatter of trees around their prediction, over ~10 trees


class ForwardCost:
    """Seconds of one draft forward over n new tokens: a calibrated curve times a live scale."""

    def __init__(self, points: dict[int, float]):
        if not points:
            raise ValueError("ForwardCost needs at least one calibration point")
        self.ns = sorted(points)
        self.ts = [max(points[n], 1e-6) for n in self.ns]
        self.scale = 1.0

    def curve(self, n: float) -> float:
        ns, ts = self.ns, self.ts
        if len(ns) == 1:
            return ts[0] * max(n, 1) / ns[0]
        if n <= ns[0]:
            return ts[0]
        for i in range(1, len(ns)):
            if n <= ns[i] or i == len(ns) - 1:
                slope = (ts[i] - ts[i - 1]) / (ns[i] - ns[i - 1])
                return max(ts[i - 1] + slope * (n - ns[i - 1]), ts[0])
        return ts[-1]

    def __call__(self, n: float) -> float:
        return self.scale * self.curve(n)

    def observe(self, n: int, seconds: float) -> None:
        if n > 0 and seconds > 0:
            ratio = seconds / self.curve(n)
            self.scale = SCALE_DECAY * self.scale + (1 - SCALE_DECAY) * ratio

    @classmethod
    def calibrate(cls, forward: Callable[[int], None], tokens=CALIBRATION_TOKENS, repeats: int = 2) -> "ForwardCost":
        """Time `forward(n)` for each n (best of `repeats`, after one warm-up)."""
        forward(tokens[0])
        points = {}
        for n in tokens:
            best = float("inf")
            for _ in range(repeats):
                t0 = time.perf_counter()
                forward(n)
                best = min(best, time.perf_counter() - t0)
            points[n] = best
        return cls(points)


def calibration_forward(model, context: int = 256) -> Callable[[int], None]:
    """A forward of n new tokens over `context` scratch slots of the draft's pool (what a tree
    step over a prompt of that length costs; at most a quarter of the pool); the slots are freed
    afterwards."""
    context = min(context, model.pool.size // 4)

    from sglang_ssd.draft_batch import run, slot_tensor

    def forward(n: int) -> None:
        slots = model.pool.alloc(context + n)
        try:
            model.forward([run(slot_tensor(slots[:context]), [0] * n, context, slots[context:])])
            device_clock.now(model.device)  # timed to the kernels' end, not their launch
        finally:
            model.pool.free(slots)
    return forward


class BudgetPlanner:
    """Chooses B in [1, b_max] per round (see the module docstring)."""

    def __init__(self, b_max: int, cost: ForwardCost):
        self.b_max = max(1, b_max)
        self.cost = cost
        self.tree_ratio = 1.0  # measured whole trees / their forwards' predicted cost
        self.tree_var = 0.0  # mean squared relative error of that prediction (0 until measured)
        self.last: dict = {}

    def _forwards(self, k: int, n_seqs: int, budget: int) -> float:
        return self.cost(n_seqs * (k + 1)) + k * self.cost(n_seqs * budget)

    def tree_seconds(self, k: int, n_seqs: int, budget: int) -> float:
        return self.tree_ratio * self._forwards(k, n_seqs, budget)

    def observe_tree(self, k: int, n_seqs: int, budget: int, seconds: float) -> None:
        """A whole tree (glue and k steps of `budget` branches per request) took `seconds`."""
        pred = self._forwards(k, n_seqs, budget)
        if pred > 0 and seconds > 0:
            ratio = min(max(seconds / pred, 0.25), 4.0)
            err = ratio / self.tree_ratio - 1.0  # what the corrected prediction missed by
            self.tree_var = SPREAD_DECAY * self.tree_var + (1 - SPREAD_DECAY) * err * err
            self.tree_ratio = TREE_DECAY * self.tree_ratio + (1 - TREE_DECAY) * ratio

    @property
    def tree_spread(self) -> float:
        """The relative standard deviation of whole trees around their prediction."""
        return math.sqrt(self.tree_var)

    def choose(self, k: int, n_seqs: int, verify_s: float, est: FanoutEstimator,
               miss_tokens: float, miss_seconds: Callable[[float], float], cap: int) -> tuple[int, list[int]]:
        """(B, its schedule F_0..F_K) for a round of n_seqs requests at depth k."""
        a = est.live_accept
        g = expected_tokens(a, k)
        best = None
        for b in range(1, max(self.b_max, 3 * (k + 1)) + 1):
            fan = geometric_fanout(k, b, a, est.power, cap)
            h = est.predicted_hit(fan)
            tree = self.tree_seconds(k, n_seqs, b)
            misses = n_seqs * (1.0 - h)
            round_s = expected_max(verify_s, tree, self.tree_spread * tree) + \
                (1.0 - h ** n_seqs) * miss_seconds(max(misses, 1.0))
            rate = (h * g + (1.0 - h) * miss_tokens) / max(round_s, 1e-9)
            if best is None or rate > best[0] * (1 + 1e-3):  # a larger B must buy something
                best = (rate, b, fan, h, tree)
        rate, b, fan, h, tree = best
        self.last = {"budget": b, "predicted_hit": round(h, 4), "tree_ms": round(tree * 1e3, 1),
                     "verify_ms": round(verify_s * 1e3, 1), "cost_scale": round(self.cost.scale, 3),
                     "tree_ratio": round(self.tree_ratio, 3), "tree_spread": round(self.tree_spread, 3)}
        return b, fan


def expected_max(v: float, mu: float, sigma: float) -> float:
    """E max(v, T) for T normal with mean mu and standard deviation sigma (max(v, mu) at 0)."""
    if sigma <= 0:
        return max(v, mu)
    z = (v - mu) / sigma
    below = 0.5 * (1.0 + math.erf(z / math.sqrt(2.0)))  # P(T <= v)
    density = math.exp(-0.5 * z * z) / math.sqrt(2.0 * math.pi)
    return v + (mu - v) * (1.0 - below) + sigma * density


def miss_model(policy, k: int, n_seqs: int, cost: ForwardCost,
               expected_hit_tokens: float) -> tuple[float, Callable[[float], float]]:
    """(tokens a missed request gains, seconds the misses cost the round) under the backup policy
    that would answer them."""
    kind = policy.kind if policy.kind != "adaptive" else (
        "neural" if n_seqs < policy.live_threshold else "fast")
    if kind == "fast":
        return policy.tokens["fast"].value, lambda m: 0.0
    tokens = policy.tokens["neural"].value if policy.measured() else expected_hit_tokens
    if policy.neural_measured():  # the backup's latency as the backup policy measured it (one picture)
        return tokens, policy.neural_seconds
    return tokens, lambda m: k * cost(m)  # before any backup ran: K forwards of the missed requests


def plan_budget(planner: Optional[BudgetPlanner], policy, est: Optional[FanoutEstimator], k: int,
                n_seqs: int, verify_s: float, cap: int) -> Optional[list[int]]:
    """The time-sized schedule for this round, or None when B is fixed or nothing is measured yet."""
    if planner is None or est is None or verify_s <= 0 or n_seqs < 1:
        return None
    g = expected_tokens(est.live_accept, k)
    miss_tokens, miss_seconds = miss_model(policy, k, n_seqs, planner.cost, g)
    _, fan = planner.choose(k, n_seqs, verify_s, est, miss_tokens, miss_seconds, cap)
    return fan
