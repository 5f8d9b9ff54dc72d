"""SSD's speedup on a GPU, projected from measured times (random weights, no downloads).

Builds random-weight models with the shapes of Llama-3.1-8B (target) and Llama-3.2-1B (draft) on
the device and measures, at batch 1 and 16 with a 512-token context: one plain decode step, the
verify of K+1 tokens, the draft's tree for K levels with B branches per request (the glue forward
plus K batched steps; every branch reads a copy of its request's prefix KV, so this is an upper
bound on what shared-prefix attention costs), the neural backup (K steps for one request) and the
hand-off (a StepReply carrying the drafts, and the compact q' for sampled requests, over a real ZeroMQ
ipc socket, decoded and copied to the device). Then it evaluates the paper's round model with
those times and with the hit rate and acceptance measured on the CPU pair (bench/compare.py's
JSON, or the numbers below): tokens/s of AR, synchronous SD and SSD per K, and SSD's best K.
Random weights accept nothing, so every speedup here is a PROJECTION, labelled as one.
`--shapes tiny --device cpu` runs the same code in seconds, so the script is checked without a GPU.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import threading
import time
from pathlib import Path

import torch

BENCH = Path(__file__).resolve().parent
SHAPES = {
    # name: (target, draft) LlamaConfig fields
    "llama8b-1b": (dict(hidden_size=4096, intermediate_size=14336, num_hidden_layers=32, num_attention_heads=32,
                        num_key_value_heads=8, vocab_size=128256, rope_theta=500000.0, tie_word_embeddings=False),
                   dict(hidden_size=2048, intermediate_size=8192, num_hidden_layers=16, num_attention_heads=32,
                        num_key_value_heads=8, vocab_size=128256, rope_theta=500000.0, tie_word_embeddings=True)),
    "tiny": (dict(hidden_size=256, intermediate_size=512, num_hidden_layers=4, num_attention_heads=4,
                  num_key_value_heads=2, vocab_size=4096, tie_word_embeddings=False),
             dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=2,
                  num_key_value_heads=1, vocab_size=4096, tie_word_embeddings=True)),
}
# What this repo's CPU pair measured (bench/compare.py, humaneval, T=0, pinned; 2026-11-29), used
# when bench/results/compare.json is not there (it is git-ignored and may not reach a device).
CPU_PAIR = {"hit_rate": 0.42, "ssd_accept_len": 1.92, "sd_accept_len": 1.49, "source": "README numbers"}


def cpu_pair_numbers(path: Path) -> dict:
    try:
        r = json.loads(path.read_text())
        pres = r["protocols"]["pinned"]
        sd = "sd" if "sd" in pres else "sync-sd"

        def humaneval_t0(mode: dict) -> dict:  # one request at a time; "temps" in runs before 30 Nov 2026
            return mode["cells"]["1"]["0.0"]["humaneval"] if "cells" in mode else mode["temps"]["0.0"]["humaneval"]

        ssd = humaneval_t0(pres["ssd"])
        return {"hit_rate": float(ssd["hit_rate"]), "ssd_accept_len": float(ssd["accept_len"]),
                "sd_accept_len": float(humaneval_t0(pres[sd])["accept_len"]), "source": str(path)}
    except Exception:
        return dict(CPU_PAIR)


def build(fields: dict, device: str, dtype: torch.dtype):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    old = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device):
            model = LlamaForCausalLM(LlamaConfig(**fields, max_position_embeddings=8192))
    finally:
        torch.set_default_dtype(old)
    return model.eval()


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def timed(fn, device: str, reps: int) -> float:
    """Median seconds of fn() over reps (after 2 warm-up calls)."""
    for _ in range(2):
        fn()
    out = []
    for _ in range(reps):
        sync(device)
        t0 = time.perf_counter()
        fn()
        sync(device)
        out.append(time.perf_counter() - t0)
    return statistics.median(out)


class Forward:
    """Decode-time forwards of `n` new tokens per row over a `ctx`-token prefix, the prefix KV
    kept and the new tokens' KV dropped after each call."""

    def __init__(self, model, rows: int, ctx: int, device: str):
        from transformers import DynamicCache

        self.model, self.ctx, self.device, self.rows = model, ctx, device, rows
        vocab = model.config.vocab_size
        self.cache = DynamicCache(config=model.config)
        with torch.no_grad():
            model(torch.randint(0, vocab, (rows, ctx), device=device), past_key_values=self.cache, use_cache=True)

    def __call__(self, n: int) -> None:
        with torch.no_grad():
            ids = torch.randint(0, self.model.config.vocab_size, (self.rows, n), device=self.device)
            self.model(ids, past_key_values=self.cache, use_cache=True)
        self.cache.crop(self.ctx)


