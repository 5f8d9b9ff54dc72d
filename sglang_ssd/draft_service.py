"""The draft side's message loop, shared by the spawned draft process and the standalone server.

Answer each Step at once, then pre-draft the next round while the target verifies; when no
message waits, run a chunk of the queued prompt prefills (prefill_jobs.py), so a long prompt never
holds other requests' rounds for more than a chunk (and, when messages never stop coming, one
chunk after every BACKGROUND_EVERY of them, so the prefill still ends). Anything that cannot be decoded, comes out of
order, or cannot be served is refused and counted, never fatal.
A standalone server learns its speculation settings from the worker's Hello (a new Hello starts a
new session: a restarted worker finds a clean draft); a spawned process gets them at start.
"""

from __future__ import annotations

import logging
import os
import time
from typing import Callable, Optional

import zmq

from sglang_ssd import wire
from sglang_ssd.config import BACKUP_POLICIES, MAX_K
from sglang_ssd.draft_model import PoolFullError
from sglang_ssd.fanout import FanoutEstimator
from sglang_ssd.speculator import Speculator
from sglang_ssd.tree_budget import CALIBRATION_TOKENS, BudgetPlanner, ForwardCost, calibration_forward
from sglang_ssd.vocab import tokenizer_digest

logger = logging.getLogger("sglang_ssd.draft")

PARENT_POLL_MS = 500
BACKGROUND_EVERY = 4  # messages handled while prefill jobs wait before one chunk runs anyway


def check_hello(h: wire.Hello, vocab_size: int) -> Optional[str]:
    """Why a session's settings cannot be served, naming the value; None when they can."""
    if h.protocol != wire.PROTOCOL_VERSION:
        return f"protocol {h.protocol}, this draft speaks {wire.PROTOCOL_VERSION}"
    if not 1 <= h.k <= MAX_K:
        return f"k={h.k} outside [1, {MAX_K}]"
    if len(h.fanout) != h.k + 1 or any(f < 0 or f >= vocab_size for f in h.fanout):
        return f"fanout={h.fanout} is not K+1={h.k + 1} values in [0, {vocab_size})"
    if h.backup not in BACKUP_POLICIES:
        return f"backup={h.backup!r} not one of {BACKUP_POLICIES}"
    if h.backup_batch_threshold < 1:
        return f"backup_batch_threshold={h.backup_batch_threshold} < 1"
    if not 0.0 < h.saguaro_c <= 1.0:
        return f"saguaro_c={h.saguaro_c} outside (0, 1]"
    if h.fanout_budget is not None and not 1 <= h.fanout_budget <= 4096:
        return f"fanout_budget={h.fanout_budget} outside [1, 4096]"
    return None


