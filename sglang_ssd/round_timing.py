"""A decode round's times, and what the planners learn from them.

The worker times each round (its wait for the draft, the target's verify, the whole round) and
hands the times here: the mode planner and automatic K learn from them, the draft gets the
verify's recent median with the next Step (its tree is sized to end when the verify does; a
median, because a server's first verifies run cold: on the real pair on a CPU the first took
1054 ms against ~300 ms later, and a moving average seeded with it kept the draft planning trees
for a verify 1.5-3x too long for 20 rounds, each overrunning the real one), and the statistics
show the planners' tables whenever a decision changed them (not every round: copying them costs).
The planners skip the server's first rounds, which run cold (kernels chosen and memory touched for
the first time; there the first four verifies took 1055 / 514 / 496 / 491 ms, then ~250): judged
on them, a depth or a mode would be charged for the start-up.
"""

from __future__ import annotations

import json
import os
import statistics
import time
from collections import deque
from typing import NamedTuple, Optional

from sglang_ssd.mode_planner import ModePlanner

RECENT_VERIFIES = 5  # speculated rounds the verify's median is taken over
COLD_ROUNDS = 4  # decode rounds after start-up the planners do not learn from
TABLES_EVERY = 16  # rounds between copies of the planners' tables into the statistics at the latest


class TreeTimes(NamedTuple):
    """What the draft's reply says about this round's speculation."""

    tree_s: float = 0.0  # the tree it came from took this long
    depth: int = 0  # and was built this deep
    jit_s: float = 0.0  # the draft's estimate of drafting this batch just in time (0: unknown)


class RoundTiming:
    def __init__(self, planner: ModePlanner, stats):
        self.planner = planner
        self.stats = stats
        self._verifies: deque = deque(maxlen=RECENT_VERIFIES)
        self._tables = (-1, -1)  # the planners' versions last copied into the statistics
        self.rounds = 0  # decode rounds seen
        self._last_mode: Optional[str] = None  # the previous round's (its first after a change is atypical)
        path = os.environ.get("SGLANG_SSD_ROUND_LOG")  # one JSON line per decode round (diagnostics)
        self._log = open(path, "a", buffering=1) if path else None

    @property
    def verify_s(self) -> float:
        """The median of the latest speculated rounds' verifies (0 before the first)."""
        return statistics.median(self._verifies) if self._verifies else 0.0

    def verified(self, mode: str, seconds: float) -> None:
        """The target's forward of this round took `seconds`; only SSD rounds' verifies size the
        draft's tree (a sync verify may run on the draft's cores too, a plain step verifies nothing)."""
        if mode == "ssd":
            self._verifies.append(seconds)
        self.stats.verify_s += seconds

    def observe(self, mode: str, k: int, batch_size: int, accepted: list[int], unspeculated: list[bool],
                hits: list[Optional[bool]], verify_s: float, round_s: float, wait_s: float,
                tree: TreeTimes, threads: Optional[int] = None, typical: bool = True,
                rids: Optional[list] = None) -> None:
        """One verified round: draft tokens `accepted` per request (those served without drafts,
        `unspeculated`, do not count toward speculating modes; `rids` the requests, for their own
        acceptance: ModePlanner.observe_requests); `hits` says which requests looked
        up a pre-drafted speculation (None: none), so the wait was for a tree, not for the draft's
        first drafts of new requests; `threads` the torch threads of its target forward (None:
        the speculating count); `typical` False: not what its mode costs in steady state
        (ModePlanner.observe)."""
        self.rounds += 1
        if self._log is not None:
            self._log.write(json.dumps({
                "t": round(time.time(), 4), "mode": mode, "k": k, "bs": batch_size, "threads": threads,
                "round_ms": round(1e3 * round_s, 2), "verify_ms": round(1e3 * verify_s, 2),
                "wait_ms": round(1e3 * wait_s, 2), "tree_ms": round(1e3 * tree.tree_s, 2),
                "accepted": list(accepted), "hits": hits, "typical": typical,
                "drain": self.planner.last_drain}) + "\n")
        if rids is not None:
            self.planner.observe_requests(rids, accepted, [not p for p in unspeculated], 0 if mode == "plain" else k)
        if self.rounds > COLD_ROUNDS:
            served = accepted if mode == "plain" else [a for a, p in zip(accepted, unspeculated) if not p]
            overrun = wait_s if any(h is not None for h in hits) else 0.0
            self.planner.observe(mode, k, batch_size, served, verify_s, round_s, wait_s, tree.tree_s,
                                 tree.depth, overrun_s=overrun, jit_s=tree.jit_s, threads=threads,
                                 typical=typical and mode == self._last_mode)
        self._last_mode = mode
        depth = self.planner.depth
        self.stats.live_k = depth.k
        self.stats.live_mode = self.planner.mode
        version = (depth.version, self.planner.version)
        if version != self._tables or self.rounds % TABLES_EVERY == 0:  # (a pinned mode never decides)
            self._tables = version
            if depth.auto:
                self.stats.auto_k = depth.table()
            self.stats.modes = self.planner.table()
            self.stats.target_ms = self.planner.costs.table()
            self.stats.target_prior = self.planner.costs.prior_table()
