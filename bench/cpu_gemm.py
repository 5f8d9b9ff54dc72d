"""Why a verify of K+1 tokens costs ~2x a decode step on this CPU, and what bfloat16 would change.

    python bench/cpu_gemm.py [--core 1] [--threads 1]

Times torch's linear layers over the shapes SGLang runs for Qwen2.5-Coder-1.5B (merged QKV
1536->2048, O 1536->1536, merged gate_up 1536->17920, down 8960->1536), 28 layers, for M tokens at
once (M = 1 is a decode step, M = K+1 a verify), float32 and bfloat16, F.linear against x @ W^T
pre-transposed, and oneDNN's matmul over a prepacked weight (kernels/cpu_linear.py, what every CPU
server of this package runs for M >= 2). At small M these GEMMs are bound by reading the weights,
so a kernel that reads them once costs the same for M = 1 and M = 5; one that does not, costs more.
"""

from __future__ import annotations

import argparse
import os
import time

import torch
import torch.nn.functional as F

from sglang_ssd.kernels import cpu_linear

H, INTER, LAYERS = 1536, 8960, 28
SHAPES = {"qkv": (2048, H), "o": (H, H), "gate_up": (2 * INTER, H), "down": (H, INTER)}


def best_ms(fn, reps: int = 5) -> float:
    fn()
    ts = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t0)
    return sorted(ts)[len(ts) // 2] * 1e3


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--core", type=int, default=1)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--tokens", default="1,2,3,5,9,16")
    args = ap.parse_args()
    os.sched_setaffinity(0, {args.core})
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    print(f"## Linear layers of a 1.5B Qwen body ({LAYERS} layers), ms, core {args.core}, {args.threads} thread(s)\n")
    print("| dtype | M tokens | F.linear | x @ W^T (pre-transposed) | oneDNN packed (as the servers run it) |\n|---|---|---|---|---|")
    for dt in (torch.float32, torch.bfloat16):
        ws = {k: torch.randn(*s).to(dt) for k, s in SHAPES.items()}
        wts = {k: w.t().contiguous() for k, w in ws.items()}
        packs = {k: cpu_linear.PackedWeight(w) for k, w in ws.items()} if cpu_linear.available() else {}
        for m in [int(x) for x in args.tokens.split(",")]:
            xs = {k: torch.randn(m, w.shape[1]).to(dt) for k, w in ws.items()}
            lin = sum(best_ms(lambda k=k: F.linear(xs[k], ws[k])) for k in ws) * LAYERS
            mm = sum(best_ms(lambda k=k: xs[k] @ wts[k]) for k in ws) * LAYERS
            packed = (sum(best_ms(lambda k=k: cpu_linear.packed_linear(xs[k], ws[k], None, packs[k])) for k in ws)
                      * LAYERS if packs else float("nan"))
            print(f"| {str(dt).split('.')[-1]} | {m} | {lin:.0f} | {mm:.0f} | {packed:.0f} |", flush=True)


if __name__ == "__main__":
    main()