class DraftService:
    def __init__(self, model, model_path: str):
        self.model = model
        self.digest = tokenizer_digest(model_path)
        self.spec: Optional[Speculator] = None
        self.cost: Optional[ForwardCost] = None  # calibrated once, for time-sized budgets
        self.session = ""
        self.last_round = -1
        self.rejected = 0

    def open(self, h: wire.Hello) -> wire.Ready:
        """Start a session: forget every request of the previous one (its KV stays in the
        prefix cache, which the new session inherits)."""
        prefix = None
        if self.spec is not None:
            self.spec.close()
            prefix = self.spec.prefix
        estimator, planner = None, None
        if h.fanout_budget:  # no explicit list: plan the schedule online
            estimator = FanoutEstimator(h.k, int(h.fanout_budget), cap=self.model.vocab_size - 1)
        cost = self._forward_cost() if h.fanout_budget and h.auto_budget else None
        if cost is not None:  # and size B by time
            planner = BudgetPlanner(int(h.fanout_budget), cost)
        self.spec = Speculator(self.model, h.k, list(h.fanout), h.backup, h.backup_batch_threshold,
                               h.saguaro_c, estimator, prefix=prefix, planner=planner)
        self.session = h.session
        self.last_round = -1
        return wire.Ready(protocol=wire.PROTOCOL_VERSION, pid=os.getpid(),
                          vocab_size=self.model.vocab_size, k=self.spec.k, fanout=self.spec.fanout,
                          device=str(self.model.device), tokenizer_digest=self.digest,
                          session=h.session)

    def _forward_cost(self) -> Optional[ForwardCost]:
        """The draft's forward-cost curve, measured once; None (B stays fixed) if it cannot be."""
        if self.cost is None:
            t0 = time.perf_counter()
            room = self.model.pool.size - min(256, self.model.pool.size // 4)
            try:
                self.cost = ForwardCost.calibrate(calibration_forward(self.model),
                                                  [n for n in CALIBRATION_TOKENS if n <= room])
            except Exception:  # a pool too full or small to measure in: keep B fixed
                logger.exception("draft forward cost could not be measured; the fan-out budget stays fixed")
                return None
            logger.info("draft forward cost (ms) by new tokens: %s, calibrated in %.1f s",
                        {n: round(t * 1e3, 1) for n, t in zip(self.cost.ns, self.cost.ts)},
                        time.perf_counter() - t0)
        return self.cost

    def _reject(self, why: str) -> None:
        self.rejected += 1
        if self.rejected & (self.rejected - 1) == 0:  # log the 1st, 2nd, 4th, 8th, ... one
            logger.error("%s (%d rejected so far)", why, self.rejected)

    def handle(self, raw: bytes) -> tuple[Optional[bytes], bool]:
        """(reply or None, whether to pre-draft now). Raises SystemExit on Shutdown when spawned."""
        try:
            msg = wire.decode_to_draft(raw)
        except wire.WireError as e:
            self._reject(str(e))
            return None, False
        if isinstance(msg, wire.Shutdown):
            raise _Shutdown()
        if isinstance(msg, wire.Hello):
            problem = check_hello(msg, self.model.vocab_size)
            if problem:
                self._reject(f"hello refused: {problem}")
                return wire.encode(wire.Fatal(error=f"draft refused the session: {problem}")), False
            logger.info("session %s: K=%d fan-out %s backup %s", msg.session, msg.k, msg.fanout, msg.backup)
            return wire.encode(self.open(msg)), False
        rids = {b.rid for b in msg.begins} | {o.rid for o in msg.outcomes}
        bad_depth = self.spec is not None and not 0 <= msg.depth <= self.spec.k
        if self.spec is None or msg.round <= self.last_round or bad_depth:  # stale, out of order
            why = "no session (send Hello first)" if self.spec is None else \
                f"depth={msg.depth} outside [0, {self.spec.k}] (the session's K)" if bad_depth else \
                f"round {msg.round} is not after {self.last_round}"
            self._reject(f"step refused: {why}")
            if not msg.reply:
                return None, False
            return wire.encode(wire.StepReply(
                round=msg.round, refusals=[wire.Refusal(rid=r, reason=why) for r in sorted(rids)],
                health=wire.Health(rejected=self.rejected, last_round=self.last_round,
                                   out_of_order=self.spec is not None and not bad_depth))), False
        self.last_round = msg.round
        spec = self.spec
        t0 = time.perf_counter()
        tree_s, tree_depth = spec.last_tree_s, spec.last_tree_depth  # this round's hits came from it
        try:
            if msg.depth:
                spec.set_depth(msg.depth)
            spec.verify_s = msg.verify_s
            spec.release(msg.releases, keep_jobs={b.rid for b in msg.begins})  # (a resync's prefill goes on)
            if msg.warm:
                spec.warm(list(msg.warm))
            refusals = spec.begin(list(msg.begins))
            specs, more, backup_s = spec.lookup(list(msg.outcomes)) if msg.outcomes else ([], [], 0.0)
        except Exception as e:  # a round it cannot serve: refuse its requests, keep running
            logger.exception("round %d failed; its requests are refused", msg.round)
            spec.release(rids, cache=False)
            spec.drop_speculation()
            refusals, specs, more, backup_s = [wire.Refusal(rid=r, reason=f"draft error: {e}") for r in rids], [], [], 0.0
        if not msg.reply:
            return None, msg.predraft
        predraft = msg.predraft
        pool = self.model.pool
        used, cached = spec.pool_usage()
        return wire.encode(wire.StepReply(
            round=msg.round, specs=specs, refusals=refusals + more,
            times=wire.DraftTimes(tree_s=tree_s, lookup_s=time.perf_counter() - t0,
                                  backup_s=backup_s, depth=tree_depth),
            plan=spec.plan(),
            health=wire.Health(pool_used=used, pool_size=pool.size, pool_cached=cached,
                               prefill_computed=spec.prefill_computed, prefill_reused=spec.prefill_reused,
                               rejected=self.rejected,
                               backup=spec.last_backup, misses=spec.last_misses,
                               backup_threshold=spec.backup_threshold(), last_round=self.last_round,
                               first_predrafted=spec.first.found, first_missed=spec.first.missed),
        )), predraft

    def answer_mid_tree(self, raw: bytes, may_answer: bool = True) -> tuple[Optional[bytes], bool, bool]:
        """(reply, outcome waiting, tree moot) for a Step that arrives between tree steps. A Step
        that only asks for first speculations (outcomes with k = -1: the worker's first decode round
        after a Begin), which the tree in progress does not touch, is answered at once: the
        target's first verify overlaps the first tree instead of waiting for it. Anything else
        waits for the tree (reply None); whether it brings outcomes the worker waits on says
        whether the tree may be cut short for it (Speculator.worth_stopping). A Step releasing every
        request the tree is for (they finished, or the worker paused them for plain rounds, whose
        target forward then borrows this process's cores) makes the tree moot: it stops at once.
        may_answer False: an earlier Step is already waiting, and replies keep the order of their
        Steps."""
        try:
            msg = wire.decode_to_draft(raw)
        except wire.WireError:
            return None, False, False
        spec = self.spec
        if not isinstance(msg, wire.Step) or spec is None or msg.round <= self.last_round:
            return None, False, False
        moot = bool(spec.tree_rids) and spec.tree_rids <= set(msg.releases)
        waiting = msg.reply and any(o.k >= 0 for o in msg.outcomes)
        if (not may_answer or not msg.reply or msg.begins or msg.releases or msg.warm or not msg.outcomes
                or msg.depth not in (0, spec.depth) or waiting):
            return None, waiting, moot
        return self.handle(raw)[0], False, False

    def has_background(self) -> bool:
        return self.spec is not None and self.spec.has_background()

    def background(self) -> None:
        """One chunk of the queued prefills (between rounds)."""
        try:
            self.spec.background()
        except Exception:
            logger.exception("background prefill failed; its jobs are dropped")
            self.spec.first.jobs.clear()

    def speculate(self, between: Optional[Callable[[], bool]] = None) -> None:
        try:
            self.spec.speculate(between)
        except PoolFullError as e:
            logger.warning("%s; this round's speculation is skipped", e)
            self.spec.drop_speculation()
        except Exception:
            logger.exception("speculation failed; this round's speculation is skipped")
            self.spec.drop_speculation()


class _Shutdown(Exception):
    pass


def serve(sock: zmq.Socket, service: DraftService, alive: Callable[[], bool] = lambda: True,
          exit_on_shutdown: bool = True) -> int:
    """Run until Shutdown (when `exit_on_shutdown`) or until `alive()` turns False."""
    poller = zmq.Poller()
    poller.register(sock, zmq.POLLIN)
    pending: list[bytes] = []  # received mid-tree, handled once the tree is done (or stopped)
    # When the last reply left, and the worker's cycle without waiting: from that reply to a
    # Step it waits on (seen mid-tree, at the end of a tree step: an upper bound, so cautious).
    sent_at, cycle = [time.perf_counter()], [0.0]

    def between() -> bool:
        moot = False
        while sock.poll(0, zmq.POLLIN):
            raw = sock.recv()
            reply, waits, gone = service.answer_mid_tree(raw, may_answer=not pending)  # answers keep order
            moot = moot or gone
            if waits and not cycle[0]:
                cycle[0] = time.perf_counter() - sent_at[0]
            if reply is None:
                pending.append(raw)
            else:
                sock.send(reply)
                sent_at[0] = time.perf_counter()
        return moot or (cycle[0] > 0 and service.spec.worth_stopping(cycle[0]))

    starved = 0  # messages handled since the last chunk of background prefill
    while True:
        if pending:
            raw = pending.pop(0)
        elif service.has_background() and (starved >= BACKGROUND_EVERY or not sock.poll(0, zmq.POLLIN)):
            if not alive():
                return 0
            service.background()
            starved = 0
            continue
        elif not poller.poll(PARENT_POLL_MS):
            if not alive():
                return 0
            continue
        else:
            raw = sock.recv()
        starved += service.has_background()
        try:
            reply, draft_now = service.handle(raw)
        except _Shutdown:
            if exit_on_shutdown:
                return 0
            logger.info("worker closed session %s", service.session)
            if service.spec is not None:
                service.spec.close()
            continue
        if reply is not None:
            sock.send(reply)
            sent_at[0] = time.perf_counter()
        if draft_now:
            cycle[0] = 0.0
            service.speculate(between)
