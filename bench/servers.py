"""Benchmark servers: one real CPU SGLang server per (mode, steps, protocol), pinned as the paper does.

Modes: ar (plain decoding), ngram (SGLang's NGRAM; steps = draft tokens per round), sd (SGLang's
STANDALONE, topk 1; steps = N draft steps), sync-sd (our SSD server pinned to --ssd-mode sync:
synchronous SD, the neural draft every round, no tree), ssd (steps 0 = automatic K). The pinned protocol puts every process of the target
server on core 0 (a STANDALONE draft lives in it); an SSD server gets cores 0 and 1 and splits them
itself (sglang_ssd/cpu_cores.py: its draft process on core 1, the target on core 0 while the draft
works and on both while it idles). The shared protocol lets every process use every core (an SSD
server with --ssd-draft-cpus off: no split). One server at a time: a Run waits for MIN_FREE_GB of
available memory before it starts one.
"""

from __future__ import annotations

import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from sglang_ssd.testing.server import CPUServer, mem_available_gb, pin_threads  # noqa: F401 (re-exported)

BENCH = Path(__file__).resolve().parent
BASE_ARGS = ["--dtype", "float32", "--sleep-on-idle", "--mem-fraction-static", "0.25", "--max-total-tokens", "32768",
             "--max-running-requests", "4", "--log-level", "warning", "--enable-metrics"]  # pairs.Pair.server_args()
SSD_EXTRA: list[str] = []  # --ssd-args
MIN_FREE_GB = 0.0  # pairs.Pair.min_free_gb: the memory a server of the pair needs before it starts
LABELS = {"ar": "AR (plain SGLang)", "ngram": "NGRAM (SGLang)", "sd": "STANDALONE (SGLang SD)",
          "sync-sd": "sync-SD (ours, cache off)", "ssd": "SSD (ours)",
          "ssd-f32": "SSD-f32 (ours, float32 draft as STANDALONE's)"}
SPEC_MODES = ("ssd", "sync-sd", "ssd-f32")  # modes with an SSD draft process and SSD counters


def mode_args(mode: str, draft: Path, steps: int) -> list[str]:
    if mode == "ar":
        return []
    if mode == "ngram":
        return ["--speculative-algorithm", "NGRAM", "--speculative-num-draft-tokens", str(steps)]
    if mode == "sd":
        return ["--speculative-algorithm", "STANDALONE", "--speculative-draft-model-path", str(draft),
                "--speculative-num-steps", str(steps), "--speculative-eagle-topk", "1",
                "--speculative-num-draft-tokens", str(steps + 1)]
    ssd = ["--speculative-algorithm", "SSD", "--speculative-draft-model-path", str(draft),
           "--ssd-draft-threads", "1"]
    if steps:  # 0: automatic K (the SSD worker tunes it)
        ssd += ["--speculative-num-steps", str(steps)]
    ssd += SSD_EXTRA
    if mode == "sync-sd":  # every round drafted just in time by the neural draft, no tree
        ssd += ["--ssd-mode", "sync", "--ssd-backup", "neural"]
    if mode == "ssd-f32":  # the draft in STANDALONE's dtype, on the same measured kernels
        ssd += ["--ssd-draft-dtype", "float32"]
    return ssd


