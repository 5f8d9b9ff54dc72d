"""Which kind of round serves most tokens per second, per batch-size bucket, from measured times.

Speculation pays only while a round's tokens outgrow its cost: a weak draft, a busy server whose
verify of K+1 tokens per request costs far more than a decode step, or a draft tree competing with
the target for one device can make a speculated round slower than a plain one. So each round is one
of three modes, chosen per batch-size bucket (1, 2-3, 4-7, ...):

- ``ssd``: the draft answers from its speculation cache and pre-drafts while the target verifies
  (K and the tree's budget tuned within the mode by auto_k.py and tree_budget.py);
- ``sync``: the draft drafts just in time and builds no tree (ordinary speculative decoding: what
  pays when the tree cannot hide behind the verify);
- ``plain``: no draft at all, the target alone (one token per request per round); the draft is
  paused for these requests (it forgets them; its prefix cache keeps their KV for the resync).

Each mode's rate, tokens per request-round over round seconds, is measured over its latest visit.
A bucket's first decision comes after FIRST_WINDOW rounds (short requests are served well too),
then every `every` rounds: the planner moves to a measured mode only when that mode is better by
a margin larger than the noise of both measurements (hysteresis: no flapping), visits a mode not
measured recently at once when a prediction says it is better (plain from the decode step measured
on this machine, round_costs.py; sync when SSD's tree outlasts the verify, or when a verify on more
cores than SSD's target has would save more than drafting just in time costs; sync from plain
rounds when the cost model's verify plus the draft's just-in-time estimate beats them), starts a
bucket it never served in the mode the cost model predicts faster, and otherwise probes a mode now and then while it could be close (a mode that
cannot be predicted, such as a bucket's plain rounds before its first plain step, or SSD seen from
plain rounds, always could), at intervals that double while probes lose (their cost stays bounded)
and reset on a win. Plain rounds vary little (one token per request), so their probe is short.
Measurements age out, so a change of load or of text is noticed. A user's --ssd-mode pins the mode.

Within a speculating bucket, a round is plain when plain rounds would finish the batch sooner
(drain.py: each request's own acceptance, request_acceptance.py, and the tokens it may still
emit): a burst of equal-length requests ends with the request the draft predicts worst.
"""

from __future__ import annotations

import math
import os
from collections import deque
from dataclasses import dataclass, field
from typing import Optional

from sglang_ssd.auto_k import DepthController, expected_tokens
from sglang_ssd.drain import finish_s
from sglang_ssd.request_acceptance import RequestAcceptance
from sglang_ssd.round_costs import RoundCosts, bucket_of

MODES = ("ssd", "sync", "plain")
EVERY = int(os.environ.get("SGLANG_SSD_MODE_EVERY", "16"))  # rounds per decision (a probe lasts half)
MARGIN = 0.05  # a switch must promise this much more throughput ...
SIGMAS = 2.5  # ... and more than this many standard errors of the difference
PROBE_SIGMAS = 2.0  # a probe ahead by the margin is kept at this many (a wrong keep is probed back) ...
MAX_EXTEND = 3  # ... and extended up to this many times while ahead in the mean but not that clearly
                # (kept at the end if still ahead by the margin: home may have been measured briefly)
MAX_AGE = 8  # decisions after which a mode's measurement is no longer trusted
FIRST_WINDOW = int(os.environ.get("SGLANG_SSD_MODE_FIRST", "4"))  # rounds before a bucket's first decision
PLAIN_PROBE = 3  # rounds of a plain probe (its rate hardly varies)
FIRST_PROBE = {"plain": 1, "sync": 4, "ssd": 8}  # decisions before a first probe without a prediction
MAX_BACKOFF = 64  # decisions between probes of a mode that keeps losing
EXPLORE = 0.7  # a mode predicted at this share of the current rate is still probed now and then
STEADY_ROUNDS = 8  # latest rounds of a visit a batch's finish is predicted from (plan()) ...
MIN_STEADY = 3  # ... once there are this many
DRAIN_HORIZON = 1024  # tokens a request may still emit, at most, as the finish is predicted
OVERRUN = 0.1  # SSD's wait beyond this share of the verify: its tree is not hidden (probe sync)


