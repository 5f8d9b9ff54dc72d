"""SSD with a draft that never agrees vs plain decoding: the mode planner must give the throughput back.

    python bench/plain_fallback.py [--pair tiny|qwen-coder] [--concurrency 1,4] [--out ...json]

A draft of random weights sharing the target's tokenizer (tiny: the test fixture's draft_random;
qwen-coder: a one-layer Qwen2 of random weights with Qwen2.5-Coder's tokenizer, made once into
~/.cache/sglang_ssd/models/random-qwen-draft, or with --draft-shape 0.5b a draft of the real 0.5B's
shape and random weights, random-qwen-draft-0.5b, whose steps cost what the real draft's do)
accepts nothing, so every speculated round costs a
verify of K+1 tokens for one token. With --ssd-mode auto (the default) the worker measures that and
serves plain rounds. One server at a time, pinned (target core 0, SSD's draft core 1): a warm-up
request long enough for the planner to settle (its rounds before the first plain round are
reported), then at each concurrency level `--requests` requests of `--max-new-tokens` greedy tokens;
throughput = tokens / wall time. Target: SSD >= 0.95x plain at every level (issue 16).
`--protocol equal` (the headline, issue 22): SSD gets cores 0 and 1 (its draft pins itself to the
last, and the target borrows it while the draft idles, as in plain rounds), plain decoding runs on
core 0 and on cores 0-1, and each level compares SSD with the better of the two. Plain decoding on
cores 0-1 and SSD are each started `--alternations` times, alternating (ABBA), and each level pools
the tokens and time of every start: a server's speed on this VM shifted by up to 1.5x from one start
to the next, plain SGLang's too.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))

from sglang_ssd.testing.server import CPUServer, pin_threads  # noqa: E402

TINY_ARGS = ["--dtype", "float32", "--mem-fraction-static", "0.25", "--max-total-tokens", "32768",
             "--max-running-requests", "8", "--sleep-on-idle", "--log-level", "warning"]


def random_qwen_draft(tokenizer_from: Path, shape: str = "tiny") -> Path:
    """A Qwen2 of random weights with the pair's tokenizer (cached): one tiny layer, or ("0.5b") the
    real draft's own configuration."""
    import shutil

    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    out = Path.home() / ".cache" / "sglang_ssd" / "models" / ("random-qwen-draft" + ("" if shape == "tiny" else "-0.5b"))
    if (out / "config.json").exists():
        return out
    cfg = AutoConfig.from_pretrained(str(tokenizer_from))
    if shape == "tiny":
        cfg.hidden_size, cfg.intermediate_size, cfg.num_hidden_layers = 64, 128, 1
        cfg.num_attention_heads, cfg.num_key_value_heads = 2, 1
        cfg.tie_word_embeddings = True
        if getattr(cfg, "layer_types", None):
            cfg.layer_types = cfg.layer_types[:1]
        if hasattr(cfg, "max_window_layers"):
            cfg.max_window_layers = 1
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(cfg, torch_dtype=torch.float32)
    tmp = out.with_name(out.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp)
    for name in os.listdir(tokenizer_from):
        if name.startswith(("tokenizer", "vocab", "merges", "special_tokens", "generation_config")):
            shutil.copy(tokenizer_from / name, tmp / name)
    tmp.rename(out)
    return out


def pair(name: str, shape: str = "tiny") -> tuple[Path, Path, list[int], list[str]]:
    """(target, random draft, prompt ids, server args)."""
    if name == "tiny":
        from sglang_ssd.testing.tiny_models import default_root, make_pair_set

        paths = make_pair_set(default_root())
        return paths["target"], paths["draft_random"], [5, 6, 7, 8, 9], TINY_ARGS
    import pairs
    from transformers import AutoTokenizer

    target, real_draft, _ = pairs.PAIRS["qwen-coder"].prepare()
    tok = AutoTokenizer.from_pretrained(str(target))
    ids = tok.apply_chat_template([{"role": "user", "content": "Write a Python function that merges two "
                                    "sorted lists into one sorted list."}], add_generation_prompt=True)
    if hasattr(ids, "keys"):  # a BatchEncoding in newer transformers
        ids = ids["input_ids"]
    return target, random_qwen_draft(real_draft, shape), list(ids), pairs.PAIRS["qwen-coder"].server_args()


