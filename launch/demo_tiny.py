"""The fast smoke demo (`python -m sglang_ssd.launch.demo --tiny`): SSD on small local random models.

Makes (once, cached) a small random Llama target with a locally trained tokenizer and drafts for
it, starts `python -m sglang_ssd.cpu_serve ... --speculative-algorithm SSD`, generates greedily,
checks every output against the same server without speculation, and prints the text, the
acceptance length and the cache hit rate. The models have random weights: the text is noise; the
numbers and the exactness check are the point.
"""

from __future__ import annotations

import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from sglang_ssd.testing.server import CPUServer
from sglang_ssd.testing.tiny_models import make_pair_set

PROMPTS = ["The quick brown fox", "def add(a, b):", "Once upon a time", "Question: what is 12 plus 30?",
           "The weather today is", "for i in range(10):", "A speculative decoder", "Numbers: 0 1 2 3"]
BASE_ARGS = ["--dtype", "float32", "--sleep-on-idle", "--mem-fraction-static", "0.25", "--max-total-tokens", "32768",
             "--log-level", "warning"]


def run(draft: str, n_prompts: int, max_new_tokens: int, k: int, models_root: Path) -> None:
    print(f"[demo] models in {models_root}")
    models = make_pair_set(models_root)
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(models["target"]))
    prompts = [tok(PROMPTS[i % len(PROMPTS)])["input_ids"] for i in range(n_prompts)]
    sp = {"temperature": 0, "max_new_tokens": max_new_tokens, "ignore_eos": True}
    logs = Path(tempfile.mkdtemp(prefix="sglang-ssd-demo-"))

    def serve(server):
        t0 = time.perf_counter()
        with ThreadPoolExecutor(4) as ex:
            outs = list(ex.map(lambda p: server.generate(p, sp), prompts))
        return outs, time.perf_counter() - t0

    ssd_args = BASE_ARGS + ["--speculative-algorithm", "SSD", "--speculative-draft-model-path",
                            str(models[f"draft_{draft}"]), "--speculative-num-steps", str(k)]
    print(f"[demo] starting SSD server (draft: {draft}, K={k}); logs in {logs}")
    with CPUServer(models["target"], ssd_args, log_path=str(logs / "ssd.log")) as ssd:
        ssd_outs, ssd_s = serve(ssd)
        stats = ssd.ssd_stats()
    print("[demo] starting the same server without speculation, for the exactness check")
    with CPUServer(models["target"], BASE_ARGS, log_path=str(logs / "plain.log")) as plain:
        plain_outs, plain_s = serve(plain)

    same = sum(a["output_ids"] == b["output_ids"] for a, b in zip(ssd_outs, plain_outs))
    for p, o in zip(PROMPTS, ssd_outs):
        print(f"\n>>> {p!r}\n{o['text']!r}")
    n_tok = sum(o["meta_info"]["completion_tokens"] for o in ssd_outs)
    print("\n[demo] results")
    print(f"  outputs identical to the non-speculative server: {same}/{len(prompts)}")
    print(f"  acceptance length (tokens per target forward):   {stats.get('accept_length'):.2f}")
    print(f"  speculation cache hit rate:                      {stats.get('cache_hit_rate') or 0:.2f}")
    print(f"  draft wait per decode step:                      {stats.get('draft_wait_ms_per_step') or 0:.1f} ms")
    print(f"  fan-out per position F_0..F_K:                   {stats.get('fanout')}")
    print(f"  wall time, {n_tok} tokens: SSD {ssd_s:.1f}s, plain {plain_s:.1f}s (tiny models on CPU: "
          "timing is not the point here)")
    if same != len(prompts):
        raise SystemExit("[demo] MISMATCH between SSD and plain decoding")
