"""Time the two draft engines on the same forwards: hf (draft_model.DraftModel) vs sglang
(draft_model_sglang.SGLangDraftModel, SGLang's own ModelRunner).

    python bench/draft_engines.py [--model DIR] [--device cpu]

Cases: 100 query tokens over 500 visible slots (a tree step), a 500-token prefill. Each engine
runs in its own subprocess (SGLang allows one runner per process); prints a markdown table.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys

CHILD = r"""
import json, sys, time, statistics, torch
engine, model, device = sys.argv[1], sys.argv[2], sys.argv[3]
if engine == "sglang":
    from sglang_ssd.draft_model_sglang import SGLangDraftModel as E
else:
    from sglang_ssd.draft_model import DraftModel as E
t0 = time.perf_counter(); m = E(model, device, "float32", 4096); load = time.perf_counter() - t0
pre = m.pool.alloc(500)
def timed(fn, n=7):
    fn(); ts = []
    for _ in range(n):
        t = time.perf_counter(); fn(); ts.append(time.perf_counter() - t)
    return 1e3 * statistics.median(ts)
from sglang_ssd.draft_batch import Group, run, slot_tensor
empty, ctx = slot_tensor([]), slot_tensor(pre)
prefill = timed(lambda: m.forward([run(empty, [5] * 500, 0, pre)], logits=False))
q = m.pool.alloc(100)
tree = timed(lambda: m.forward([Group(ctx, [7] * 100, [500] * 100, q, [[s] for s in q])]))
print(json.dumps({"load_s": load, "prefill_500_ms": prefill, "tree_100x500_ms": tree}))
"""


def main():
    from sglang_ssd.cpu_serve import cpu_env
    from sglang_ssd.testing.tiny_models import default_root, make_pair_set

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model")
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args()
    model = args.model or str(make_pair_set(default_root())["target"])
    env = cpu_env() if args.device == "cpu" else None
    rows = {}
    for engine in ("hf", "sglang"):
        out = subprocess.run([sys.executable, "-c", CHILD, engine, model, args.device], capture_output=True,
                             text=True, env=env, timeout=600)
        if out.returncode != 0:
            raise SystemExit(f"{engine} failed:\n{out.stderr[-3000:]}")
        rows[engine] = json.loads(out.stdout.strip().splitlines()[-1])
    print(f"\n### Draft engines on {args.device} ({model})\n")
    print("| engine | load s | 500-token prefill ms | tree step 100 q x 500 slots ms |")
    print("|---|---|---|---|")
    for e, r in rows.items():
        print(f"| {e} | {r['load_s']:.2f} | {r['prefill_500_ms']:.1f} | {r['tree_100x500_ms']:.1f} |")
    print(f"\nsglang / hf: prefill {rows['sglang']['prefill_500_ms'] / rows['hf']['prefill_500_ms']:.1f}x, "
          f"tree {rows['sglang']['tree_100x500_ms'] / rows['hf']['tree_100x500_ms']:.1f}x")


if __name__ == "__main__":
    main()
