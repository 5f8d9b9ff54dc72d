"""SSD's draft side on a device against a Hugging Face target, without SGLang: the GPU check's rows.

Models are made here from random weights (sglang_ssd/testing/tiny_models.py: a locally trained
512-token tokenizer, a 3-layer target, a perturbed copy as the draft; and a 40-token pair for the
sampled law), nothing is downloaded. Each check is one row of the table bench/gpu_check.sh prints:
- greedy: SSD rounds (the real Speculator, DraftModel on --device) verified by the worker's rule
  against the HF target on --device: tokens identical to the target's own greedy decoding;
- seeded: sampled requests with `sampling_seed`, identical to the seeded reference (Gumbel-max
  of the target's law with the shared noise), whatever the draft proposed;
- sampled law: chi-square of SSD's first 3 tokens (and tokens 4-5) against the exact target law,
  rejection sampling on --device (Triton kernels on CUDA);
- grammar: a regex request (xgrammar on both sides): the target's greedy output under the
  grammar, drafted with the grammar;
- draft CUDA graphs: the same rounds with sglang_ssd/draft_graphs.py installed: shipped tokens
  identical to the eager draft's, tree time eager vs graphs, replays and eager fallbacks (CUDA
  only; skipped elsewhere, said so).
Writes the rows as JSON (--out) and prints them. `--device cpu --quick` runs every row but the
graphs in about a minute on a CPU (bench/gpu_check.sh --dry-run).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
import traceback
from pathlib import Path

import torch

REGEX = r"(yes|no)[0-9]{3}"
PROMPTS = ["The quick brown fox", "def add(a, b):", "Numbers: 0 1 2 3", "Question: what is 12 plus 30?"]


def _row(check, ok, result, detail="", seconds=0.0, skipped=False):
    return {"check": check, "ok": bool(ok), "skipped": bool(skipped), "result": result, "detail": detail,
            "seconds": round(seconds, 1)}


def _speculator(path, device, k=4, fanout=(2, 2, 1, 1, 3), slots=8192):
    from sglang_ssd.draft_model import DraftModel
    from sglang_ssd.speculator import Speculator

    return Speculator(DraftModel(str(path), device, "float32", slots), k, list(fanout), "neural", 8)


def _target(path, device):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(str(path), dtype=torch.float32).to(device).eval()


def check_greedy(models, device, n_tokens):
    from transformers import AutoTokenizer

    from sglang_ssd.testing.hf_rounds import greedy_reference, ssd_greedy

    t0 = time.perf_counter()
    tok = AutoTokenizer.from_pretrained(str(models["target"]))
    target = _target(models["target"], device)
    prompts = [tok(p)["input_ids"] for p in PROMPTS]
    spec = _speculator(models["draft_perturbed"], device)
    got, st = ssd_greedy(spec, target, prompts, n_tokens)
    want = [greedy_reference(target, p, n_tokens) for p in prompts]
    same = sum(g == w for g, w in zip(got, want))
    acc = st["emitted"] / max(st["rounds"], 1)
    return _row(f"greedy tokens vs HF target ({device})", same == len(prompts),
                f"{same}/{len(prompts)} identical", f"{n_tokens} tokens each; {acc:.2f} tokens/round, "
                f"hits {st['hits']}/{st['lookups']}", time.perf_counter() - t0)


def _small_pair(root: Path):
    from transformers import LlamaConfig, LlamaForCausalLM

    out = {}
    for name, seed in (("target", 11), ("other", 12)):
        path = root / f"v40_{name}"
        if not (path / "config.json").exists():
            torch.manual_seed(seed)
            cfg = LlamaConfig(vocab_size=40, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                              num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                              initializer_range=0.08, tie_word_embeddings=False)
            LlamaForCausalLM(cfg).save_pretrained(str(path))
        out[name] = path
    return out


def check_sampled(root, device, n):
    from sglang_ssd.testing.simulate import TargetProbs, chi_square, sample_ssd

    t0 = time.perf_counter()
    pair = _small_pair(root)
    hf = _target(pair["target"], device)
    target = TargetProbs(hf, 1.0, 5, 0.95)
    prompt, length = [3, 7, 11, 5], 4
    exact = target.exact(prompt, length)
    spec = _speculator(pair["target"], device, k=2, fanout=(2, 2, 2), slots=1 << 16)
    spec.saguaro_c = 0.3
    samples, hits, lookups = sample_ssd(spec, target, prompt, n, length)
    stats = []
    for sl in (slice(0, 2), slice(2, 4)):
        proj = {}
        for seq, p in exact.items():
            proj[seq[sl]] = proj.get(seq[sl], 0.0) + p
        stats.append(chi_square([x[sl] for x in samples], proj, alpha=5e-5))
    ok = all(s < c for s, c in stats)
    return _row(f"sampled law vs exact target law ({device})", ok, "chi-square pass" if ok else "chi-square FAIL",
                f"N={n}, top-k 5, top-p 0.95, Saguaro C 0.3; tokens 1-2 chi2 {stats[0][0]:.1f} < {stats[0][1]:.1f}, "
                f"3-4 {stats[1][0]:.1f} < {stats[1][1]:.1f}; hits {hits}/{lookups}", time.perf_counter() - t0)


def check_seeded(root, device, n):
    from sglang_ssd.sampling import gumbel_choice
    from sglang_ssd.testing.simulate import TargetProbs, sample_ssd

    t0 = time.perf_counter()
    pair = _small_pair(root)
    hf = _target(pair["target"], device)
    target = TargetProbs(hf, 0.9, -1, 0.9)
    prompt, length = [3, 7, 11, 5], 6
    seeds = list(range(100, 100 + n))
    spec = _speculator(pair["other"], device, k=2, fanout=(2, 2, 2), slots=1 << 16)
    samples, hits, lookups = sample_ssd(spec, target, prompt, n, length, seeds=seeds)
    same = 0
    for sd, got in zip(seeds, samples):
        ctx = list(prompt)
        for _ in range(length):
            ctx.append(int(gumbel_choice(target(ctx)[None], sd, [len(ctx)])[0]))
        same += tuple(ctx[len(prompt):]) == tuple(got)
    return _row(f"seeded sampling vs seeded reference ({device})", same == n, f"{same}/{n} identical",
                f"{length} tokens each, T 0.9, top-p 0.9; hits {hits}/{lookups}", time.perf_counter() - t0)


def check_grammar(models, device, n_tokens):
    import re

    from transformers import AutoTokenizer

    from sglang_ssd.grammar import DraftGrammars
    from sglang_ssd.testing.hf_rounds import greedy_reference, ssd_greedy

    t0 = time.perf_counter()
    try:
        import xgrammar  # noqa: F401
    except ImportError as e:
        return _row("grammar request (regex)", False, "skipped: xgrammar missing", str(e), skipped=True)
    tok = AutoTokenizer.from_pretrained(str(models["target"]))
    target = _target(models["target"], device)
    grammars = DraftGrammars(str(models["target"]), int(target.config.vocab_size))
    prompts = [tok(p)["input_ids"] for p in PROMPTS[:2]]
    spec = _speculator(models["draft_perturbed"], device)
    got, st = ssd_greedy(spec, target, prompts, n_tokens, grammar=("regex", REGEX), grammars=grammars)
    want = [greedy_reference(target, p, n_tokens, grammars.matcher("regex", REGEX), int(target.config.vocab_size))
            for p in prompts]
    texts = [tok.decode([t for t in g if t != tok.eos_token_id]) for g in got]
    legal = sum(bool(re.fullmatch(REGEX, t)) for t in texts)
    same = sum(g == w for g, w in zip(got, want))
    ok = same == len(prompts) and legal == len(prompts)
    return _row(f"grammar request, regex {REGEX} ({device})", ok, f"{same}/{len(prompts)} identical, "
                f"{legal}/{len(prompts)} match", f"outputs {texts!r}; draft masked with xgrammar; hits "
                f"{st['hits']}/{st['lookups']}", time.perf_counter() - t0)


def check_draft_graphs(models, device):
    """Tree steps eager vs CUDA graphs on the same script of rounds."""
    from transformers import AutoTokenizer

    from sglang_ssd.cuda_graphs import graphs_available
    from sglang_ssd.draft_graphs import install
    from sglang_ssd.testing.draft_scenarios import requests, run_script

    name = "draft tree steps, eager vs CUDA graphs"
    if not graphs_available(device):
        return _row(name, True, "skipped: needs CUDA", "CUDA graph capture and replay", skipped=True)
    t0 = time.perf_counter()
    tok = AutoTokenizer.from_pretrained(str(models["target"]))
    prompt = tok(PROMPTS[0] + " jumps over the lazy dog. " + PROMPTS[2])["input_ids"]
    begins = [b for b in requests(prompt) if b.rid in ("greedy", "seeded")]  # deterministic drafts
    times, records, stats = {}, {}, None
    for mode in ("eager", "graphs", "graphs (warm)"):
        spec = _speculator(models["target"], device, fanout=(3, 2, 2, 2, 3)) if mode != "graphs (warm)" else spec
        if mode == "graphs":
            g = install(spec.model)
            stats = g.stats if g is not None else None
        tree = []
        orig = spec.speculate

        def timed(*a, **kw):
            torch.cuda.synchronize()
            t = time.perf_counter()
            orig(*a, **kw)
            torch.cuda.synchronize()
            tree.append(time.perf_counter() - t)

        spec.speculate = timed
        records[mode] = run_script(spec, begins, rounds=6)
        spec.speculate = orig
        times[mode] = sorted(tree)[len(tree) // 2] * 1e3
    same = sum(a == b for a, b in zip(records["eager"], records["graphs"]))
    ok = stats is not None and stats.replays > 0 and same == len(records["eager"])
    return _row(name, ok, f"tree {times['eager']:.1f} ms eager, {times['graphs (warm)']:.1f} ms graphs",
                f"{same}/{len(records['eager'])} shipped speculations identical; graph stats "
                f"{stats.as_dict() if stats else None}; first graphs run (captures) {times['graphs']:.1f} ms",
                time.perf_counter() - t0)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--quick", action="store_true", help="fewer tokens and samples (a CPU dry run)")
    ap.add_argument("--out", type=Path, default=Path(os.environ.get("OUT", "/tmp")) / "gpu_draft_check.json")
    ap.add_argument("--models", type=Path, default=None, help="where to make the models (default: a temp dir)")
    args = ap.parse_args()
    from sglang_ssd.testing.tiny_models import make_pair_set

    root = args.models or Path(tempfile.mkdtemp(prefix="ssd-gpu-check-"))
    t0 = time.perf_counter()
    models = make_pair_set(root / "pair")
    print(f"# models made in {root} in {time.perf_counter() - t0:.1f} s (random weights)", flush=True)
    n_tok = 16 if args.quick else 32
    checks = [("greedy", lambda: check_greedy(models, args.device, n_tok)),
              ("seeded", lambda: check_seeded(root, args.device, 16 if args.quick else 64)),
              ("sampled law", lambda: check_sampled(root, args.device, 300 if args.quick else 1000)),
              ("grammar", lambda: check_grammar(models, args.device, 24)),
              ("draft CUDA graphs", lambda: check_draft_graphs(models, args.device))]
    rows = []
    for name, fn in checks:
        t1 = time.perf_counter()
        try:
            row = fn()
        except Exception as e:
            traceback.print_exc()
            row = _row(f"{name} ({args.device})", False, f"ERROR {type(e).__name__}", str(e)[:300],
                       time.perf_counter() - t1)
        rows.append(row)
        print(json.dumps(row), flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"device": args.device, "quick": args.quick, "rows": rows}, indent=1))
    print(f"wrote {args.out}")
    return 0 if all(r["ok"] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
