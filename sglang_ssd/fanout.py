"""How many outcomes to pre-draft at each verify position: the capped geometric schedule.

With per-token acceptance a, P(k=j) = a^j (1-a) for j < K and a^K for j = K; a power-law miss rate
F^-r then gives F_j proportional to P(j)^(1/(1+r)) (see the SSD notes). Rounded so the total is B.
"""

from __future__ import annotations

from typing import Optional

PRIOR_ACCEPT = 0.7
PRIOR_POWER = 0.5


def geometric_fanout(k: int, budget: int, accept: float = PRIOR_ACCEPT, power: float = PRIOR_POWER,
                     cap: Optional[int] = None) -> list[int]:
    """F_0..F_K summing to `budget` (fewer only if every position hit `cap`)."""
    if k < 1 or budget < 1:
        raise ValueError(f"need k >= 1 and budget >= 1, got k={k}, budget={budget}")
    a = min(max(accept, 1e-3), 1 - 1e-3)
    e = 1.0 / (1.0 + max(power, 1e-6))
    weights = [a ** (j * e) for j in range(k)] + [a ** (k * e) * (1 - a) ** (-e)]
    cap = cap if cap is not None else budget
    total = sum(weights)
    raw = [budget * w / total for w in weights]
    fan = [min(cap, int(x)) for x in raw]
    # Largest remainders first, never above the cap.
    order = sorted(range(k + 1), key=lambda j: raw[j] - int(raw[j]), reverse=True)
    left = budget - sum(fan)
    while left > 0 and any(f < cap for f in fan):
        for j in order:
            if left == 0:
                break
            if fan[j] < cap:
                fan[j] += 1
                left -= 1
    if not any(fan):
        fan[k] = 1
    return fan


def resolve_fanout(k: int, explicit: Optional[list[int]], budget: Optional[int],
                   vocab_size: int) -> list[int]:
    """The schedule a server uses: an explicit list wins, else the geometric split of B."""
    if explicit is not None:
        if len(explicit) != k + 1:
            raise ValueError(f"fan-out list needs K+1={k + 1} entries, got {explicit}")
        return [min(f, vocab_size - 1) for f in explicit]
    b = budget if budget is not None else 3 * (k + 1)
    return geometric_fanout(k, b, cap=vocab_size - 1)


class FanoutEstimator:
    """Measures a (per-token acceptance) and r (miss-rate power law) online, re-plans the schedule.

    a: maximum-likelihood for the truncated geometric law of k, sum(k) / (sum(k) + #(k < K)).
    r: from the rank of the true t* among the draft's candidates at its position (censored at
       `depth`): the survival S(F) = P(rank >= F) is fitted as F^-r by least squares in log-log.
    Both start from a prior worth `prior_weight` observations and decay old evidence.
    """

    def __init__(self, k: int, budget: int, cap: int, depth: int = 16, prior_weight: float = 32.0,
                 decay: float = 0.995, replan_every: int = 64):
        self.k, self.budget, self.cap, self.depth = k, budget, cap, depth
        self.decay, self.replan_every = decay, replan_every
        self.acc = PRIOR_ACCEPT * prior_weight * k  # accepted draft tokens
        self.rej = (1 - PRIOR_ACCEPT) * prior_weight * k  # rejections
        # Prior ranks (0-based; `depth` = not among the candidates) from S(F) = P(rank >= F) =
        # 0.5 F^-r for F >= 1.
        def surv(f):
            return 1.0 if f == 0 else 0.5 * f ** -PRIOR_POWER

        self.rank_hist = [prior_weight * (surv(f) - surv(f + 1)) for f in range(depth)]
        self.rank_hist.append(prior_weight * surv(depth))
        self.accept, self.power = PRIOR_ACCEPT, PRIOR_POWER
        self.schedule = geometric_fanout(k, budget, self.accept, self.power, cap)
        self._since = 0

    def set_k(self, k: int) -> list[int]:
        """Plan for another depth (automatic K); the estimates carry over."""
        self.k = k
        self.schedule = geometric_fanout(k, self.budget, self.accept, self.power, self.cap)
        return self.schedule

    def observe(self, accepted: int, rank: int | None, k: Optional[int] = None) -> None:
        """One verification outcome of a speculation k deep (default: the planned K): `accepted`
        drafts, and the rank of t* among its position's candidates (None: unknown)."""
        d = self.decay
        self.acc = self.acc * d + accepted
        self.rej = self.rej * d + (1 if accepted < (self.k if k is None else k) else 0)
        if rank is not None:
            self.rank_hist = [h * d for h in self.rank_hist]
            self.rank_hist[min(rank, self.depth)] += 1.0
        self._since += 1
        if self._since >= self.replan_every:
            self._since = 0
            self.replan()

    @property
    def live_accept(self) -> float:
        """The acceptance measured so far (`accept` is refreshed only at each re-plan)."""
        return self.acc / max(self.acc + self.rej, 1e-9)

    def predicted_hit(self, fanout: list[int]) -> float:
        """P(the outcome is pre-drafted) under schedule F_0..F_K: sum_j P(k=j) P(rank(t*) < F_j),
        with the truncated geometric law at the measured acceptance and the observed ranks."""
        k = len(fanout) - 1
        a = min(max(self.live_accept, 1e-3), 1 - 1e-3)
        total = sum(self.rank_hist)
        cdf, c = [0.0], 0.0
        for h in self.rank_hist[: self.depth]:
            c += h
            cdf.append(c / total)
        law = [a ** j * (1 - a) for j in range(k)] + [a ** k]
        return sum(p * cdf[min(f, self.depth)] for p, f in zip(law, fanout))

    def replan(self) -> list[int]:
        import math

        self.accept = self.acc / max(self.acc + self.rej, 1e-9)
        total = sum(self.rank_hist)
        xs, ys = [], []
        tail = total
        for f in range(1, self.depth + 1):
            tail -= self.rank_hist[f - 1]  # mass with rank >= f
            s = tail / total
            if s > 1e-3:
                xs.append(math.log(f))
                ys.append(math.log(s))
        if len(xs) >= 2:
            mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
            var = sum((x - mx) ** 2 for x in xs)
            slope = sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / var if var > 0 else -PRIOR_POWER
            self.power = min(max(-slope, 0.05), 5.0)
        self.schedule = geometric_fanout(self.k, self.budget, self.accept, self.power, self.cap)
        return self.schedule
