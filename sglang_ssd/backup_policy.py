"""Which backup answers a round's cache misses: neural below a batch size b*, fast from b* on.

With b requests and hit rate p, a round with any miss (probability 1 - p^b) waits for the neural
backup, which drafts K tokens for the ~b(1-p) missed requests; the fast backup costs nothing but
gains fewer tokens. b* is the smallest batch at which the fast backup's expected tokens per second
reach the neural one's (the paper's rule), re-evaluated from what this server measured: the hit
rate, tokens per round after a hit / neural / fast speculation, the neural backup's latency as a
function of the number of misses, and the target's verify time (sent by the worker). Until enough
is measured, b* is the configured `--ssd-backup-batch-threshold`.
"""

from __future__ import annotations

DECAY = 0.99  # per observation: about the last hundred rounds count
MIN_LOOKUPS = 20
MAX_B = 4096


class _Mean:
    def __init__(self, prior: float, weight: float = 2.0):
        self.sum, self.n = prior * weight, weight

    def add(self, x: float) -> None:
        self.sum = self.sum * DECAY + x
        self.n = self.n * DECAY + 1.0

    @property
    def value(self) -> float:
        return self.sum / self.n


def expected_rate(b: int, p_hit: float, e_hit: float, e_miss: float, verify_s: float,
                  stall_s: float) -> float:
    """Tokens per second of a batch of b where misses gain e_miss tokens and any miss costs stall_s."""
    tokens = b * (p_hit * e_hit + (1.0 - p_hit) * e_miss)
    p_any_miss = 1.0 - p_hit ** b
    return tokens / (verify_s + p_any_miss * stall_s)


def threshold(p_hit: float, e_hit: float, e_neural: float, e_fast: float, verify_s: float,
              neural_s) -> int:
    """b*: the smallest batch size where the fast backup is at least as good; MAX_B if never.

    neural_s(m) is the neural backup's latency for m missed requests.
    """
    for b in range(1, MAX_B + 1):
        misses = max(1.0, b * (1.0 - p_hit))
        neural = expected_rate(b, p_hit, e_hit, e_neural, verify_s, neural_s(misses))
        fast = expected_rate(b, p_hit, e_hit, e_fast, verify_s, 0.0)
        if fast >= neural:
            return b
    return MAX_B


class BackupPolicy:
    def __init__(self, kind: str, prior_threshold: int, k: int):
        self.kind = kind
        self.prior = prior_threshold
        self.verify_s = 0.0
        self.lookups = 0
        self.p_hit = _Mean(0.5)
        guess = 1.0 + k / 2.0
        self.tokens = {"hit": _Mean(guess), "neural": _Mean(guess), "fast": _Mean(1.0)}
        # Decayed least squares of neural backup seconds against misses: t = a + c * m.
        self._s = [0.0] * 5  # n, sum m, sum t, sum m^2, sum m*t
        self._threshold = prior_threshold

    def observe_lookup(self, hit: bool) -> None:
        self.lookups += 1
        self.p_hit.add(1.0 if hit else 0.0)

    def observe_tokens(self, source: str, emitted: int) -> None:
        """`emitted` tokens (k + 1) came out of a speculation from `source` (hit/neural/fast)."""
        if source in self.tokens:
            self.tokens[source].add(float(emitted))

    @property
    def hit_tokens(self) -> float:
        """Measured tokens a round emits after a (whole) hit."""
        return self.tokens["hit"].value

    def observe_neural(self, misses: int, seconds: float) -> None:
        s = self._s
        for i, x in enumerate((1.0, misses, seconds, misses * misses, misses * seconds)):
            s[i] = s[i] * DECAY + x

    def neural_seconds(self, misses: float) -> float:
        n, sm, st, smm, smt = self._s
        var = n * smm - sm * sm
        if var > 1e-9 * max(1.0, n * smm):
            c = (n * smt - sm * st) / var
            a = (st - c * sm) / n
            if c >= 0 and a >= 0:
                return a + c * misses
        return st / sm * misses if sm > 0 else 0.0  # one batch size seen so far: proportional

    def neural_measured(self) -> bool:
        """Whether neural_seconds comes from measurements (at least one neural backup)."""
        return self._s[0] > 0.5

    def measured(self) -> bool:
        return self.lookups >= MIN_LOOKUPS and self.verify_s > 0 and self.neural_measured()

    def update(self) -> int:
        if self.measured():
            t = self.tokens
            self._threshold = threshold(self.p_hit.value, t["hit"].value, t["neural"].value,
                                        t["fast"].value, self.verify_s, self.neural_seconds)
        return self._threshold

    @property
    def live_threshold(self) -> int:
        return self._threshold

    def choose(self, batch: int) -> str:
        """'neural' or 'fast' for this round's misses."""
        if self.kind != "adaptive":
            return self.kind
        return "neural" if batch < self.update() else "fast"
