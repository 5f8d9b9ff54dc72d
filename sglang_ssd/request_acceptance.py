"""Acceptance as the truncated geometric law's estimate, for all requests and for each one.

The mode planner chooses a bucket's mode from rates averaged over every request it served, but
requests differ by their text. On the real pair at T=0 (2-core EPYC, 4 requests of 48 tokens)
three requests accepted 6 of 6 drafts nearly every round while the fourth accepted 0-2: in sync
rounds of 575 ms that one made about 2 tokens a round, 3.5 tokens/s, where plain steps of 130 ms
give it 7.7. A burst of equal-length requests ends when its slowest does, so the burst ran 0.87x
plain decoding although its sync rounds served 1.14x the tokens of plain ones. Each request's own
acceptance (the bucket's worth PRIOR_TOKENS draft tokens in it, so a few rounds cannot pin it)
lets the planner predict when the batch finishes (drain.py) and serve it plain where that is
sooner (ModePlanner.plan). While a request is not speculated its evidence fades (FADE a round),
so a request whose text turns predictable is tried again.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Optional

PRIOR_TOKENS = 4.0  # draft tokens the all-request acceptance is worth in one request's estimate
FADE = 0.97  # per round a request is not speculated, of its own evidence (23 rounds: half)
FORGET_ROUNDS = 512  # rounds after which a request not seen is forgotten (it finished)


@dataclass
class Acceptance:
    """Draft tokens accepted and rejections (a round that stopped before K), each decayed."""

    acc: float = 0.0
    rej: float = 0.0

    def add(self, k: int, accepted: int, decay: float = 1.0) -> None:
        """A round at depth k that accepted `accepted` draft tokens."""
        self.acc = self.acc * decay + min(accepted, k)
        self.rej = self.rej * decay + (1.0 if accepted < k else 0.0)

    def fade(self, factor: float) -> None:
        self.acc *= factor
        self.rej *= factor

    @property
    def observed(self) -> float:
        return self.acc + self.rej

    def value(self, prior: float = 0.5, weight: float = 0.0) -> float:
        """Per-token acceptance: acc / (acc + rej), with `weight` draft tokens at `prior` added
        (prior alone before any evidence)."""
        n = self.acc + self.rej + weight
        return (self.acc + weight * prior) / n if n > 0 else prior


class RequestAcceptance:
    """Each request's own acceptance."""

    def __init__(self):
        self._of: dict[str, Acceptance] = {}
        self._seen: dict[str, int] = {}
        self._rounds = 0

    def observe(self, rids: Iterable[str], accepted: Iterable[int], speculated: Iterable[bool], k: int) -> None:
        """One round: the draft tokens each request accepted, if it was speculated (else its
        evidence fades)."""
        self._rounds += 1
        for rid, j, spec in zip(rids, accepted, speculated):
            self._seen[rid] = self._rounds
            a = self._of.setdefault(rid, Acceptance())
            if spec and k > 0:
                a.add(k, j)
            else:
                a.fade(FADE)
        if self._rounds % 64 == 0:
            gone = [r for r, t in self._seen.items() if self._rounds - t > FORGET_ROUNDS]
            for r in gone:
                del self._seen[r]
                self._of.pop(r, None)

    def accept(self, rid: str, prior: float) -> float:
        """The request's acceptance: its own evidence with PRIOR_TOKENS at `prior` (the
        all-request estimate); `prior` for a request never speculated."""
        a: Optional[Acceptance] = self._of.get(rid)
        return prior if a is None else a.value(prior, PRIOR_TOKENS)

    def __len__(self) -> int:
        return len(self._of)