class Run:
    """One server (mode, steps) under one hardware protocol."""

    def __init__(self, target: Path, draft: Path, mode: str, steps: int, pinned: bool, logdir: Path):
        self.mode, self.steps, self.pinned = mode, steps, pinned
        self.log_path = logdir / f"{mode}-{steps}-{'pinned' if pinned else 'shared'}.log"
        self.draft_pid, self.draft_cpus = None, None
        wait_for_memory(MIN_FREE_GB)
        t0 = time.perf_counter()
        spec = mode in SPEC_MODES
        split = [] if pinned or not spec else ["--ssd-draft-cpus", "off"]
        self.server = CPUServer(target, BASE_ARGS + mode_args(mode, draft, steps) + split,
                                log_path=str(self.log_path), env=None,
                                cpus=({0, 1} if spec else {0}) if pinned else None, startup_timeout=600)
        self.startup_s = time.perf_counter() - t0
        self.pin_draft()

    def pin_draft(self) -> None:
        """Record where the draft process runs (an SSD server pins it itself under the pinned
        protocol: the last of its cores)."""
        if self.mode not in SPEC_MODES:
            return
        pid = self.server.ssd_stats().get("draft_pid")
        if pid and pid != self.draft_pid:
            self.draft_pid = pid
            for line in open(f"/proc/{pid}/status").read().splitlines():
                if line.startswith("Cpus_allowed_list"):
                    self.draft_cpus = line.split(":", 1)[1].strip()

    def generate(self, ids: list[int], temp: float, max_new: int) -> dict:
        sp = {"temperature": temp, "max_new_tokens": max_new, "ignore_eos": True}
        if temp > 0:
            sp.update(top_p=1.0, top_k=-1)
        t0 = time.perf_counter()
        out = self.server.generate(ids, sp)
        wall = time.perf_counter() - t0
        m = out["meta_info"]
        n = int(m["completion_tokens"])
        e2e = float(m.get("e2e_latency") or wall)
        ttft = m.get("first_token_latency")
        return {"output_ids": out["output_ids"], "tokens": n, "e2e_s": e2e, "wall_s": wall,
                "ttft_s": float(ttft) if ttft is not None else None,
                "verify_ct": int(m.get("spec_verify_ct") or 0)}

    def generate_many(self, prompts: list[list[int]], temp: float, max_new: int, concurrency: int):
        """All prompts, `concurrency` in flight at once: (records in prompt order, wall seconds)."""
        t0 = time.perf_counter()
        with ThreadPoolExecutor(concurrency) as ex:
            recs = list(ex.map(lambda ids: self.generate(ids, temp, max_new), prompts))
        return recs, time.perf_counter() - t0

    def stop(self) -> None:
        self.server.stop(grace_s=1.0)  # a clean SGLang exit takes 4-10 s; nothing here needs it


SSD_COUNTERS = ("steps", "spec_rounds", "emitted", "lookups", "hits", "draft_wait_s", "draft_tree_s",
                "draft_overrun_s", "handoff_s", "backup_neural", "backup_fast", "draft_failures", "plain_rounds",
                "verify_s", "round_s", "first_wait_s", "draft_lookup_s")


def ssd_counters(run: Run) -> dict:
    if run.mode not in SPEC_MODES:
        return {}
    s = run.server.ssd_stats()
    return {k: float(s.get(k) or 0) for k in SSD_COUNTERS} | {"fanout": s.get("fanout"),
                                                             "k_steps": s.get("k_steps") or {},
                                                             "mode_steps": s.get("mode_steps") or {}}


def counter_delta(before: dict, after: dict) -> dict:
    """What a cell added to a server's SSD counters ({} for a server without them)."""
    if not before:
        return {}
    d = {k: after[k] - before[k] for k in SSD_COUNTERS}
    for key in ("k_steps", "mode_steps"):
        d[key] = {m: n - before.get(key, {}).get(m, 0) for m, n in after.get(key, {}).items()
                  if n - before.get(key, {}).get(m, 0) > 0}
    d["fanout"] = after.get("fanout")
    return d


def counter_sum(a: dict, b: dict) -> dict:
    """Two cells' counter_delta()s as one."""
    if not a or not b:
        return a or b
    s = {k: a[k] + b[k] for k in SSD_COUNTERS}
    for key in ("k_steps", "mode_steps"):
        s[key] = {m: a[key].get(m, 0) + b[key].get(m, 0) for m in {*a[key], *b[key]}}
    s["fanout"] = b.get("fanout")
    return s