@dataclass
class _Meter:
    """One mode's latest visit in one bucket."""

    rounds: int = 0
    req_rounds: int = 0
    tokens: float = 0.0
    round_s: float = 0.0
    verify_s: float = 0.0
    wait_s: float = 0.0
    overrun_s: float = 0.0  # of wait_s: rounds with lookups (not the draft's prefill of new requests)
    jit_s: float = 0.0  # the draft's estimate of drafting the round just in time (sync's wait) ...
    jit_rounds: int = 0  # ... over this many rounds that had one
    rate_sum: float = 0.0  # per-round rates, for the noise of the mean
    rate_sq: float = 0.0
    age: int = 0  # decisions since the visit ended (0 while it lasts)
    recent: deque = field(default_factory=lambda: deque(maxlen=STEADY_ROUNDS))  # latest round times

    def add(self, req_rounds: int, tokens: float, round_s: float, verify_s: float, wait_s: float,
            overrun_s: float, jit_s: float = 0.0) -> None:
        self.rounds += 1
        self.req_rounds += req_rounds
        self.tokens += tokens
        self.round_s += round_s
        self.verify_s += verify_s
        self.wait_s += wait_s
        self.overrun_s += overrun_s
        if jit_s > 0:
            self.jit_s += jit_s
            self.jit_rounds += 1
        self.recent.append(round_s)
        r = tokens / max(req_rounds, 1) / max(round_s, 1e-9)
        self.rate_sum += r
        self.rate_sq += r * r

    @property
    def fresh(self) -> bool:
        return self.rounds > 0 and self.age <= MAX_AGE

    @property
    def rate(self) -> float:
        """Tokens per request per second over the visit."""
        return self.tokens / max(self.req_rounds, 1) / max(self.round_s / max(self.rounds, 1), 1e-9)

    @property
    def steady_round_s(self) -> Optional[float]:
        """The mean of the latest rounds' times but the longest, once there are MIN_STEADY (None
        before): a bucket's first round waits for its requests' first drafts (on the real pair
        922 ms against ~350 later; a batch judged by it was served plain for a whole burst), while
        a median left out the rounds whose lookups missed (a request the draft predicts badly:
        350-580 ms SSD rounds at batch 1, against a median of 290 set by hits)."""
        if len(self.recent) < MIN_STEADY:
            return None
        return (sum(self.recent) - max(self.recent)) / (len(self.recent) - 1)

    @property
    def stderr(self) -> float:
        n = self.rounds
        if n < 2:
            return float("inf")
        mean = self.rate_sum / n
        var = max(self.rate_sq / n - mean * mean, 0.0) * n / (n - 1)
        return math.sqrt(var / n)

    def summary(self) -> dict:
        return {"tok_per_s": round(self.rate, 3), "rounds": self.rounds, "age": self.age,
                "round_ms": round(1e3 * self.round_s / max(self.rounds, 1), 3),
                "verify_ms": round(1e3 * self.verify_s / max(self.rounds, 1), 3),
                "wait_ms": round(1e3 * self.wait_s / max(self.rounds, 1), 3),
                "overrun_ms": round(1e3 * self.overrun_s / max(self.rounds, 1), 3),
                "jit_ms": round(1e3 * self.jit_s / max(self.jit_rounds, 1), 3)}


@dataclass
class _Bucket:
    mode: str
    size: int  # a batch size of the bucket (the one it was made for)
    meters: dict = field(default_factory=dict)  # mode -> _Meter
    rounds: int = 0  # rounds in `mode` since the last decision
    probing: Optional[str] = None  # the mode to return to when the probe in progress loses
    next_probe: dict = field(default_factory=lambda: dict(FIRST_PROBE))  # mode -> decisions to wait
    backoff: dict = field(default_factory=lambda: dict(FIRST_PROBE))
    switches: int = 0
    probes: int = 0
    decisions: int = 0
    extended: int = 0  # times the probe in progress was extended (ahead, not yet clearly)
    drained: int = 0  # rounds served plain because the batch finishes sooner so (plan()) ...
    draining: bool = False  # ... the last of them too


def significantly_better(a: _Meter, b: _Meter, sigmas: float = SIGMAS) -> bool:
    """Whether mode a's measured rate beats b's by the margin and beyond both measurements' noise."""
    gap = a.rate - b.rate
    noise = math.sqrt(a.stderr ** 2 + b.stderr ** 2)
    return gap > MARGIN * b.rate and gap > sigmas * noise


