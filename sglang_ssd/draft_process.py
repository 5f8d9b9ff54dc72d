"""The draft process: loads the draft model on its own device and serves the SSD worker over ZeroMQ.

Started by the worker (draft_client.py) as `python -m sglang_ssd.draft_process CONFIG_JSON`. It
connects to the worker's endpoint, says Ready, then loops: answer each Step at once, then pre-draft
the next round while the target verifies. It exits on Shutdown or when its parent dies; a message it
cannot decode or a request it cannot serve is refused and counted, never fatal.
"""

from __future__ import annotations

import ctypes
import json
import logging
import os
import signal
import sys
import time
import traceback

import zmq

from sglang_ssd import wire
from sglang_ssd.draft_model import DraftModel, PoolFullError
from sglang_ssd.fanout import FanoutEstimator
from sglang_ssd.speculator import Speculator
from sglang_ssd.vocab import tokenizer_digest

logger = logging.getLogger("sglang_ssd.draft")

PARENT_POLL_MS = 500


def _die_with_parent() -> None:
    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except OSError:
        pass


def run(cfg: dict) -> int:
    _die_with_parent()
    parent = os.getppid()
    logging.basicConfig(level=logging.INFO, format="[%(asctime)s ssd-draft] %(message)s")
    import torch

    if cfg.get("threads"):
        torch.set_num_threads(int(cfg["threads"]))
    ctx = zmq.Context()
    sock = ctx.socket(zmq.PAIR)
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(cfg["endpoint"])
    try:
        if cfg.get("engine") == "sglang":  # SGLang's own ModelRunner
            from sglang_ssd.draft_model_sglang import SGLangDraftModel as engine
        else:
            engine = DraftModel
        model = engine(cfg["model_path"], cfg["device"], cfg["dtype"], int(cfg["kv_tokens"]))
        k = int(cfg["k"])
        estimator = None
        if cfg.get("fanout_budget"):  # no explicit list: plan the schedule online
            estimator = FanoutEstimator(k, int(cfg["fanout_budget"]), cap=model.vocab_size - 1)
        spec = Speculator(model, k, list(cfg["fanout"]), cfg["backup"],
                          int(cfg["backup_batch_threshold"]), float(cfg.get("saguaro_c", 1.0)),
                          estimator)
        sock.send(wire.encode(wire.Ready(
            protocol=wire.PROTOCOL_VERSION, pid=os.getpid(), vocab_size=model.vocab_size, k=spec.k, fanout=spec.fanout,
            device=str(model.device), tokenizer_digest=tokenizer_digest(cfg["model_path"]),
        )))
    except Exception as e:
        sock.send(wire.encode(wire.Fatal(error=f"{type(e).__name__}: {e}")))
        traceback.print_exc()
        return 1
    logger.info("draft ready: %s on %s, K=%d, fan-out %s", cfg["model_path"], model.device,
                spec.k, spec.fanout)

    poller = zmq.Poller()
    poller.register(sock, zmq.POLLIN)
    bad = 0
    last_round = -1
    while True:
        if not poller.poll(PARENT_POLL_MS):
            if os.getppid() != parent:
                return 0
            continue
        raw = sock.recv()
        try:
            msg = wire.decode_to_draft(raw)
        except wire.WireError as e:
            bad += 1
            if bad & (bad - 1) == 0:  # log the 1st, 2nd, 4th, 8th, ... bad message
                logger.error("%s (%d rejected so far)", e, bad)
            continue
        if isinstance(msg, wire.Shutdown):
            return 0
        if msg.round <= last_round:  # stale, duplicated or out of order: refuse, change nothing
            bad += 1
            logger.error("round %d after round %d refused", msg.round, last_round)
            if msg.reply:
                rids = {b.rid for b in msg.begins} | {o.rid for o in msg.outcomes}
                sock.send(wire.encode(wire.StepReply(round=msg.round, refusals=[
                    wire.Refusal(rid=r, reason=f"round {msg.round} is not after {last_round}") for r in rids])))
            continue
        last_round = msg.round
        t0 = time.perf_counter()
        try:
            spec.release(msg.releases)
            refusals = spec.begin(list(msg.begins))
            specs, more, backup_s = spec.lookup(list(msg.outcomes)) if msg.outcomes else ([], [], 0.0)
        except Exception as e:  # a round it cannot serve: refuse its requests, keep running
            logger.exception("round %d failed; its requests are refused", msg.round)
            rids = {b.rid for b in msg.begins} | {o.rid for o in msg.outcomes}
            spec.release(rids)
            spec.drop_speculation()
            refusals, specs, more, backup_s = [wire.Refusal(rid=r, reason=f"draft error: {e}") for r in rids], [], [], 0.0
        if msg.reply:
            sock.send(wire.encode(wire.StepReply(
                round=msg.round, specs=specs, refusals=refusals + more,
                times=wire.DraftTimes(tree_s=spec.last_tree_s,
                                      lookup_s=time.perf_counter() - t0, backup_s=backup_s),
                plan=spec.plan(),
            )))
        try:
            spec.speculate()
        except PoolFullError as e:
            logger.warning("%s; this round's speculation is skipped", e)
            spec.drop_speculation()
        except Exception:
            logger.exception("speculation failed; this round's speculation is skipped")
            spec.drop_speculation()


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1:
        print("usage: python -m sglang_ssd.draft_process CONFIG_JSON", file=sys.stderr)
        return 2
    return run(json.loads(argv[0]))


if __name__ == "__main__":
    sys.exit(main())
