"""Which CPU cores the target and a CPU draft compute on, round by round (CPU servers only).

On a CPU server the draft process and the target's scheduler share the machine's cores. A fixed
split (the target on some, the draft on the rest) wastes the draft's cores whenever the draft has
nothing to do: during a prefill (on a 2-core EPYC a 1k-token prompt prefilled on one core took
1.7-2x the time it takes on both), in plain rounds (at 8-32 concurrent requests plain decoding on
both cores served 1.5x what it serves on one) and in sync rounds (the draft drafts before the
verify and idles during it). So the split is elastic:

- the draft process is pinned to its own cores (`draft`, the last --ssd-draft-threads cores of the
  server's, or --ssd-draft-cpus) for its whole life;
- the target computes on the other cores (`target`) while the draft works alongside it (SSD
  rounds: the draft builds the next round's tree during the verify);
- the target borrows the draft's cores (`all`) for forwards during which the draft is idle:
  prefills (the draft is told of new prompts after the target's prefill), plain rounds and sync
  verifies, with the thread count this machine measured to be faster for that forward
  (ThreadChoice: on some CPUs two threads decode slower than one).

A split needs at least two cores; with one, or a draft that does not run on this machine's CPU
(a GPU draft, a draft server), everything stays as SGLang set it (`CoreSplit.reason` says why).
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import Iterable, Optional

logger = logging.getLogger(__name__)

EXPLORE_EVERY = 1024  # forwards at one (bucket, width) between re-measurements of the slower thread count,
# once the doubling intervals (8, 16, ..., 512) have passed: each costs a forward at the slower count
# (+85 ms at batch 1 on the 2-core EPYC), and the faster count's own forwards show a change of load
CLEARLY = 1.5  # a count this much slower (measured, or by its line) is not measured at the doubling intervals
MIN_SAMPLES = (2, 1)  # measurements of all cores, then of the target's own, before the faster is trusted
                     # (the first forward at a new point may run cold; the second count is re-measured
                     # every EXPLORE_EVERY forwards anyway)


def parse_cpu_list(text: str) -> tuple[int, ...]:
    """'3', '2-3', '0,2-3' -> sorted core ids; ValueError naming the text when it is not a list."""
    out: set[int] = set()
    for part in str(text).split(","):
        part = part.strip()
        if not part:
            raise ValueError(f"{text!r}: empty entry in the core list")
        lo, sep, hi = part.partition("-")
        try:
            a, b = int(lo), int(hi) if sep else int(lo)
        except ValueError:
            raise ValueError(f"{text!r}: expected core ids like 3, 2-3 or 0,2-3") from None
        if a < 0 or b < a:
            raise ValueError(f"{text!r}: {part!r} is not a range of core ids")
        out.update(range(a, b + 1))
    return tuple(sorted(out))


@dataclass(frozen=True)
class CoreSplit:
    """The server's cores (`all`), the target's while the draft works (`target`) and the draft's
    (`draft`); inactive (`draft` empty) with the `reason` when there is nothing to split."""

    all: tuple[int, ...]
    target: tuple[int, ...]
    draft: tuple[int, ...] = ()
    reason: str = ""

    @property
    def active(self) -> bool:
        return bool(self.draft)

    def describe(self) -> str:
        if not self.active:
            return f"no core split ({self.reason})"
        return (f"draft on cores {list(self.draft)}, target on {list(self.target)} while the draft "
                f"works and on {list(self.all)} while it is idle")


def split_cores(available: Iterable[int], draft_threads: int, explicit: Optional[tuple[int, ...]] = None,
                enabled: bool = True) -> CoreSplit:
    """The split of `available` cores for a CPU draft of `draft_threads` threads: `explicit` cores
    for the draft (they must be among the available ones and leave the target at least one), else
    the last `draft_threads` cores, at most all but one."""
    cores = tuple(sorted(set(available)))
    if not enabled:
        return CoreSplit(cores, cores, reason="--ssd-draft-cpus off")
    if explicit is not None:
        outside = [c for c in explicit if c not in cores]
        if outside:
            raise ValueError(f"--ssd-draft-cpus={','.join(map(str, explicit))}: cores {outside} are not "
                             f"among the server's cores {list(cores)}")
        target = tuple(c for c in cores if c not in explicit)
        if not target:
            raise ValueError(f"--ssd-draft-cpus={','.join(map(str, explicit))}: leaves the target no core "
                             f"of the server's {list(cores)}")
        return CoreSplit(cores, target, tuple(explicit))
    if len(cores) < 2:
        return CoreSplit(cores, cores, reason=f"the server has {len(cores)} core")
    n = max(1, min(int(draft_threads), len(cores) - 1))
    return CoreSplit(cores, cores[:-n], cores[-n:])


def server_cores() -> tuple[int, ...]:
    """The cores this process may run on."""
    try:
        return tuple(sorted(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return tuple(range(os.cpu_count() or 1))


class ProcessThreads:
    """The current process's torch threads and the cores all its threads may run on; each change
    is applied only when it differs from the last (the round loop calls this every round)."""

    def __init__(self):
        self.threads: Optional[int] = None
        self.cpus: Optional[tuple[int, ...]] = None
        self.changes = 0

    def use(self, threads: int, cpus: tuple[int, ...]) -> None:
        import torch

        if cpus != self.cpus:
            pin_process(cpus)
            self.cpus = cpus
            self.changes += 1
        if threads != self.threads:
            torch.set_num_threads(threads)
            self.threads = threads


def pin_process(cpus: Iterable[int], pid: Optional[int] = None) -> None:
    """sched_setaffinity on every thread of `pid` (this process by default): torch's OpenMP pool,
    SGLang's and ZeroMQ's threads alike."""
    cpus = set(cpus)
    root = f"/proc/{pid or os.getpid()}/task"
    try:
        tids = [int(t) for t in os.listdir(root)]
    except OSError:
        tids = [0]
    for tid in tids:
        try:
            os.sched_setaffinity(tid, cpus)
        except (ProcessLookupError, PermissionError, OSError):
            pass


class ThreadChoice:
    """How many threads a target forward gets while the draft is idle: the server's cores or the
    target's own, whichever this machine measured faster for that (batch bucket, width) in the
    round cost model (`costs.measured(bs, width, threads)`). A count not yet measured there
    MIN_SAMPLES times is measured first (all cores first), unless the cost model's line for that
    count (its forwards at other batch sizes) already puts it CLEARLY slower: at 32 requests a
    one-core step (620 ms, the line says ~600) against 360 ms on both cores is not worth timing.
    The slower is measured again at the 8th, 16th, 32nd, ... forward while it could be faster
    (within CLEARLY of the faster, or timed above what its line predicts: 16 requests' plain
    steps on both cores timed at 813 ms while the draft prefilled their prompts, 225 ms after,
    are not shunned for long), and every EXPLORE_EVERY forwards in any case. Each such forward
    cost 260 ms at 32 requests, 85 ms at one: four of them were 5% of a 48-token burst."""

    def __init__(self, costs, split: CoreSplit):
        self.costs = costs
        self.split = split
        self.counts = (len(split.all), len(split.target))
        self._seen: dict[tuple[int, int], int] = {}

    def threads(self, batch_size: int, width: int) -> tuple[int, bool]:
        """(threads, measuring): `measuring` True when the count is chosen to be measured, not
        because it is the faster (the mode planner does not judge its mode by such a round)."""
        from sglang_ssd.round_costs import bucket_of

        key = (bucket_of(batch_size), width)
        n = self._seen[key] = self._seen.get(key, 0) + 1
        tokens = batch_size * width
        # the fastest recent forward of each count: cold forwards (a new batch shape's first, when
        # oneDNN makes its kernels) and interruptions only ever add time, so the minimum is the
        # forward's own cost (two cold forwards at 16 requests once made one thread look faster)
        timed = []
        for i, (t, least) in enumerate(zip(self.counts, MIN_SAMPLES)):
            if self.costs.samples(batch_size, width, t) < least:
                line = self.costs.line(t, tokens) if i > 0 else None
                if line is None or line < CLEARLY * min(timed)[0]:
                    return t, i > 0
                timed.append((line, t))  # its line (other buckets' forwards) says it is clearly slower
            else:
                timed.append((self.costs.fastest_measured(batch_size, width, t), t))
        (fast, best), (slow, other) = min(timed), max(timed)
        if n % EXPLORE_EVERY == 0:
            return other, True
        if 8 <= n < EXPLORE_EVERY and n & (n - 1) == 0:  # could the slower be faster after all: close,
            line = self.costs.line(other, tokens)  # or timed above what its line says (the draft was busy)
            if slow < CLEARLY * fast or (line is not None and line < fast):
                return other, True
        return best, False


def split_for_server(server_args, cfg) -> CoreSplit:
    """How a CPU server's target and its spawned CPU draft share the server's cores: the split
    of --ssd-draft-cpus, or none (with the reason) where the draft is not this server's to pin."""
    cores = server_cores()
    why = None
    if str(server_args.device) != "cpu":
        why = "the target is not on the CPU"
    elif (cfg.draft_device or "cpu") != "cpu" or cfg.draft_endpoint is not None:
        why = "the draft does not run in this server's CPU process"
    elif int(server_args.tp_size) > 1 or int(getattr(server_args, "dp_size", 1) or 1) > 1:
        why = "tensor or data parallel ranks have their own cores (SGLANG_CPU_OMP_THREADS_BIND)"
    if why is not None:
        return CoreSplit(cores, cores, reason=why)
    explicit = None if cfg.draft_cpus in ("auto", "off") else parse_cpu_list(cfg.draft_cpus)
    return split_cores(cores, cfg.draft_threads or 1, explicit, enabled=cfg.draft_cpus != "off")


