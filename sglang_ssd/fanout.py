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
