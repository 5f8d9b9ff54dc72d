"""Sweep SSD's sampling knobs in-process: cache hit rate and acceptance length.

    python bench/saguaro_sweep.py [--models DIR] [--out bench/results/saguaro_sweep.json]

Uses the real Speculator (draft side) and the real verification functions with a Hugging Face
target (sglang_ssd.testing.simulate), on the local tiny pair (target + perturbed draft) unless
--target/--draft are given. Prints three markdown tables: Saguaro C x temperature, geometric vs
uniform fan-out at the same budget, and the backup policies at batch sizes 1, 4 and 16.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from sglang_ssd.draft_model import DraftModel
from sglang_ssd.fanout import FanoutEstimator, geometric_fanout
from sglang_ssd.speculator import Speculator
from sglang_ssd.testing.simulate import TargetProbs, sample_ssd
from sglang_ssd.testing.tiny_models import default_root, make_pair_set

K = 4
BUDGET = 15


def run(target_hf, draft_path, *, c=1.0, temp=0.7, fanout=None, backup="neural", batch=16, length=48,
        prompt=(5, 6, 7, 8, 9), online=False):
    model = DraftModel(str(draft_path), "cpu", "float32", 1 << 17)
    fan = fanout or geometric_fanout(K, BUDGET)
    est = FanoutEstimator(K, BUDGET, cap=model.vocab_size - 1) if online else None
    spec = Speculator(model, K, list(fan), backup, 8, c, est)
    tp = TargetProbs(target_hf, temp, -1, 1.0)
    st = {}
    t0 = time.perf_counter()
    _, hits, lookups = sample_ssd(spec, tp, list(prompt), batch, length, stats=st)
    return {"hit_rate": hits / max(lookups, 1), "accept_len": st["emitted"] / st["rounds"],
            "backup_ms_per_round": 1e3 * st.get("backup_s", 0.0) / max(st["rounds"] / batch, 1),
            "wall_s": time.perf_counter() - t0, "fanout": list(spec.fanout)}


def table(title, cols, rows):
    print(f"\n### {title}\n")
    print("| " + " | ".join(cols) + " |")
    print("|" + "---|" * len(cols))
    for r in rows:
        print("| " + " | ".join(f"{x:.3f}" if isinstance(x, float) else str(x) for x in r) + " |")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", type=Path, default=default_root())
    ap.add_argument("--target", type=Path)
    ap.add_argument("--draft", type=Path)
    ap.add_argument("--out", type=Path, default=Path("bench/results/saguaro_sweep.json"))
    args = ap.parse_args()
    from transformers import AutoModelForCausalLM

    pair = make_pair_set(args.models)
    target = args.target or pair["target"]
    draft = args.draft or pair["draft_perturbed"]
    hf = AutoModelForCausalLM.from_pretrained(str(target), dtype=torch.float32).eval()
    results = {"target": str(target), "draft": str(draft), "K": K, "budget": BUDGET, "machine": "cpu"}

    rows = []
    for temp in (0.7, 1.0):
        for c in (1.0, 0.5, 0.2, 0.05):
            r = run(hf, draft, c=c, temp=temp)
            results[f"saguaro_T{temp}_C{c}"] = r
            rows.append((temp, c, r["hit_rate"], r["accept_len"]))
    table("Saguaro C (geometric fan-out, B=15, batch 16)", ["temperature", "C", "hit rate", "accept len"], rows)

    rows = []
    uniform = [BUDGET // (K + 1)] * (K + 1)
    for name, fan, online in (("geometric prior", None, False), ("geometric online", None, True),
                              ("uniform", uniform, False)):
        r = run(hf, draft, temp=0.7, fanout=fan, online=online, c=0.5)
        results[f"fanout_{name}"] = r
        rows.append((name, str(r["fanout"]), r["hit_rate"], r["accept_len"]))
    table("Fan-out at budget 15 (T=0.7, C=0.5)", ["schedule", "F_0..F_K (final)", "hit rate", "accept len"], rows)

    rows = []
    for batch in (1, 4, 16):
        for backup in ("neural", "fast", "adaptive"):
            r = run(hf, draft, temp=0.7, backup=backup, batch=batch, c=0.5)
            results[f"backup_{backup}_b{batch}"] = r
            rows.append((batch, backup, r["hit_rate"], r["accept_len"], r["backup_ms_per_round"]))
    table("Backup policy (T=0.7, C=0.5; adaptive b*=8)", ["batch", "backup", "hit rate", "accept len",
                                                          "backup ms/round"], rows)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=1))
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