class TargetCores:
    """The target's side of a split, applied forward by forward in the scheduler process: its own
    cores while the draft works (SSD rounds), the count ThreadChoice picks while the draft idles
    (plain rounds, sync verifies), every core for prefills. Inactive without a split."""

    def __init__(self, split: CoreSplit, costs):
        self.split = split
        self.threads = ProcessThreads()
        self.choice: Optional[ThreadChoice] = None
        if split.active:
            costs.speculating = len(split.target)
            costs.counts = (len(split.all), len(split.target))
            self.choice = ThreadChoice(costs, split)
            self.threads.use(len(split.target), split.target)

    @property
    def active(self) -> bool:
        return self.split.active

    def use(self, kind: str, batch_size: int, width: int) -> tuple[Optional[int], bool]:
        """(threads, measuring) for a forward of `kind` (ssd, sync, plain; prefill: width 0);
        `measuring` when the count was chosen to be measured. None threads without a split."""
        s = self.split
        if not s.active:
            return None, False
        n, measuring = len(s.target), False
        if kind != "ssd":
            n, measuring = self.choice.threads(batch_size, width) if width else (len(s.all), False)
        self.threads.use(n, s.all if n > len(s.target) else s.target)
        return n, measuring

    def each_count(self) -> list:
        """[(threads, apply)] for every thread count a target forward may run on, apply() putting
        this process on it (target_prior.measure); threads 0 stands for the one count of a server
        without a split (the cost model's key for it). restore() afterwards."""
        s = self.split
        if not s.active:
            return [(0, lambda: None)]
        return [(len(cpus), lambda cpus=cpus: self.threads.use(len(cpus), cpus)) for cpus in (s.all, s.target)]

    def restore(self) -> None:
        """Back to the target's own cores (as at start)."""
        if self.split.active:
            self.threads.use(len(self.split.target), self.split.target)

    def describe(self):
        """For the statistics' config: the cores, or why there is no split."""
        s = self.split
        return dict(all=list(s.all), target=list(s.target), draft=list(s.draft)) if s.active else s.reason
