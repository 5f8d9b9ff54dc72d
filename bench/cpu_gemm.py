"""Linear layers of a 1.5B Qwen body for M = 1..16 rows: every CPU kernel candidate and the one chosen.

    python bench/cpu_gemm.py [--core 1] [--threads 1] [--tokens 1,2,3,5,9,16] [--dtypes float32,bfloat16]
    python bench/cpu_gemm.py --core 0,1 --threads 2   # both cores

Times the shapes SGLang runs for Qwen2.5-Coder-1.5B (merged QKV 1536->2048, O 1536->1536, merged
gate_up 1536->17920, down 8960->1536), 28 layers, for M tokens at once (M = 1 is a decode step,
M = K+1 a verify): torch's F.linear, the project's AVX2 kernel (kernels/cpu_rowdot.py, float32, the
weight's rows split between the threads) and oneDNN's prepacked matmul (where this CPU can make the pack: a bfloat16 pack needs
avx512bw/vl/dq or avx_ne_convert; the row says why when it cannot), then the plan the measured
choice (kernels/cpu_linear.py) gives each shape, as every CPU server of this package runs it. At
small M these GEMMs are bound by reading the weights, so a kernel that reads them once costs about
the same for M = 1 and M = 5. Every call is timed from memory (the caches emptied before it), as
a forward through 28 layers meets its weights. The CPU class is printed (an AVX2 CPU can be approximated on an
AVX-512 one with ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2 MKL_ENABLE_INSTRUCTIONS=AVX2;
the label then says "emulated").
"""

from __future__ import annotations

import argparse
import os
import time

import torch
import torch.nn.functional as F

from sglang_ssd.kernels import cpu_caps, cpu_linear, cpu_rowdot

H, INTER, LAYERS = 1536, 8960, 28
SHAPES = {"qkv": (2048, H), "o": (H, H), "gate_up": (2 * INTER, H), "down": (H, INTER)}


COLD = None  # cpu_linear.ColdCaches: each call timed from memory, as in a forward through 28 layers


def best_ms(fn, reps: int = 5) -> float:
    fn()
    ts = []
    for _ in range(reps):
        COLD()
        t0 = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t0)
    return sorted(ts)[len(ts) // 2] * 1e3


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--core", default="1", help="the core(s) it runs on, e.g. 1 or 0,1 (with --threads 2)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--tokens", default="1,2,3,5,9,16")
    ap.add_argument("--dtypes", default="float32,bfloat16")
    args = ap.parse_args()
    os.sched_setaffinity(0, {int(c) for c in args.core.split(",")})
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    caps = cpu_caps.caps()
    global COLD
    COLD = cpu_linear.ColdCaches()
    print(f"## Linear layers of a 1.5B Qwen body ({LAYERS} layers), ms, core {args.core}, {args.threads} thread(s), "
          f"CPU {caps.model} [{caps.label}]\n")
    print("| dtype | M tokens | F.linear | rowdot (ours, AVX2) | oneDNN packed | chosen | chosen / M=1 chosen |")
    print("|---|---|---|---|---|---|---|")
    for name in args.dtypes.split(","):
        dt = getattr(torch, name)
        ws = {k: torch.randn(*s).to(dt) for k, s in SHAPES.items()}
        why = cpu_linear.pack_unsupported(dt)
        packs = {k: cpu_linear._pack(w) for k, w in ws.items()} if not why else {}
        kernels = {k: cpu_linear.LinearKernel(w.clone()) for k, w in ws.items()}
        rowdot = dt == torch.float32 and cpu_rowdot.available()
        one = None
        for m in [int(x) for x in args.tokens.split(",")]:
            xs = {k: torch.randn(m, w.shape[1]).to(dt) for k, w in ws.items()}
            lin = sum(best_ms(lambda k=k: F.linear(xs[k], ws[k])) for k in ws) * LAYERS
            rd = (sum(best_ms(lambda k=k: cpu_rowdot.linear(xs[k], ws[k])) for k in ws) * LAYERS) if rowdot else None
            pk = (sum(best_ms(lambda k=k: cpu_linear._run("onednn", xs[k], None, packs[k], None)) for k in ws)
                  * LAYERS) if packs else None
            ch = sum(best_ms(lambda k=k: kernels[k](xs[k], ws[k])) for k in ws) * LAYERS
            one = ch if one is None else one
            paths = "/".join(sorted({kernels[k].plan.path_for(m) for k in ws}))
            print(f"| {name} | {m} | {lin:.0f} | {f'{rd:.0f}' if rd is not None else '-'} | "
                  f"{f'{pk:.0f}' if pk is not None else 'cannot: ' + why} | {ch:.0f} ({paths}) | {ch / one:.2f}x |",
                  flush=True)


if __name__ == "__main__":
    main()
