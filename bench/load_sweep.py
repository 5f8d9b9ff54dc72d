"""Throughput from 1 to 32 requests at once, plain decoding against SSD on the same cores (issue 24).

    python bench/load_sweep.py [--levels 1,2,4,8,16,32] [--max-new-tokens 48] [--reps 2] [--temperature 0] [--starts 1]

The real pair (bench/pairs.py, qwen-coder). One server at a time, each given cores 0 and 1:
  ar   plain SGLang (its default overlap scheduler), every process on both cores (and, with
       --ar-one-core, also on core 0 alone: the better of the two is the baseline);
  ssd  --speculative-algorithm SSD with automatic K and --ssd-mode auto: its draft pins itself to
       core 1, its target computes on core 0 while the draft works and on both while it idles.
Each server first serves a warm-up burst (4 requests, 16 tokens), then at each level `--reps` bursts
of `level` requests (HumanEval and instructions prompts alternating, `--max-new-tokens` each, EOS
ignored), each burst's throughput = its tokens over its wall time (part-full rounds at the end of a
burst count as the user sees them). Later bursts hit the servers' prefix caches, so the figure is
mostly decode throughput. With --starts N every server is started N times, in alternating order, and
each level pools the bursts of every start. Prints a markdown table of tokens/s per level (mean of the bursts) and
SSD/AR; for SSD also its decode steps per mode; JSON to --out. Set SGLANG_SSD_ROUND_LOG=PATH to get
the SSD server's rounds (mode, batch, threads, times) one JSON line each.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))

import pairs  # noqa: E402
import prompt_sets  # noqa: E402
import servers  # noqa: E402
from compare import WARMUP_PROMPT  # noqa: E402


def prompts(tok, n: int = 40) -> list[list[int]]:
    """HumanEval and instructions prompts, alternating."""
    sets = [[prompt_sets.encode(tok, p) for p in prompt_sets.load_set(name)[: n // 2]]
            for name in ("humaneval", "instructions")]
    return [sets[i % 2][i // 2] for i in range(n)]


def sweep(target, draft, mode: str, pinned: bool, ps, levels, reps, max_new, temp, warmup, logdir) -> dict:
    run = servers.start_checked(target, draft, mode, 0, pinned, logdir, warmup)
    out = {"levels": {}, "label": f"{mode} {'pinned' if pinned else 'shared'}"}
    try:
        run.generate_many(ps[:4], temp, 16, 4)  # warm-up burst
        before = run.server.ssd_stats().get("mode_steps", {}) if mode in servers.SPEC_MODES else {}
        for c in levels:
            rates, ttft = [], []
            for rep in range(reps):
                burst = (ps[rep * 3:] + ps)[:c] if c < len(ps) else (ps * (c // len(ps) + 1))[:c]
                recs, wall = run.generate_many(burst, temp, max_new, c)
                rates.append(sum(r["tokens"] for r in recs) / wall)
                firsts = [r["ttft_s"] for r in recs if r["ttft_s"] is not None]
                ttft.append(sum(firsts) / len(firsts) if firsts else None)
                print(f"  {out['label']} {c} at once, burst {rep}: {rates[-1]:.2f} tok/s, mean TTFT "
                      f"{'-' if ttft[-1] is None else f'{ttft[-1]:.2f} s'}", flush=True)
            out["levels"][c] = {"tok_s": sum(rates) / len(rates), "bursts": rates, "ttft_s": ttft}
        if mode in servers.SPEC_MODES:
            st = run.server.ssd_stats()
            out["mode_steps"] = {m: st["mode_steps"].get(m, 0) - before.get(m, 0) for m in st.get("mode_steps", {})}
            out["target_threads"] = st.get("target_threads")
            out["modes"] = st.get("modes")
    finally:
        run.stop()
    return out


def merge_starts(acc, got: dict) -> dict:
    """One mode's sweeps from several server starts as one: every burst of every start, their mean."""
    if acc is None:
        return got
    for c, lv in got["levels"].items():
        a = acc["levels"][c]
        a["bursts"] += lv["bursts"]
        a["ttft_s"] += lv["ttft_s"]
        a["tok_s"] = sum(a["bursts"]) / len(a["bursts"])
    for m, n in got.get("mode_steps", {}).items():
        acc["mode_steps"][m] = acc["mode_steps"].get(m, 0) + n
    return acc


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--levels", default="1,2,4,8,16,32")
    ap.add_argument("--max-new-tokens", type=int, default=48)
    ap.add_argument("--reps", type=int, default=2, help="bursts per level")
    ap.add_argument("--temperature", type=float, default=0.0)
    ap.add_argument("--ar-one-core", action="store_true", help="also plain decoding on core 0 alone")
    ap.add_argument("--starts", type=int, default=1, help="fresh starts of every server, alternating (ABBA): "
                    "on the 2-core VM here a server's decode step moved by up to 1.5x from one start to the "
                    "next, plain SGLang's too (bench/step_noise.py)")
    ap.add_argument("--out", type=Path, default=BENCH / "results" / "load_sweep.json")
    args = ap.parse_args()
    levels = [int(x) for x in args.levels.split(",") if x]
    pair = pairs.PAIRS["qwen-coder"]
    target, draft, _ = pair.prepare()
    servers.BASE_ARGS[:] = pair.server_args()
    servers.MIN_FREE_GB = pair.min_free_gb
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(target))
    ps = prompts(tok)
    warmup = prompt_sets.encode(tok, WARMUP_PROMPT)
    logdir = BENCH / "results" / "logs"
    logdir.mkdir(parents=True, exist_ok=True)
    runs = [("ar", False)] + ([("ar", True)] if args.ar_one_core else []) + [("ssd", True)]
    res = {}
    for start in range(args.starts):  # ar shared: both cores; ar pinned: core 0; ssd pinned: cores 0-1, split
        for mode, pinned in (runs if start % 2 == 0 else runs[::-1]):  # alternating: ABBA
            key = f"{mode}-{'pinned' if pinned else 'shared'}"
            got = sweep(target, draft, mode, pinned, ps, levels, args.reps, args.max_new_tokens, args.temperature,
                        warmup, logdir)
            res[key] = merge_starts(res.get(key), got)
    from sglang_ssd.kernels import cpu_caps

    ars = [k for k in res if k.startswith("ar")]
    print(f"\n# Throughput, tokens/s (mean of {args.reps} bursts x {args.starts} starts of {args.max_new_tokens} "
          f"tokens each), "
          f"T={args.temperature}, CPU {cpu_caps.caps().label}")
    print("| requests at once | " + " | ".join(res[k]["label"] for k in ars) + " | SSD | SSD/best AR |")
    print("|---" * (len(ars) + 3) + "|")
    for c in levels:
        a = [res[k]["levels"][c]["tok_s"] for k in ars]
        s = res["ssd-pinned"]["levels"][c]["tok_s"]
        print(f"| {c} | " + " | ".join(f"{x:.2f}" for x in a) + f" | {s:.2f} | {s / max(a):.2f}x |")
    print(f"SSD decode steps per mode while measured: {res['ssd-pinned'].get('mode_steps')}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"args": vars(args) | {"out": str(args.out)}, "results": res,
                                    "machine": os.uname().nodename, "cpu": cpu_caps.caps().label,
                                    "date": time.strftime("%Y-%m-%d %H:%M")}, indent=1, default=str))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
