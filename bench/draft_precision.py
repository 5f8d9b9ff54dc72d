"""Draft precision and threads, measured: tree-step time and agreement with the target.

    python bench/draft_precision.py [--pair qwen-coder] [--prompts 2] [--tokens 48]

For each draft dtype (float32, bfloat16, int8: dynamic int8 linear layers) and torch thread count (1 on one core, 2 on two), times
the draft's forward of n new tokens over a 256-token context (what a glue or tree step of n
branches costs; SSD's own slot-KV draft model, best of 3) and measures greedy agreement: the share
of positions where the draft's argmax equals the target's greedy token, teacher-forced on the
target's own greedy continuations of HumanEval prompts. The target's outputs never depend on the
draft's precision (SSD verifies whatever is drafted); agreement and step time decide which is faster.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import pairs  # noqa: E402
import prompt_sets  # noqa: E402

SIZES = (1, 5, 15, 30)


def reference(target: Path, prompts: list[list[int]], tokens: int) -> list[list[int]]:
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(target), dtype=torch.float32).eval()
    outs = []
    with torch.inference_mode():
        for ids in prompts:
            g = model.generate(torch.tensor([ids]), max_new_tokens=tokens, do_sample=False)
            outs.append(g[0, len(ids):].tolist())
    del model
    return outs


def plain_model(draft: Path, dtype: str):
    """The draft as a plain Hugging Face model with the linear layers SSD's draft process gives it."""
    from transformers import AutoModelForCausalLM

    from sglang_ssd.draft_linears import prepare_linears, weights_dtype

    model = AutoModelForCausalLM.from_pretrained(str(draft), dtype=weights_dtype(dtype)).eval()
    prepare_linears(model, dtype, "cpu")
    return model


def agreement(model, prompts, conts) -> float:
    import torch

    hits = total = 0
    with torch.inference_mode():
        for ids, cont in zip(prompts, conts):
            full = torch.tensor([ids + cont])
            logits = model(input_ids=full).logits[0, len(ids) - 1:-1]
            hits += int((logits.argmax(-1) == torch.tensor(cont)).sum())
            total += len(cont)
    return hits / total


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pair", default="qwen-coder", choices=sorted(pairs.PAIRS))
    ap.add_argument("--prompts", type=int, default=2)
    ap.add_argument("--tokens", type=int, default=48)
    ap.add_argument("--dtypes", default="float32,bfloat16,int8")
    ap.add_argument("--threads", default="1,2", help="torch threads to time (1: core 1; 2: cores 0-1)")
    ap.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results" / "draft_precision.json")
    args = ap.parse_args()
    import torch
    from transformers import AutoTokenizer

    from sglang_ssd.draft_model import DraftModel
    from sglang_ssd.tree_budget import calibration_forward

    target, draft, _ = pairs.PAIRS[args.pair].prepare()
    tok = AutoTokenizer.from_pretrained(str(target))
    prompts = [prompt_sets.encode(tok, p) for p in prompt_sets.load_set("humaneval")[: args.prompts]]
    os.sched_setaffinity(0, {0, 1})
    torch.set_num_threads(2)
    conts = reference(target, prompts, args.tokens)
    rows = []
    from sglang_ssd.kernels import cpu_caps

    for dtype in args.dtypes.split(","):
        agree = agreement(plain_model(draft, dtype), prompts, conts)
        dm = DraftModel(str(draft), "cpu", dtype, 4096)
        for threads, cpus in [(t, {1} if t == 1 else set(range(t))) for t in map(int, args.threads.split(","))]:
            os.sched_setaffinity(0, cpus)
            torch.set_num_threads(threads)
            fwd = calibration_forward(dm)
            fwd(1)
            ms = {}
            for n in SIZES:
                best = float("inf")
                for _ in range(3):
                    t0 = time.perf_counter()
                    fwd(n)
                    best = min(best, time.perf_counter() - t0)
                ms[n] = round(best * 1e3, 1)
            rows.append({"dtype": dtype, "threads": threads, "agreement": round(agree, 4), "forward_ms": ms,
                         "cpu": cpu_caps.caps().label})
            print(f"[precision] {dtype} threads={threads}: agreement {agree:.3f}, forward ms {ms}", flush=True)
        del dm
    print(f"\n## Draft precision and threads: {pairs.PAIRS[args.pair].label}, this CPU "
          f"({os.cpu_count()} cores, {cpu_caps.caps().label}), {args.prompts} HumanEval prompts x {args.tokens} target tokens\n")
    print("| dtype | threads | greedy agreement | " + " | ".join(f"{n} tok ms" for n in SIZES) + " |")
    print("|---|---|---|" + "---|" * len(SIZES))
    for r in rows:
        print(f"| {r['dtype']} | {r['threads']} | {r['agreement']:.3f} | "
              + " | ".join(str(r["forward_ms"][n]) for n in SIZES) + " |")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
