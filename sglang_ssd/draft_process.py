"""The spawned draft process: loads the draft model on its own device and serves the SSD worker.

Started by the worker (draft_client.py) as `python -m sglang_ssd.draft_process CONFIG_JSON`. It
connects to the worker's private endpoint, says Ready, then runs the shared draft loop
(draft_service.py). It exits on Shutdown or when its parent dies; on the way out (including the
SIGTERM its parent's death sends it) it removes the worker's socket directory if still there.
"""

from __future__ import annotations

import ctypes
import json
import logging
import os
import shutil
import signal
import sys
import traceback

import zmq

from sglang_ssd import wire
from sglang_ssd.draft_service import DraftService, serve

logger = logging.getLogger("sglang_ssd.draft")


def _die_with_parent(cleanup) -> None:
    """SIGTERM when the parent dies (even by SIGKILL), handled by removing our socket directory."""
    def on_term(signum, frame):
        cleanup()
        os._exit(0)

    signal.signal(signal.SIGTERM, on_term)
    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except OSError:
        pass


def load_model(model_path: str, device: str, dtype: str, kv_tokens: int, engine: str):
    if engine == "sglang":  # SGLang's own ModelRunner
        from sglang_ssd.draft_model_sglang import SGLangDraftModel as cls
        return cls(model_path, device, dtype, int(kv_tokens))
    from sglang_ssd.draft_graphs import install
    from sglang_ssd.draft_model import DraftModel

    model = DraftModel(model_path, device, dtype, int(kv_tokens))
    install(model)  # CUDA graphs for its forwards on a GPU (nothing on CPU or with SGLANG_SSD_DRAFT_GRAPHS=0)
    return model


def hello_of(cfg: dict) -> wire.Hello:
    return wire.Hello(protocol=wire.PROTOCOL_VERSION, session="spawned", k=int(cfg["k"]),
                      fanout=list(cfg["fanout"]), backup=cfg["backup"],
                      backup_batch_threshold=int(cfg["backup_batch_threshold"]),
                      saguaro_c=float(cfg.get("saguaro_c", 1.0)),
                      fanout_budget=cfg.get("fanout_budget"), auto_budget=bool(cfg.get("auto_budget")))


def run(cfg: dict) -> int:
    endpoint = cfg["endpoint"]
    sock_dir = cfg.get("socket_dir")

    def cleanup():
        if sock_dir:
            shutil.rmtree(sock_dir, ignore_errors=True)

    _die_with_parent(cleanup)
    parent = os.getppid()
    logging.basicConfig(level=logging.INFO, format="[%(asctime)s ssd-draft] %(message)s")
    if cfg.get("cpus"):  # its own cores for its whole life (cpu_cores.py), before torch starts threads
        from sglang_ssd.cpu_cores import pin_process

        pin_process(cfg["cpus"])
    import torch

    if cfg.get("threads"):
        torch.set_num_threads(int(cfg["threads"]))
    ctx = zmq.Context()
    sock = ctx.socket(zmq.PAIR)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.MAXMSGSIZE, wire.MAX_TO_DRAFT_BYTES)
    sock.connect(endpoint)
    try:
        model = load_model(cfg["model_path"], cfg["device"], cfg["dtype"], cfg["kv_tokens"],
                           cfg.get("engine", "hf"))
        service = DraftService(model, cfg["model_path"])
        ready = service.open(hello_of(cfg))
        sock.send(wire.encode(ready))
    except Exception as e:
        sock.send(wire.encode(wire.Fatal(error=f"{type(e).__name__}: {e}")))
        traceback.print_exc()
        return 1
    logger.info("draft ready: %s on %s, K=%d, fan-out %s", cfg["model_path"], model.device,
                ready.k, ready.fanout)
    try:
        return serve(sock, service, alive=lambda: os.getppid() == parent)
    finally:
        if os.getppid() != parent:
            cleanup()


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1:
        print("usage: python -m sglang_ssd.draft_process CONFIG_JSON", file=sys.stderr)
        return 2
    return run(json.loads(argv[0]))


if __name__ == "__main__":
    sys.exit(main())