def handoff_s(bs: int, k: int, vocab: int, sampled: bool, device: str, reps: int) -> float:
    """One StepReply with bs speculations from a draft thread to here over ipc, decoded, q' on device."""
    import zmq

    from sglang_ssd import wire

    d = tempfile.mkdtemp(prefix="ssd-handoff-")
    ctx = zmq.Context.instance()
    a, b = ctx.socket(zmq.PAIR), ctx.socket(zmq.PAIR)
    a.bind(f"ipc://{d}/s")
    b.connect(f"ipc://{d}/s")
    from sglang_ssd import qlaw

    cq = qlaw.compact(torch.softmax(torch.randn(k, vocab) * 3, -1)) if sampled else None
    q, q_ids, counts = cq.pack() if sampled else (b"", b"", [])
    specs = [wire.Spec(rid=f"r{i}", hit=True, tokens=list(range(k)), q=q, q_ids=q_ids, q_counts=counts)
             for i in range(bs)]
    raw = wire.encode(wire.StepReply(round=1, specs=specs))

    def serve():
        for _ in range(reps + 2):
            a.recv()
            a.send(raw)

    th = threading.Thread(target=serve, daemon=True)
    th.start()

    def one():
        b.send(b"go")
        rep = wire.decode_from_draft(b.recv())
        toks = torch.tensor([s.tokens for s in rep.specs], device=device)
        if sampled:
            qs = [qlaw.unpack(s.q, s.q_ids, s.q_counts, k, vocab) for s in rep.specs]
            torch.stack(qs).to(device, non_blocking=False)
        return toks

    t = timed(one, device, reps)
    th.join(timeout=10)
    a.close(0)
    b.close(0)
    return t


def expected_tokens(a: float, k: int) -> float:
    a = min(max(a, 0.0), 1 - 1e-9)
    return (1 - a ** (k + 1)) / (1 - a)