def measure(srv: CPUServer, prompt: list[int], levels: list[int], requests: int, max_new: int) -> dict:
    sp = {"temperature": 0, "max_new_tokens": max_new, "ignore_eos": True}
    out = {}
    for c in levels:
        n = max(requests, c)
        t0 = time.perf_counter()
        with ThreadPoolExecutor(c) as ex:
            outs = list(ex.map(lambda i: srv.generate(prompt[: len(prompt) - i % 3] or prompt, sp), range(n)))
        wall = time.perf_counter() - t0
        tokens = sum(o["meta_info"]["completion_tokens"] for o in outs)
        out[c] = {"tok_s": tokens / wall, "tokens": tokens, "wall_s": wall,
                  "outputs": [o["output_ids"] for o in outs]}
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pair", default="tiny", choices=["tiny", "qwen-coder"])
    ap.add_argument("--concurrency", default="1,4")
    ap.add_argument("--draft-shape", default="tiny", choices=["tiny", "0.5b"], help="qwen-coder's random draft: "
                    "one tiny layer, or the real 0.5B draft's shape")
    ap.add_argument("--requests", type=int, help="requests per level (tiny 8, qwen-coder 2)")
    ap.add_argument("--max-new-tokens", type=int, help="per request (tiny 256, qwen-coder 48)")
    ap.add_argument("--warmup-tokens", type=int, help="the settling request (tiny 256, qwen-coder 48)")
    ap.add_argument("--protocol", default="pinned", choices=["pinned", "equal"],
                    help="pinned: every server on core 0 (SSD's draft on core 1); equal: SSD on cores 0-1, "
                    "plain decoding at the better of core 0 and cores 0-1")
    ap.add_argument("--alternations", type=int, default=2, help="equal protocol: fresh starts of plain decoding "
                    "on cores 0-1 and of SSD, alternating; each level's figure pools every start's tokens and time")
    ap.add_argument("--out", type=Path, default=BENCH / "results" / "plain_fallback.json")
    args = ap.parse_args()
    tiny = args.pair == "tiny"
    requests = args.requests or (8 if tiny else 2)
    max_new = args.max_new_tokens or (256 if tiny else 48)
    warm = args.warmup_tokens or (256 if tiny else 48)
    levels = [int(x) for x in args.concurrency.split(",") if x]
    target, draft, prompt, base = pair(args.pair, args.draft_shape)
    logdir = BENCH / "results" / "logs"
    logdir.mkdir(parents=True, exist_ok=True)
    results = {}
    equal = args.protocol == "equal"
    # equal: plain decoding on core 0 once, then plain on cores 0-1 and SSD started afresh
    # `--alternations` times each, in alternating order (ABBA): on this 2-core VM a server's decode
    # step ran at ~100 ms after one start and ~148 ms after another, plain SGLang's too
    # (bench/README.md), so a single start measured the start as much as the mode. (Two Qwen
    # servers up at once do not fit in 24 GB: the second died starting.)
    runs = [("plain", {0}), ("plain2", {0, 1}), ("ssd", {0, 1})] if equal else [("plain", {0}), ("ssd", {0})]
    order = [runs[0]] + [r for a in range(args.alternations) for r in (runs[1:] if a % 2 == 0 else runs[:0:-1])] \
        if equal else runs
    for mode, cpus in order:
        extra = [] if mode.startswith("plain") else ["--speculative-algorithm", "SSD", "--speculative-draft-model-path",
                                                     str(draft), "--ssd-draft-threads", "1"]
        with CPUServer(target, base + extra, log_path=str(logdir / f"plain_fallback-{mode}.log"), cpus=cpus,
                       startup_timeout=900) as srv:
            if mode == "ssd" and not equal:  # (equal: the server pins its draft to its last core itself)
                pin_threads(srv.ssd_stats()["draft_pid"], {1})
            t0 = time.perf_counter()
            w = srv.generate(prompt, {"temperature": 0, "max_new_tokens": warm, "ignore_eos": True})
            row = results.setdefault(mode, {"warmup_s": [], "levels": {}, "starts": 0})
            row["warmup_s"].append(time.perf_counter() - t0)
            row["starts"] += 1
            if mode == "ssd":
                st = srv.ssd_stats()
                row.setdefault("warmup_mode_steps", []).append(dict(st["mode_steps"]))
                row.setdefault("settled_mode", []).append(st["modes"].get("bs1-1", {}).get("mode"))
                row["warmup_tokens"] = w["meta_info"]["completion_tokens"]
                before = st
            for c, got in measure(srv, prompt, levels, requests, max_new).items():
                lv = row["levels"].setdefault(c, {"tokens": 0, "wall_s": 0.0, "outputs": [], "starts": []})
                lv["outputs"].append(got["outputs"])  # every start's, for the greedy check
                lv["tokens"] += got["tokens"]
                lv["wall_s"] += got["wall_s"]
                lv["starts"].append(round(got["tok_s"], 3))
                lv["tok_s"] = lv["tokens"] / lv["wall_s"]
            if mode == "ssd":
                st = srv.ssd_stats()
                steps = row.setdefault("mode_steps", {})
                for m in st["mode_steps"]:
                    steps[m] = steps.get(m, 0) + st["mode_steps"].get(m, 0) - before["mode_steps"].get(m, 0)
                row["modes"] = st["modes"]
    plains = [m for m, _ in runs if m.startswith("plain")]
    same = all(out == results["plain"]["levels"][c]["outputs"][0]
               for c in levels for m in results for out in results[m]["levels"][c]["outputs"])
    from sglang_ssd.kernels import cpu_caps

    print(f"# SSD with a random draft ({args.draft_shape}) vs plain decoding, pair {args.pair}, {args.protocol} "
          f"protocol, CPU {cpu_caps.caps().label}; greedy outputs identical: {same}")
    print(f"warm-up: {results['ssd']['warmup_tokens']} tokens, decode steps per mode {results['ssd']['warmup_mode_steps']}, "
          f"settled into {results['ssd']['settled_mode']!r}")
    if equal:
        print("| concurrency | plain, core 0 | plain, cores 0-1 | SSD, cores 0-1 | SSD/best plain |")
        print("|---|---|---|---|---|")
    else:
        print("| concurrency | plain tok/s | SSD tok/s | SSD/plain |")
        print("|---|---|---|---|")
    for c in levels:
        ps = [results[m]["levels"][c]["tok_s"] for m in plains]
        s = results["ssd"]["levels"][c]["tok_s"]
        print(f"| {c} | " + " | ".join(f"{p:.2f}" for p in ps) + f" | {s:.2f} | {s / max(ps):.3f} |")
    print(f"SSD decode steps per mode while measured: {results['ssd']['mode_steps']}")
    for r in results.values():
        for lv in r["levels"].values():
            lv.pop("outputs")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"pair": args.pair, "protocol": args.protocol, "identical": same, "results": results,
                                    "machine": os.uname().nodename, "cpus": os.cpu_count(),
                                    "date": time.strftime("%Y-%m-%d %H:%M")}, indent=1, default=str))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
