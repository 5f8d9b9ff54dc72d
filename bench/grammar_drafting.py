"""Grammar-aware drafting on a JSON-schema workload: acceptance length and cache hit rate with and
without it, through real CPU SSD servers.

    python bench/grammar_drafting.py [--models DIR] [--drafts draft_same,draft_perturbed]
                                     [--requests 24] [--out bench/results/grammar_drafting.json]

For each draft and each setting a fresh SSD server is started (K=4, default fan-out budget);
"off" sets SGLANG_SSD_DRAFT_GRAMMAR=0 in its environment, which the draft process honours by
drafting unmasked (the target still masks every verify position, so outputs are exact either
way). The workload: `--requests` JSON-schema requests over 6 prompts, half greedy, half at
temperature 1.0, 8 at a time. Statistics are the server's SSD running totals
(/server_info -> internal_states[0]["ssd"]): acceptance length = tokens emitted per
speculated round (K+1 = 5 at most), hit rate = rounds whose outcome was pre-drafted.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from sglang_ssd.testing.workloads import SCHEMA

K = 4
TEXTS = ["The quick brown fox", "Question: what is 12 plus 30?", "Once upon a time",
         "def add(a, b):", "The weather today is", "Numbers: 0 1 2 3"]
SERVER_ARGS = ["--dtype", "float32", "--mem-fraction-static", "0.25", "--max-total-tokens", "32768",
               "--max-running-requests", "16", "--log-level", "warning"]


def run_one(models, draft: str, grammar_drafting: bool, n: int, log_dir: Path) -> dict:
    from transformers import AutoTokenizer

    from sglang_ssd.testing.server import CPUServer

    tok = AutoTokenizer.from_pretrained(str(models["target"]))
    prompts = [tok(t)["input_ids"] for t in TEXTS]
    args = SERVER_ARGS + ["--speculative-algorithm", "SSD", "--speculative-draft-model-path",
                          str(models[draft]), "--speculative-num-steps", str(K)]
    env = dict(os.environ, SGLANG_SSD_DRAFT_GRAMMAR="1" if grammar_drafting else "0")
    name = f"{draft}_{'on' if grammar_drafting else 'off'}"
    with CPUServer(models["target"], args, env=env, log_path=str(log_dir / f"{name}.log")) as srv:
        def one(i):
            temp = 0.0 if i % 2 == 0 else 1.0
            sp = {"temperature": temp, "max_new_tokens": 256, "json_schema": json.dumps(SCHEMA),
                  "sampling_seed": i}
            return srv.generate(prompts[i % len(prompts)], sp)

        t0 = time.perf_counter()
        with ThreadPoolExecutor(8) as ex:
            outs = list(ex.map(one, range(n)))
        wall = time.perf_counter() - t0
        st = srv.ssd_stats()
    tokens = sum(len(o["output_ids"]) for o in outs)
    valid = 0
    for o in outs:
        try:
            obj = json.loads(o["text"])
            valid += int(set(obj) == {"answer", "n"})
        except ValueError:
            pass
    return {"draft": draft, "grammar_drafting": grammar_drafting, "requests": n, "tokens": tokens,
            "valid_json": valid, "accept_length": st.get("accept_length"),
            "cache_hit_rate": st.get("cache_hit_rate"), "grammar_spec_rounds": st.get("grammar_spec_rounds"),
            "plain_rounds": st.get("plain_rounds"), "tokens_per_s": tokens / wall, "wall_s": wall}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", type=Path, default=None)
    ap.add_argument("--drafts", default="draft_same,draft_perturbed")
    ap.add_argument("--requests", type=int, default=24)
    ap.add_argument("--out", type=Path, default=Path("bench/results/grammar_drafting.json"))
    args = ap.parse_args()
    from sglang_ssd.testing.tiny_models import default_root, make_pair_set

    models = make_pair_set(args.models or default_root())
    log_dir = args.out.parent / "grammar_drafting_logs"
    log_dir.mkdir(parents=True, exist_ok=True)
    rows = []
    for draft in args.drafts.split(","):
        for on in (True, False):
            r = run_one(models, draft, on, args.requests, log_dir)
            rows.append(r)
            print(json.dumps(r), file=sys.stderr, flush=True)
    print("\n| draft | grammar-aware drafting | accept length | cache hit rate | tokens/s | valid JSON |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['draft']} | {'on' if r['grammar_drafting'] else 'off'} | {r['accept_length']:.3f} | "
              f"{r['cache_hit_rate']:.3f} | {r['tokens_per_s']:.1f} | {r['valid_json']}/{r['requests']} |")
    args.out.write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