def summarize(recs: list[dict], before: dict, after: dict) -> dict:
    toks = sum(r["tokens"] for r in recs)
    dec_t = sum(r["tokens"] - 1 for r in recs)
    with_ttft = all(r["ttft_s"] is not None for r in recs)
    dec_s = sum((r["e2e_s"] - r["ttft_s"]) if with_ttft else r["e2e_s"] for r in recs)
    vc = sum(r["verify_ct"] for r in recs)
    out = {"prompts": len(recs), "tokens": toks, "e2e_s": sum(r["e2e_s"] for r in recs),
           "decode_tok_s": (dec_t if with_ttft else toks) / dec_s if dec_s > 0 else None,
           "e2e_tok_s": toks / sum(r["e2e_s"] for r in recs),
           "ttft_ms": 1e3 * sum(r["ttft_s"] for r in recs) / len(recs) if with_ttft else None,
           "accept_len": toks / vc if vc else 1.0}
    if before:
        d = {k: after[k] - before[k] for k in SSD_COUNTERS}
        out.update(hit_rate=d["hits"] / d["lookups"] if d["lookups"] else None,
                   ssd_accept_len=d["emitted"] / d["spec_rounds"] if d["spec_rounds"] else None,
                   draft_wait_ms_per_round=1e3 * d["draft_wait_s"] / d["steps"] if d["steps"] else None,
                   draft_tree_ms_per_round=1e3 * d["draft_tree_s"] / d["steps"] if d["steps"] else None,
                   draft_overrun_ms_per_round=1e3 * d["draft_overrun_s"] / d["steps"] if d["steps"] else None,
                   handoff_ms_per_round=1e3 * d["handoff_s"] / d["steps"] if d["steps"] else None,
                   verify_ms_per_round=1e3 * d["verify_s"] / d["steps"] if d["steps"] else None,
                   round_ms_per_round=1e3 * d["round_s"] / d["steps"] if d["steps"] else None,
                   first_wait_ms_per_round=1e3 * d["first_wait_s"] / d["steps"] if d["steps"] else None,
                   lookup_ms_per_round=1e3 * d["draft_lookup_s"] / d["steps"] if d["steps"] else None,
                   rounds=d["steps"], backup_neural_rounds=d["backup_neural"], draft_failures=d["draft_failures"],
                   plain_rounds=d["plain_rounds"], fanout=after.get("fanout"),
                   k_steps={k: n - before["k_steps"].get(k, 0) for k, n in after["k_steps"].items()
                            if n - before["k_steps"].get(k, 0) > 0},
                   mode_steps={m: n - before.get("mode_steps", {}).get(m, 0)
                               for m, n in after.get("mode_steps", {}).items()
                               if n - before.get("mode_steps", {}).get(m, 0) > 0})
    return out


def summarize_concurrent(recs: list[dict], wall_s: float, before: dict, after: dict) -> dict:
    """summarize() plus the throughput of requests served together: total tokens / wall time."""
    out = summarize(recs, before, after)
    out.update(wall_s=wall_s, throughput_tok_s=out["tokens"] / wall_s if wall_s > 0 else None)
    return out


class ModeFailed(RuntimeError):
    pass


def wait_for_memory(min_gb: float, timeout_s: float = 900.0) -> None:
    """Block until MemAvailable >= min_gb (a server just stopped may still be freeing; another user's
    server may be running); ModeFailed after timeout_s. Never start a server into swap or the OOM killer."""
    deadline, said = time.monotonic() + timeout_s, False
    while (avail := mem_available_gb()) < min_gb:
        if time.monotonic() > deadline:
            raise ModeFailed(f"only {avail:.1f} GiB of memory available, this pair's server needs {min_gb:.0f} "
                             f"GiB; waited {timeout_s:.0f} s")
        if not said:
            print(f"[servers] waiting for {min_gb:.0f} GiB of available memory (now {avail:.1f} GiB)",
                  file=sys.stderr, flush=True)
            said = True
        time.sleep(5)


WARMUP_IDS = [1, 2, 3, 4, 5, 6, 7, 8]  # any tokenizer's ids; compare.py passes a real prompt's


def start_checked(target, draft, mode, n, pinned, logdir, warmup_ids=None) -> Run:
    """A started server that has served an 8-token greedy request (the warm-up); ModeFailed otherwise.
    `warmup_ids`: the warm-up prompt (default: ids 1-8). A real prompt is the fairer one for SSD:
    its mode planner learns from every round, and text whose drafts the target never accepts
    (ids 1-8) taught it that speculation loses, which cost the first measured request 7 plain
    rounds; every mode gets the same warm-up."""
    try:
        run = Run(target, draft, mode, n, pinned, logdir)
    except Exception as e:
        proto = "pinned" if pinned else "shared"
        raise ModeFailed(f"server did not start ({e}): {_tail(logdir / f'{mode}-{n}-{proto}.log')}")
    try:
        out = run.generate(list(warmup_ids or WARMUP_IDS), 0.0, 8)
        if out["tokens"] != 8:
            raise ModeFailed(f"the warm-up request returned {out['tokens']} tokens instead of 8")
        run.pin_draft()
        return run
    except Exception as e:
        tail = _tail(run.log_path)
        run.stop()
        if isinstance(e, ModeFailed):
            raise
        raise ModeFailed(f"request failed ({e}): {tail}")


def _tail(path: Path, n: int = 6) -> str:
    try:
        lines = [ln for ln in Path(path).read_text(errors="replace").splitlines() if ln.strip()]
        return " | ".join(lines[-n:])[-1500:]
    except OSError:
        return "(no log)"
