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
Every forward runs at fixed shapes (the same KV slots written each call), eagerly and, on CUDA,
as a captured CUDA graph replay (sglang_ssd/cuda_graphs.py): the tables give both, since on a GPU
launch overhead is most of a small model's step. `--shapes tiny --device cpu` runs the same code
in seconds (eager only), so the script is checked without a GPU.
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
from typing import Optional

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


class _FixedLayer:
    """One layer's KV for a fixed-shape forward: `ctx` prefix slots then the n new tokens' slots,
    written in place at the same slots every call (so a CUDA graph replays it unchanged)."""

    is_compileable = False
    is_sliding = False

    def __init__(self, write: torch.Tensor, length: int):
        self.write, self.length = write, length
        self.keys = self.values = None
        self.is_initialized = False

    def update(self, key_states, value_states, *args, **kwargs):
        if self.keys is None:
            b, h, _, d = key_states.shape
            self.keys = key_states.new_zeros(b, h, self.length, d)
            self.values = value_states.new_zeros(b, h, self.length, value_states.shape[-1])
            self.is_initialized = True
        self.keys.index_copy_(2, self.write, key_states)
        self.values.index_copy_(2, self.write, value_states)
        return self.keys, self.values

    def get_seq_length(self) -> int:
        return self.length

    def get_mask_sizes(self, query_length: int) -> tuple[int, int]:
        return self.length, 0


class Forward:
    """Decode-time forwards of `n` new tokens per row over a `ctx`-token prefix, at fixed shapes:
    the same slots are written every call, so `eager()` and the CUDA graph `graphed()` replays
    (cuda_graphs.StaticGraph) time the same work. The prefix KV is zeros: costs do not depend on
    values (random weights accept nothing anyway)."""

    def __init__(self, model, rows: int, ctx: int, n: int, device: str):
        from transformers.cache_utils import Cache

        self.model, self.device = model, device
        dtype = next(model.parameters()).dtype
        vocab = model.config.vocab_size
        write = torch.arange(ctx, ctx + n, device=device)
        self.cache = Cache(layers=[_FixedLayer(write, ctx + n) for _ in range(model.config.num_hidden_layers)])
        g = torch.Generator(device="cpu").manual_seed(rows * 1000 + n)
        self.ids = torch.randint(0, vocab, (rows, n), generator=g, device="cpu").to(device)
        self.pos = (torch.arange(n, device=device) + ctx).view(1, -1).expand(rows, n).contiguous()
        mask = torch.zeros(n, ctx + n, dtype=dtype, device=device)
        mask[:, ctx:] = torch.full((n, n), float("-inf"), dtype=dtype, device=device).triu(1)
        self.mask = mask.view(1, 1, n, ctx + n).expand(rows, 1, n, ctx + n).contiguous()
        self.graph = None

    @torch.inference_mode()
    def _run(self):
        return self.model(input_ids=self.ids, position_ids=self.pos, attention_mask=self.mask,
                          past_key_values=self.cache, use_cache=True).logits

    def eager(self) -> None:
        self._run()

    def capture(self) -> bool:
        """Capture the CUDA graph (False off CUDA or when capture fails, logged)."""
        from sglang_ssd.cuda_graphs import StaticGraph, graphs_available

        if not graphs_available(self.device):
            return False
        try:
            with torch.inference_mode():
                self.graph = StaticGraph(lambda: self._run(), {})
        except Exception as e:
            print(f"  CUDA graph capture failed ({type(e).__name__}: {e}); eager only", flush=True)
            torch.cuda.synchronize()
            self.graph = None
        return self.graph is not None

    def graphed(self) -> None:
        self.graph.replay()