class ModePlanner:
    """The one planner of a round: its mode, and K within the speculating modes (DepthController).

    `pinned`: a mode the user fixed (--ssd-mode), never left; `allowed`: the modes auto may use;
    `costs` (the depth controller's): the round cost model it feeds every round (observe()) and
    predicts plain rounds from; automatic K reads the same one.
    """

    def __init__(self, depth: DepthController, pinned: Optional[str] = None, every: int = EVERY,
                 allowed: tuple = MODES):
        if pinned is not None and pinned not in MODES:
            raise ValueError(f"mode {pinned!r} is not one of {MODES}")
        self.depth = depth
        self.costs: RoundCosts = depth.costs
        self.pinned = pinned
        self.every = max(2, every)
        self.probe_rounds = max(4, self.every // 2)  # a probe's visit: long enough to see a clear loss
        self.allowed = tuple(m for m in MODES if m in allowed)
        self._buckets: dict[int, _Bucket] = {}
        self.mode = pinned or "ssd"
        self.version = 0  # bumped at every decision that changes the table
        self.requests = RequestAcceptance()  # each request's own acceptance (observe_requests)
        self.last_drain: Optional[dict] = None  # the last plan()'s finish predictions (diagnostics)

    @property
    def k(self) -> int:
        return self.depth.k

    def plan(self, batch_size: int, requests: tuple = ()) -> tuple[str, int]:
        """(mode, K) for a round of `batch_size` requests; K is 0 for plain rounds. `requests`:
        (rid, tokens it may still emit) of each: a speculating bucket's round is plain when plain
        rounds until the first of them leaves would finish the batch sooner (_drains_sooner_plain),
        except during a probe (a measurement). Alone too: the request left of a burst is often the
        one the draft predicts worst (the real pair at T=0, 2026-12-07: 1-4 tokens in 380-600 ms
        SSD rounds at batch 1 against 170 ms plain steps, 8 such rounds a burst of 4), and a request's
        last token or two cost a plain step, not a verify. The bucket stays in its mode; such a round counts
        toward its next decision as a plain round measured, so a bucket whose every batch drains
        (a draft that never agrees) moves to plain rounds and probes its mode again on schedule."""
        self.last_drain = None
        if self.pinned is None and batch_size >= 1:
            b = self._bucket(batch_size)
            self.mode = b.mode
            b.draining = (b.mode != "plain" and b.probing is None and bool(requests)
                          and self._drains_sooner_plain(b, batch_size, requests))
            if b.draining:
                b.drained += 1
                return "plain", 0
        return self.mode, (0 if self.mode == "plain" else self.depth.k)

    def _drains_sooner_plain(self, b: _Bucket, batch_size: int, requests) -> bool:
        """Whether the batch finishes sooner with plain rounds until a request leaves than in its
        buckets' modes (drain.py), by the margin (and while the bucket's last round was plain for
        this, unless its mode is sooner by the margin: a batch of 1 flapped between plain steps of
        150 ms and SSD rounds of 600 ms that began the request with the draft again): each
        request's tokens a speculating round from its own acceptance (the chain's expected
        tokens), a round's cost from _spec_round_s, else a plain step."""
        got = self._spec_round_s(b, batch_size)
        if got is None or self.costs.step_predicted(batch_size) is None:
            self.last_drain = {"why": "no round cost" if got is None else "no plain step"}
            return False
        k, prior = self.depth.k, self.depth.accept
        tokens = [expected_tokens(self.requests.accept(rid, prior), k) for rid, _ in requests]
        remaining = [float(min(r, DRAIN_HORIZON)) for _, r in requests]
        rounds, steps = {batch_size: (got[0], True)}, {}  # each batch size's costs once for both futures
        round_of = lambda n: rounds[n] if n in rounds else rounds.setdefault(n, self._round_of(n))  # noqa: E731
        step = lambda n: steps[n] if n in steps else steps.setdefault(n, self.costs.step_predicted(n))  # noqa: E731
        keep = finish_s(remaining, tokens, round_of, step)
        plain = finish_s(remaining, tokens, round_of, step, plain_first=True)
        self.last_drain = {"keep_s": keep and round(keep, 3), "plain_s": plain and round(plain, 3),
                           "tokens": [round(t, 2) for t in tokens], "round_s": round(got[0], 3),
                           "round_from": got[1]}
        if keep is None or plain is None:
            return False
        return keep > plain * (1 - MARGIN) if b.draining else plain < keep * (1 - MARGIN)

    def _spec_round_s(self, b: _Bucket, batch_size: int) -> Optional[tuple[float, str]]:
        """(seconds, where from) of a speculating round of `batch_size` requests in bucket `b`: its
        latest rounds in its mode ("steady", _Meter.steady_round_s, once there are MIN_STEADY),
        else the cost model's verify at the current depth, measured or predicted ("verify": no
        round costs less, so a batch is drained on it only when plain rounds beat even that).
        Without the floor the buckets a burst's tail passes through were never judged: on the real
        pair (2-core EPYC, T=0, 4 requests of 48 tokens) 7 of 8 tail rounds at 1-2 requests came
        before MIN_STEADY rounds of their bucket's visit. None when neither is known."""
        m = b.meters.get(b.mode)
        steady = None if m is None else m.steady_round_s
        if steady is not None:
            return steady, "steady"
        k = self.depth.k
        verify = self.costs.verify(batch_size, k)
        if verify is None:
            verify = self.costs.predict(batch_size, k + 1)
        return None if verify is None else (verify, "verify")

    def _round_of(self, n: int) -> Optional[tuple[float, bool]]:
        """(seconds, speculating) of a round of n requests as its bucket serves it now."""
        x = self._buckets.get(bucket_of(n))
        got = None if x is None or x.mode == "plain" else self._spec_round_s(x, n)
        if got is not None:
            return got[0], True
        step = self.costs.step_predicted(n)
        return None if step is None else (step, False)

    def observe_requests(self, rids, accepted: list[int], speculated: list[bool], k: int) -> None:
        """Each request's draft tokens accepted this round, where it was speculated (`k`: the
        round's depth; 0 for a plain round)."""
        self.requests.observe(rids, accepted, speculated, k)

    def mode_for(self, batch_size: int) -> str:
        """The mode a round of `batch_size` requests would be served in now (plan() without making
        it the current one): the worker asks it for the batch that new requests join, so that a
        draft is not made to prefill prompts its requests' plain rounds will never draft for."""
        if self.pinned is not None or batch_size < 1:
            return self.mode
        return self._bucket(batch_size).mode

    def observe(self, mode: str, k: int, batch_size: int, accepted: list[int], verify_s: float,
                round_s: float, wait_s: float = 0.0, tree_s: float = 0.0, tree_k: int = 0,
                overrun_s: Optional[float] = None, jit_s: float = 0.0, threads: Optional[int] = None,
                typical: bool = True) -> None:
        """One verified round: `accepted` draft tokens per request served in `mode` (plain rounds:
        zeros), the round's wall time, its verify (on `threads` torch threads; None: the speculating
        count) and its wait for the draft, of which `overrun_s` (default: all) waited for a tree
        rather than for the draft's first drafts of new requests; `jit_s` (0: unknown) the draft's
        estimate of drafting this batch just in time. `typical` False: the round is not what its
        mode costs in steady state (the first after a change of mode, when the draft is still
        stopping a tree or catching up, or a forward on a thread count measured for the cost
        model, not the one the mode runs on): its costs are recorded, its rate is not judged."""
        self.costs.observe(batch_size, (0 if mode == "plain" else k) + 1, verify_s, threads)
        if mode == "ssd" and tree_k >= 1:
            self.costs.observe_tree(batch_size, tree_k, tree_s)
        if mode == "ssd":
            self.depth.observe(k, batch_size, accepted, round_s)
        elif mode == "sync":
            self.depth.observe_acceptance(k, accepted)
        if self.pinned is not None or batch_size < 1 or not accepted or not typical:
            return
        b = self._bucket(batch_size)
        if mode != b.mode and not (mode == "plain" and b.draining):  # served in another bucket's
            return  # mode (the batch moved): not this bucket's; plain to drain measures its plain rounds
        m = b.meters.get(mode)
        if m is None or m.age > 0:  # a new visit replaces what an earlier one measured
            m = b.meters[mode] = _Meter()
        m.add(len(accepted), sum(min(j, k) + 1 for j in accepted), round_s, verify_s, wait_s,
              wait_s if overrun_s is None else overrun_s, jit_s)
        b.rounds += 1
        if b.rounds >= self._window(b):
            b.rounds = 0
            b.decisions += 1
            self._decide(b)
            self.mode = b.mode

    def _window(self, b: _Bucket) -> int:
        """Rounds in the bucket's mode before its next decision."""
        if b.probing is not None:
            return PLAIN_PROBE if b.mode == "plain" else self.probe_rounds
        return min(FIRST_WINDOW, self.every) if b.decisions == 0 else self.every

    # ---- decisions -------------------------------------------------------------------------
    def _decide(self, b: _Bucket) -> None:
        self.version += 1
        here = b.meters[b.mode]
        for mode, m in b.meters.items():
            if mode != b.mode:
                m.age += 1
        if b.probing is not None:  # a probe's visit is over: keep the mode only if it won
            home, back = b.probing, b.meters.get(b.probing)
            longest = b.extended >= MAX_EXTEND  # ahead by the margin over the longest probe: kept too
            if (back is None or not back.fresh or significantly_better(here, back, PROBE_SIGMAS)
                    or (longest and here.rate > back.rate * (1 + MARGIN))):
                b.backoff[b.mode] = FIRST_PROBE.get(b.mode, 4)
                b.switches += 1
                b.probing = None
                b.extended = 0
                if back is not None and back.rounds < self.every:  # home was seen briefly (a bucket's
                    back.age = MAX_AGE + 1  # first rounds, maybe atypical): not trusted, and if it
                    if self._could_win(b, home, here.rate):  # could win at its best, looked at again
                        b.next_probe[home] = b.backoff[home] = 1  # at the next decision, which comes
                        b.decisions = 0  # after FIRST_WINDOW rounds (else on the probe schedule)
            elif (here.rate > back.rate and b.probes == 1 and back.rounds < self.every
                  and back.stderr > here.rate - back.rate):
                # the bucket's first probe leads a home seen for its first few rounds by less than
                # home's own noise (a warm-up prompt, first drafts: on the real pair 4 such SSD
                # rounds at 1.2-9.7 tokens/s made 18 plain rounds of a request SSD then served at
                # 1.8x): a longer probe cannot settle that, so home is measured afresh, as after a
                # win over a brief home (the next decision after FIRST_WINDOW rounds); the probe's
                # rate stays fresh and its mode is not backed off
                b.extended = 0
                b.probing = None
                back.age = MAX_AGE + 1  # home's brief visit is replaced by the one that starts now
                b.next_probe[b.mode] = 1
                b.decisions = 0
                self._enter(b, home)
            elif here.rate > back.rate and b.extended < MAX_EXTEND:
                b.extended += 1  # ahead, but within the noise of a short visit: measure on
            else:
                b.extended = 0
                self._lose(b, b.mode)
                self._enter(b, home)
            return
        for mode in self.allowed:  # a measured mode that is clearly better
            m = b.meters.get(mode)
            if mode != b.mode and m is not None and m.fresh and significantly_better(m, here):
                b.switches += 1
                self._enter(b, mode)
                return
        due = []  # modes not measured lately, predicted better or due for a probe
        for mode in self.allowed:
            m = b.meters.get(mode)
            if mode == b.mode or (m is not None and m.fresh and m.rate <= here.rate):
                continue
            b.next_probe[mode] = b.next_probe.get(mode, FIRST_PROBE.get(mode, 4)) - 1
            if m is not None and m.fresh:  # measured ahead in the mean, not clearly: visit again
                if b.next_probe[mode] <= 0:
                    due.append((False, m.rate, mode))
                continue
            promise, rate = self._promise(b, mode, here)
            if promise == "now" or (promise == "maybe" and b.next_probe[mode] <= 0):
                due.append((promise == "now", rate, mode))
        if due:  # one probe at a time: the most promising
            b.probes += 1
            b.probing = b.mode
            self._enter(b, max(due)[2])

    def _promise(self, b: _Bucket, mode: str, here: _Meter) -> tuple[str, float]:
        """Whether an unmeasured `mode` is worth a visit, and its predicted rate: "now" (predicted
        better), "maybe" (on the probe schedule: it could be close, or it cannot be predicted),
        "no"."""
        if mode == "plain":
            if b.mode == "plain":
                return "no", 0.0
            predicted = self.plain_rate(here, b.size)
            if predicted is None:  # this bucket's decode step was never measured: probe it
                return "maybe", 0.0
            return ("now" if predicted > here.rate else "maybe" if predicted > EXPLORE * here.rate else "no"), predicted
        if mode == "sync":
            # A sync round costs SSD's round without its wait for a tree that outlasted the verify,
            # plus drafting just in time (J, the draft's estimate; 0 when it has none), with the
            # verify at the fastest thread count the cost model predicts for it (the draft idles
            # during a sync verify: on a split CPU server the target borrows its cores) in place of
            # SSD's: its rate is about E / (R - overrun - V_ssd + V_sync + J), which must beat every
            # mode measured. So sync is worth a visit only when SSD's tree overruns or its verify
            # would be faster on more cores. From plain rounds (no SSD visit to start from) it is
            # predicted whole, from the cost model and the draft's estimate (sync_rate).
            ssd = b.meters.get("ssd")
            if b.mode != "ssd" or ssd is None:
                predicted = self.sync_rate(b.size)
                if predicted is None:
                    return "no", 0.0
                return ("now" if predicted > here.rate * (1 + MARGIN) else "no"), predicted
            n = ssd.rounds
            v_ssd = ssd.verify_s / n
            v_sync = min(v_ssd, self.costs.fastest(b.size, self.depth.k + 1, others=True) or v_ssd)
            if ssd.overrun_s <= OVERRUN * ssd.verify_s and v_sync >= (1 - MARGIN) * v_ssd:
                return "no", 0.0
            jit = ssd.jit_s / ssd.jit_rounds if ssd.jit_rounds else 0.0
            bound = ssd.tokens / max(ssd.req_rounds, 1) / max((ssd.round_s - ssd.overrun_s) / n - v_ssd + v_sync + jit,
                                                              1e-9)
            best = max([here.rate] + [m.rate for m in b.meters.values() if m.fresh])
            plain = self.plain_rate(here, b.size)
            if plain is not None and plain > bound:
                return "no", 0.0
            return ("now" if bound > best * (1 + MARGIN) else "no"), bound
        return "maybe", 0.0  # ssd, from a mode that cannot predict it

    def sync_rate(self, batch_size: int) -> Optional[float]:
        """A sync round's predicted rate at `batch_size` without a visit: the chain's expected tokens
        at the acceptance measured, over the verify at its fastest thread count (the draft idles
        during it) plus drafting just in time (the draft's estimate: this bucket's latest, else
        the nearest bucket's); None when either is unknown. From plain rounds on the 2-core EPYC at
        4 requests, T=0.7: plain 6.9 tokens/s a request, sync 7.5, SSD 3.8 (its verify on one
        core, 842 ms): probing SSD first cost 6 rounds of 1.05 s, and sync was never tried."""
        k = self.depth.k
        verify = self.costs.fastest(batch_size, k + 1)
        jit = self._jit(batch_size)
        if verify is None or jit is None or self.depth.observed < 1:
            return None
        return expected_tokens(self.depth.accept, k) / (verify + jit)

    def _jit(self, batch_size: int) -> Optional[float]:
        """The draft's estimate of drafting a round of this bucket just in time (seconds): its own,
        else the nearest bucket's scaled by the square root of the batch sizes' ratio (on the
        2-core EPYC 152 / 203 / 260 / 345-388 ms at 1 / 2 / 4 / 8 requests; taken flat from 4
        requests, 8 requests' sync rounds were predicted 1.2x faster than they ran, and a burst
        of 8 started in sync rounds that only tied plain ones)."""
        key = bucket_of(batch_size)
        have = [(abs(kk - key), -kk, x.size, m.jit_s / m.jit_rounds) for kk, x in self._buckets.items()
                for m in x.meters.values() if m.jit_rounds]
        if not have:
            return None
        _, _, size, jit = min(have)
        return jit * math.sqrt(max(batch_size, 1) / max(size, 1))

    def plain_rate(self, here: _Meter, batch_size: int) -> Optional[float]:
        """A plain round's predicted rate from a speculating mode's visit: the round without its
        wait, with a decode step in place of the verify: this bucket's measured step, else the
        cost model's line through the forwards measured (RoundCosts.predict, by tokens per
        forward: never the verify's own cost, since on some CPUs a verify of K+1 tokens costs one
        decode step, on others 2.4); None when neither exists."""
        step = self.costs.step_predicted(batch_size)
        if step is None:
            return None
        n = max(here.rounds, 1)
        r_0 = here.round_s / n - here.wait_s / n - here.verify_s / n + step
        return 1.0 / max(r_0, 1e-9)

    def _could_win(self, b: _Bucket, mode: str, rate: float) -> bool:
        """Whether `mode` at its best in this bucket (the cost model's forward and an optimistic
        acceptance: a speculating mode's tree hidden, its verify its whole round) could beat `rate`
        by the margin; True when it cannot be predicted. A draft of random weights (acceptance 0)
        cannot, so its brief SSD visit is not measured again: 9 more SSD rounds at 330 ms for one
        token against plain steps of 100 ms, every time a bucket's plain probe won."""
        if mode == "plain":
            step = self.costs.step_predicted(b.size)
            best = None if step is None else 1.0 / step
        else:
            k = self.depth.k
            verify = self.costs.predict(b.size, k + 1)
            best = None if verify is None else expected_tokens(self.depth.accept_optimistic, k) / verify
        return best is None or best > rate * (1 + MARGIN)

    def _enter(self, b: _Bucket, mode: str) -> None:
        old = b.meters.get(b.mode)
        if old is not None:
            old.age = max(old.age, 1)  # its visit is over
        b.mode = mode
        b.rounds = 0

    def _lose(self, b: _Bucket, mode: str) -> None:
        b.backoff[mode] = min(MAX_BACKOFF, 2 * b.backoff.get(mode, FIRST_PROBE.get(mode, 4)))
        b.next_probe[mode] = b.backoff[mode]
        b.probing = None

    def _bucket(self, batch_size: int) -> _Bucket:
        key = bucket_of(batch_size)
        b = self._buckets.get(key)
        if b is None:  # starts in the mode the cost model predicts faster, else where the nearest
            # bucket that has decided settled, else ssd
            decided = [(abs(k - key), x.mode) for k, x in self._buckets.items()
                       if x.probing is None and len(x.meters) > 1]
            first = self._predicted_first(batch_size) or (
                min(decided)[1] if decided else "ssd" if "ssd" in self.allowed else self.allowed[0])
            b = self._buckets[key] = _Bucket(mode=first, size=batch_size)
            self.version += 1
        return b

    def _predicted_first(self, batch_size: int) -> Optional[str]:
        """ssd, sync or plain for a bucket never served, from the forwards other buckets measured
        (RoundCosts.predict: the start-up prior scaled to them, or a line in tokens per forward)
        and the acceptance measured so far: SSD's round at best costs its verify (a tree hidden
        behind it), a plain round its decode step at the faster thread count, a sync round its
        verify at the faster count plus the draft's just-in-time estimate (sync_rate), chosen only
        when it beats both by the margin. None when the model cannot tell yet. At 32 requests on a
        2-core CPU a verify of 5 tokens each took 2.35 s on the target's one core, a decode step
        0.38 s on both: plain from the bucket's first round instead of after a decision and a probe."""
        if "ssd" not in self.allowed or "plain" not in self.allowed:
            return None
        k = self.depth.k
        step = self.costs.step_predicted(batch_size)
        verify = self.costs.predict(batch_size, k + 1)
        if step is None or verify is None or self.depth.observed < 1:
            return None
        ssd = expected_tokens(self.depth.accept, k) / (verify * self._round_per_verify())
        first = "plain" if 1.0 / step > ssd * (1 + MARGIN) else "ssd"
        sync = self.sync_rate(batch_size) if "sync" in self.allowed else None
        if sync is not None and sync > max(ssd, 1.0 / step) * (1 + MARGIN):
            return "sync"
        return first

    def _round_per_verify(self) -> float:
        """SSD's round over its verify, measured over every bucket's SSD visits (1 before any): the
        wait for trees and first drafts and the acceptance around the verify. On the real pair
        1.2-1.4; without it a new 8-request bucket looked a tie (5.2 vs plain's 5.5 tokens/s a
        request) and started in SSD rounds of 1.1 s for 4.4 tokens, and its burst ended with
        stragglers in small batches."""
        ms = [m for b in self._buckets.values() for mode, m in b.meters.items() if mode == "ssd" and m.rounds]
        verify = sum(m.verify_s for m in ms)
        return max(1.0, sum(m.round_s for m in ms) / verify) if verify > 0 else 1.0

    def table(self) -> dict:
        """Per bucket: the mode in use, switches and probes, and each mode's latest measurement."""
        out = {}
        for key, b in sorted(self._buckets.items()):
            lo = 1 << (key - 1)
            out[f"bs{lo}-{2 * lo - 1}"] = {
                "mode": b.mode, "switches": b.switches, "probes": b.probes,
                "probing": b.probing is not None, "plain_to_drain": b.drained,
                "measured": {m: x.summary() for m, x in sorted(b.meters.items())},
            }
        return out

