"""Hand-off cost per round by transport: spawned draft over ipc vs a draft server over TCP
(loopback, plain and CurveZMQ), on the real CPU pair of bench/compare.py.

The hand-off is the part of the target's wait for the draft that is not the draft's own work
(transport, encoding, decoding): `handoff_ms_per_step` in the SSD statistics. Greedy rounds carry
K token ids per request; sampled rounds also carry q' [K, V] float32 (786 KB per request for the
49,152-token SmolLM2 vocabulary at K=4), where the transport shows. Loopback TCP is the
lower bound of a cross-node link (no wire latency). Pinned: target on core 0, draft on core 1.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import models  # noqa: E402
import prompt_sets  # noqa: E402
import servers  # noqa: E402

from sglang_ssd.testing.server import CPUServer, free_port  # noqa: E402


def draft_server(draft: Path, endpoint: str, log: Path, *extra: str) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-m", "sglang_ssd.draft_server", "--model-path", str(draft),
                             "--endpoint", endpoint, "--threads", "1", *extra],
                            stdout=open(log, "w"), stderr=subprocess.STDOUT)
    os.sched_setaffinity(proc.pid, {1})
    deadline = time.monotonic() + 300
    while "draft server ready on" not in log.read_text():
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            raise RuntimeError(f"draft server did not start: {log.read_text()[-1500:]}")
        time.sleep(0.5)
    return proc


def measure(srv: CPUServer, ids: list[int], temp: float, tokens: int) -> dict:
    before = srv.ssd_stats()
    sp = {"temperature": temp, "max_new_tokens": tokens, "ignore_eos": True}
    srv.generate(ids, sp)
    after = srv.ssd_stats()
    steps = after["steps"] - before["steps"]
    return {"rounds": steps,
            "handoff_ms_per_round": 1e3 * (after["handoff_s"] - before["handoff_s"]) / steps,
            "wait_ms_per_round": 1e3 * (after["draft_wait_s"] - before["draft_wait_s"]) / steps}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tokens", type=int, default=64)
    ap.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results" / "handoff_transport.json")
    args = ap.parse_args()
    target, draft = models.ensure_target(), models.draft_dir()
    from transformers import AutoTokenizer

    ids = prompt_sets.encode(AutoTokenizer.from_pretrained(str(target)), prompt_sets.load_set("humaneval")[0])
    work = Path(tempfile.mkdtemp(prefix="ssd-handoff-"))
    keys = work / "keys"
    subprocess.run([sys.executable, "-m", "sglang_ssd.draft_server", "--make-curve-keys", str(keys)], check=True)
    os.sched_setaffinity(0, {1})
    base = servers.BASE_ARGS + ["--speculative-algorithm", "SSD", "--speculative-draft-model-path", str(draft),
                                "--speculative-num-steps", "4", "--ssd-draft-threads", "1"]
    results = {}
    for name in ("ipc (spawned)", "tcp loopback", "tcp loopback + curve"):
        ds, extra = None, []
        if name != "ipc (spawned)":
            endpoint = f"tcp://127.0.0.1:{free_port()}"
            curve = ["--curve-keys", str(keys)] if "curve" in name else []
            ds = draft_server(draft, endpoint, work / f"draft-{len(results)}.log", *curve)
            extra = ["--ssd-draft-endpoint", endpoint] + (["--ssd-curve-keys", str(keys)] if curve else [])
        srv = CPUServer(target, base + extra, log_path=str(work / f"target-{len(results)}.log"), cpus={0},
                        startup_timeout=600)
        try:
            if ds is None:
                servers.pin_threads(srv.ssd_stats()["draft_pid"], {1})
            srv.generate(ids, {"temperature": 0, "max_new_tokens": 8, "ignore_eos": True})  # warm-up
            results[name] = {str(t): measure(srv, ids, t, args.tokens) for t in (0.0, 0.7)}
        finally:
            srv.stop(grace_s=1.0)
            if ds is not None:
                ds.kill()
                ds.wait()
        print(name, json.dumps(results[name]), flush=True)
    print("\n| transport | hand-off ms/round T=0 (ids) | hand-off ms/round T=0.7 (ids + q') | draft wait ms/round T=0 / T=0.7 |")
    print("|---|---|---|---|")
    for name, r in results.items():
        print(f"| {name} | {r['0.0']['handoff_ms_per_round']:.2f} | {r['0.7']['handoff_ms_per_round']:.2f} | "
              f"{r['0.0']['wait_ms_per_round']:.1f} / {r['0.7']['wait_ms_per_round']:.1f} |")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=1))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