def both(fwd: "Forward", device: str, reps: int, graphs: bool) -> tuple[float, Optional[float]]:
    """(eager seconds, CUDA-graph seconds or None) of one forward, medians of reps."""
    eager = timed(fwd.eager, device, reps)
    graph = timed(fwd.graphed, device, reps) if graphs and fwd.capture() else None
    return eager, graph


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
    ap.add_argument("--graphs", action=argparse.BooleanOptionalAction, default=True,
                    help="also time every forward as a CUDA graph replay (CUDA only)")
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
    graphs = args.graphs and dev.startswith("cuda")

    def ms(x):
        return None if x is None else x * 1e3

    for bs in [int(x) for x in args.batches.split(",")]:
        ar, ar_g = both(Forward(target, bs, args.ctx, 1, dev), dev, args.reps, graphs)
        d_step, d_step_g = both(Forward(draft, bs, args.ctx, 1, dev), dev, args.reps, graphs)
        b_step, b_step_g = both(Forward(draft, bs * args.budget, args.ctx, 1, dev), dev, args.reps, graphs)
        one, one_g = both(Forward(draft, 1, args.ctx, 1, dev), dev, args.reps, graphs)
        h_greedy = handoff_s(bs, 4, tfields["vocab_size"], False, dev, args.reps * 5)
        h_sampled = handoff_s(bs, 4, tfields["vocab_size"], True, dev, args.reps)
        for k in ks:
            verify, verify_g = both(Forward(target, bs, args.ctx, k + 1, dev), dev, args.reps, graphs)
            glue, glue_g = both(Forward(draft, bs, args.ctx, k + 1, dev), dev, args.reps, graphs)
            p = cpu["hit_rate"]
            e_ssd, e_sd = expected_tokens(a_ssd, k), expected_tokens(a_sd, k)

            def rates(ar_s, verify_s, glue_s, b_s, d_s, one_s):
                tree = glue_s + k * b_s
                ssd_round = p * max(verify_s, tree) + (1 - p) * (verify_s + k * one_s) + h_greedy
                return tree, bs / ar_s, bs * e_sd / (verify_s + k * d_s), bs * e_ssd / ssd_round

            tree, ar_r, sd_r, ssd_r = rates(ar, verify, glue, b_step, d_step, one)
            row = dict(batch=bs, k=k, ar_ms=ar * 1e3, verify_ms=verify * 1e3, tree_ms=tree * 1e3,
                       tree_over_verify=tree / verify, backup_ms=k * one * 1e3, handoff_ms=h_greedy * 1e3,
                       handoff_sampled_ms=h_sampled * 1e3, draft_step_ms=d_step * 1e3, tree_step_ms=b_step * 1e3,
                       ar_tok_s=ar_r, sd_tok_s=sd_r, ssd_tok_s=ssd_r,
                       ar_graph_ms=ms(ar_g), verify_graph_ms=ms(verify_g), tree_step_graph_ms=ms(b_step_g),
                       tree_graph_ms=None, ar_tok_s_graphs=None, sd_tok_s_graphs=None, ssd_tok_s_graphs=None)
            if None not in (ar_g, verify_g, glue_g, b_step_g, d_step_g, one_g):
                tree_g, ar_rg, sd_rg, ssd_rg = rates(ar_g, verify_g, glue_g, b_step_g, d_step_g, one_g)
                row.update(tree_graph_ms=tree_g * 1e3, ar_tok_s_graphs=ar_rg, sd_tok_s_graphs=sd_rg,
                           ssd_tok_s_graphs=ssd_rg)
            rows.append(row)
            g_note = f" (graphs: verify {verify_g * 1e3:.2f} ms, tree {row['tree_graph_ms']:.2f} ms)" \
                if row["tree_graph_ms"] is not None else ""
            print(f"  batch {bs} K={k}: verify {verify * 1e3:.2f} ms, tree {tree * 1e3:.2f} ms{g_note}", flush=True)
        if dev.startswith("cuda"):
            torch.cuda.empty_cache()
    for label, sfx in (("eager", ""), ("CUDA graphs", "_graphs")):
        if sfx and not any(r["ssd_tok_s_graphs"] is not None for r in rows):
            print(f"\n(no CUDA-graph rows: {'no CUDA here' if not dev.startswith('cuda') else 'disabled or capture failed'})")
            continue
        key = {"": ("verify_ms", "tree_ms", "ar_ms"), "_graphs": ("verify_graph_ms", "tree_graph_ms", "ar_graph_ms")}[sfx]
        print(f"\n{label}: | batch | K | AR step ms | verify ms | tree ms (B=%d) | tree/verify | backup ms | hand-off ms "
              "(greedy / with q') | AR tok/s | SD tok/s (proj.) | SSD tok/s (proj.) | SSD/SD | SSD/AR |" % args.budget)
        print("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
        for r in rows:
            v_ms, t_ms, a_ms = (r[x] for x in key)
            ar_r, sd_r, ssd_r = r["ar_tok_s" + sfx], r["sd_tok_s" + sfx], r["ssd_tok_s" + sfx]
            print(f"| {r['batch']} | {r['k']} | {a_ms:.2f} | {v_ms:.2f} | {t_ms:.2f} | "
                  f"{t_ms / v_ms:.2f} | {r['backup_ms']:.2f} | {r['handoff_ms']:.3f} / {r['handoff_sampled_ms']:.3f} | "
                  f"{ar_r:.0f} | {sd_r:.0f} | {ssd_r:.0f} | {ssd_r / sd_r:.2f}x | {ssd_r / ar_r:.2f}x |")
        best = {}
        for r in rows:
            fits = r[key[1]] / r[key[0]] <= 1
            if fits and (r["batch"] not in best or r["ssd_tok_s" + sfx] > best[r["batch"]]["ssd_tok_s" + sfx]):
                best[r["batch"]] = r
        for bs, r in best.items():
            print(f"PROJECTION ({label}) batch {bs}: best K whose tree fits the verify = {r['k']} "
                  f"(SSD {r['ssd_tok_s' + sfx]:.0f} tok/s, {r['ssd_tok_s' + sfx] / r['sd_tok_s' + sfx]:.2f}x SD, "
                  f"{r['ssd_tok_s' + sfx] / r['ar_tok_s' + sfx]:.2f}x AR)")
    out = args.out or Path(os.environ.get("OUT", BENCH / "results")) / "gpu_projection.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"shapes": args.shapes, "device": dev, "dtype": str(dtype), "ctx": args.ctx,
                               "budget": args.budget, "cpu_pair": cpu, "rows": rows, "graphs": graphs,
                               "label": "projection: measured times, CPU-pair acceptance"}, indent=1))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
