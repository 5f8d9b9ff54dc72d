"""Where a decode round's milliseconds go, SSD against plain decoding, on a real pair (pinned protocol).

    python bench/round_breakdown.py [--pair qwen-coder] [--prompts 3] [--max-new-tokens 64]
                                    [--temperature 0] [--ssd-args "--ssd-fanout-budget 5"]

Starts plain SGLang (ar) and SSD on the same pair (target server on core 0, SSD's draft process on
core 1), serves the same HumanEval prompts (--concurrency at a time) and prints, per mode, decode tokens/s and,
for SSD, per round: the worker's whole round, the target's verify, the wait for the draft and its
parts (tree overrun, lookup/backup, hand-off, and the first rounds of requests, which wait for the
draft's prefill), the draft's tree time, tokens per round, cache hit rate and K. Writes JSON to
--out. Greedy outputs are checked against plain decoding.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import pairs  # noqa: E402
import prompt_sets  # noqa: E402
import servers  # noqa: E402

ROWS = [  # (label, key in summarize()'s output, decimals)
    ("decode tok/s", "decode_tok_s", 2), ("tokens per round", "ssd_accept_len", 2), ("hit rate", "hit_rate", 2),
    ("round ms (worker)", "round_ms_per_round", 0), ("  verify ms", "verify_ms_per_round", 0),
    ("  draft wait ms", "draft_wait_ms_per_round", 0), ("    tree overrun ms", "draft_overrun_ms_per_round", 0),
    ("    lookup+backup ms", "lookup_ms_per_round", 1), ("    hand-off ms", "handoff_ms_per_round", 1),
    ("    first rounds ms", "first_wait_ms_per_round", 0), ("draft tree ms", "draft_tree_ms_per_round", 0),
]


def measure(run: servers.Run, prompts: list[list[int]], temp: float, max_new: int, concurrency: int) -> dict:
    """Serve the prompts `concurrency` at a time; decode tokens/s is then the whole batch's
    throughput (tokens after the first over the wall time)."""
    before = servers.ssd_counters(run)
    t0 = time.perf_counter()
    if concurrency > 1:
        with ThreadPoolExecutor(concurrency) as ex:
            recs = list(ex.map(lambda ids: run.generate(ids, temp, max_new), prompts))
    else:
        recs = [run.generate(ids, temp, max_new) for ids in prompts]
    wall = time.perf_counter() - t0
    out = servers.summarize(recs, before, servers.ssd_counters(run))
    if concurrency > 1:
        ttft = max(r["ttft_s"] or 0.0 for r in recs)
        out["decode_tok_s"] = sum(r["tokens"] - 1 for r in recs) / max(wall - ttft, 1e-9)
    out["outputs"] = [r["output_ids"] for r in recs]
    if run.mode in ("ssd", "sync-sd"):
        st = run.server.ssd_stats()
        out["live"] = {k: st.get(k) for k in ("live_k", "fanout", "k_steps", "auto_k", "config", "predicted_hit",
                                             "tree_pred_ms", "partial_answers", "mode_steps")}
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pair", default="qwen-coder", choices=sorted(pairs.PAIRS))
    ap.add_argument("--prompts", type=int, default=3)
    ap.add_argument("--max-new-tokens", type=int, default=64)
    ap.add_argument("--temperature", type=float, default=0.0)
    ap.add_argument("--concurrency", type=int, default=1, help="requests in flight at once (batch size)")
    ap.add_argument("--modes", default="ar,ssd")
    ap.add_argument("--ssd-args", default="", help="extra flags for the SSD server")
    ap.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results" / "round_breakdown.json")
    args = ap.parse_args()
    pair = pairs.PAIRS[args.pair]
    target, draft, facts = pair.prepare()
    servers.BASE_ARGS[:] = pair.server_args()
    servers.SSD_EXTRA[:] = shlex.split(args.ssd_args)
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(target))
    prompts = [prompt_sets.encode(tok, p) for p in prompt_sets.load_set("humaneval")[: args.prompts]]
    logdir = Path(tempfile.mkdtemp(prefix="sglang-ssd-rounds-"))
    os.sched_setaffinity(0, {1})  # the client stays off the target's core
    servers.wait_for_memory(pair.min_free_gb)
    res = {"pair": pair.label, "draft": facts.get("draft"), "prompts": args.prompts, "concurrency": args.concurrency,
           "max_new_tokens": args.max_new_tokens, "temperature": args.temperature,
           "ssd_args": servers.SSD_EXTRA, "modes": {}}
    for mode in args.modes.split(","):
        t0 = time.perf_counter()
        servers.wait_for_memory(pair.min_free_gb)
        run = servers.start_checked(target, draft, mode, 0, True, logdir)
        print(f"[rounds] {mode} server up in {time.perf_counter() - t0:.0f} s (log {run.log_path})", flush=True)
        try:
            res["modes"][mode] = measure(run, prompts, args.temperature, args.max_new_tokens, args.concurrency)
        finally:
            run.stop()
    ar = res["modes"].get("ar", {}).get("decode_tok_s")
    print(f"\n## Round breakdown: {pair.label}, pinned, {args.prompts} HumanEval prompts x {args.max_new_tokens} "
          f"tokens, T={args.temperature}, {args.concurrency} at a time (ssd args: {' '.join(servers.SSD_EXTRA) or 'defaults'})\n")
    modes = list(res["modes"])
    print("| | " + " | ".join(modes) + " |\n|---|" + "---|" * len(modes))
    for label, key, p in ROWS:
        vals = [res["modes"][m].get(key) for m in modes]
        if all(v is None for v in vals):
            continue
        print(f"| {label} | " + " | ".join("-" if v is None else f"{v:.{p}f}" for v in vals) + " |")
    if ar:
        print("| vs plain | " + " | ".join(f"{res['modes'][m]['decode_tok_s'] / ar:.2f}x" for m in modes) + " |")
    for m in modes:
        live = res["modes"][m].get("live")
        if live:
            print(f"\n{m}: K steps {live['k_steps']}, live K {live['live_k']}, last tree fan-out {live['fanout']} "
                  f"(predicted hit {live.get('predicted_hit')}, tree {live.get('tree_pred_ms')} ms), partial answers "
                  f"{live.get('partial_answers')}, modes {live.get('mode_steps')}")
    if "ar" in res["modes"] and args.temperature == 0:
        ref = res["modes"]["ar"]["outputs"]
        for m in modes:
            same = sum(a == b for a, b in zip(ref, res["modes"][m]["outputs"]))
            print(f"greedy check {m}: {same}/{len(ref)} outputs equal plain decoding's")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(res, indent=1))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