def acceptance_from(accept_len: float, k: int) -> float:
    """The per-token acceptance a whose geometric law gives `accept_len` tokens per round at K."""
    lo, hi = 0.0, 1 - 1e-9
    for _ in range(60):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if expected_tokens(mid, k) < accept_len else (lo, mid)
    return lo


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shapes", default="llama8b-1b", choices=sorted(SHAPES))
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--dtype", default=None, help="default: bfloat16 on cuda, float32 on cpu")
    ap.add_argument("--ctx", type=int, default=512)
    ap.add_argument("--batches", default="1,16")
    ap.add_argument("--ks", default="1,2,3,4,5,6,8")
    ap.add_argument("--budget", type=int, default=24, help="branches B per request (the issue's 24)")
    ap.add_argument("--reps", type=int, default=10)
    ap.add_argument("--cpu-json", type=Path, default=BENCH / "results" / "compare.json")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    dev = args.device
    dtype = getattr(torch, args.dtype) if args.dtype else (torch.bfloat16 if dev.startswith("cuda") else torch.float32)
    tfields, dfields = SHAPES[args.shapes]
    t0 = time.perf_counter()
    target, draft = build(tfields, dev, dtype), build(dfields, dev, dtype)
    cpu = cpu_pair_numbers(args.cpu_json)
    # The CPU pair ran at K=4: the per-token acceptance its tokens per round imply.
    a_ssd, a_sd = acceptance_from(cpu["ssd_accept_len"], 4), acceptance_from(cpu["sd_accept_len"], 4)
    print(f"# SSD projection: {args.shapes} random weights on {dev} ({torch.cuda.get_device_name() if dev.startswith('cuda') else 'cpu'}), "
          f"{dtype}, context {args.ctx}, B={args.budget}; CPU-pair numbers from {cpu['source']}: hit rate "
          f"{cpu['hit_rate']:.2f}, SSD accept {cpu['ssd_accept_len']:.2f} (a={a_ssd:.2f}), SD accept "
          f"{cpu['sd_accept_len']:.2f} (a={a_sd:.2f}); built in {time.perf_counter() - t0:.0f} s", flush=True)
    rows, ks = [], [int(x) for x in args.ks.split(",")]
    for bs in [int(x) for x in args.batches.split(",")]:
        tgt = Forward(target, bs, args.ctx, dev)
        drf = Forward(draft, bs, args.ctx, dev)
        tree_rows = Forward(draft, bs * args.budget, args.ctx, dev)
        one = Forward(draft, 1, args.ctx, dev)
        ar = timed(lambda: tgt(1), dev, args.reps)
        d_step = timed(lambda: drf(1), dev, args.reps)
        b_step = timed(lambda: tree_rows(1), dev, args.reps)
        backup_step = timed(lambda: one(1), dev, args.reps)
        h_greedy = handoff_s(bs, 4, tfields["vocab_size"], False, dev, args.reps * 5)
        h_sampled = handoff_s(bs, 4, tfields["vocab_size"], True, dev, args.reps)
        for k in ks:
            verify = timed(lambda: tgt(k + 1), dev, args.reps)
            glue = timed(lambda: drf(k + 1), dev, args.reps)
            tree = glue + k * b_step
            backup = k * backup_step
            p = cpu["hit_rate"]
            e_ssd = expected_tokens(a_ssd, k)
            ssd_round = p * max(verify, tree) + (1 - p) * (verify + backup) + h_greedy
            sd_round = verify + k * d_step
            rows.append(dict(batch=bs, k=k, ar_ms=ar * 1e3, verify_ms=verify * 1e3, tree_ms=tree * 1e3,
                             tree_over_verify=tree / verify, backup_ms=backup * 1e3, handoff_ms=h_greedy * 1e3,
                             handoff_sampled_ms=h_sampled * 1e3, draft_step_ms=d_step * 1e3,
                             ar_tok_s=bs / ar, sd_tok_s=bs * expected_tokens(a_sd, k) / sd_round,
                             ssd_tok_s=bs * e_ssd / ssd_round))
            print(f"  batch {bs} K={k}: verify {verify * 1e3:.2f} ms, tree {tree * 1e3:.2f} ms", flush=True)
        del tgt, drf, tree_rows, one
    print("\n| batch | K | AR step ms | verify ms | tree ms (B=%d) | tree/verify | backup ms | hand-off ms "
          "(greedy / with q') | AR tok/s | SD tok/s (proj.) | SSD tok/s (proj.) | SSD/SD | SSD/AR |" % args.budget)
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['batch']} | {r['k']} | {r['ar_ms']:.2f} | {r['verify_ms']:.2f} | {r['tree_ms']:.2f} | "
              f"{r['tree_over_verify']:.2f} | {r['backup_ms']:.2f} | {r['handoff_ms']:.3f} / {r['handoff_sampled_ms']:.3f} | "
              f"{r['ar_tok_s']:.0f} | {r['sd_tok_s']:.0f} | {r['ssd_tok_s']:.0f} | "
              f"{r['ssd_tok_s'] / r['sd_tok_s']:.2f}x | {r['ssd_tok_s'] / r['ar_tok_s']:.2f}x |")
    best = {}
    for r in rows:
        if r["tree_over_verify"] <= 1 and (r["batch"] not in best or r["ssd_tok_s"] > best[r["batch"]]["ssd_tok_s"]):
            best[r["batch"]] = r
    for bs, r in best.items():
        print(f"PROJECTION batch {bs}: best K whose tree fits the verify = {r['k']} "
              f"(SSD {r['ssd_tok_s']:.0f} tok/s, {r['ssd_tok_s'] / r['sd_tok_s']:.2f}x SD, {r['ssd_tok_s'] / r['ar_tok_s']:.2f}x AR)")
    out = args.out or Path(os.environ.get("OUT", BENCH / "results")) / "gpu_projection.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"shapes": args.shapes, "device": dev, "dtype": str(dtype), "ctx": args.ctx,
                               "budget": args.budget, "cpu_pair": cpu, "rows": rows,
                               "label": "projection: measured times, CPU-pair acceptance"}, indent=1))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
