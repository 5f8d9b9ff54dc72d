"""How much one server's decode step moves from one start to the next on this machine: plain SGLang
(the real pair's target, float32, every process on cores 0-1) started `--starts` times, each
serving `--requests` greedy requests of `--max-new-tokens` one after another, streamed; per request
the median gap between tokens (ms) and the mean from first to last token.

    python bench/step_noise.py [--starts 3] [--requests 3] [--max-new-tokens 60] [-- SGLANG FLAGS...]

On the 2-core EPYC VM here (7 Dec 2026) the step was ~100 ms after some starts and ~150 ms after
others, and once moved from one to the other within a start; a 2-thread GEMV loop outside any
server moved the same way in 1 run of 16. A single server start per mode therefore measures the
start as much as the mode: compare modes over several starts, alternating (bench/plain_fallback.py
--protocol equal --alternations N).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import requests

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))

import pairs  # noqa: E402
from compare import WARMUP_PROMPT  # noqa: E402
import prompt_sets  # noqa: E402
from sglang_ssd.testing.server import CPUServer  # noqa: E402


def stream_gaps(url: str, prompt: list[int], n: int) -> tuple[float, float]:
    """(median gap between streamed tokens, mean ms per token from the first to the last)."""
    body = {"input_ids": prompt, "stream": True,
            "sampling_params": {"temperature": 0, "max_new_tokens": n, "ignore_eos": True}}
    stamps, seen = [], 0
    with requests.post(url + "/generate", json=body, stream=True, timeout=1800) as r:
        for line in r.iter_lines():
            if not line.startswith(b"data:") or b"[DONE]" in line:
                continue
            k = json.loads(line[5:])["meta_info"]["completion_tokens"]
            stamps += [time.perf_counter()] * (k - seen)
            seen = k
    gaps = [(b - a) * 1e3 for a, b in zip(stamps, stamps[1:]) if b > a]
    return statistics.median(gaps), (stamps[-1] - stamps[0]) * 1e3 / max(1, len(stamps) - 1)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--starts", type=int, default=3)
    ap.add_argument("--requests", type=int, default=3)
    ap.add_argument("--max-new-tokens", type=int, default=60)
    ap.add_argument("flags", nargs="*", help="extra SGLang flags (after --)")
    args = ap.parse_args()
    pair = pairs.PAIRS["qwen-coder"]
    target, _, _ = pair.prepare()
    from transformers import AutoTokenizer

    prompt = prompt_sets.encode(AutoTokenizer.from_pretrained(str(target)), WARMUP_PROMPT)
    logdir = BENCH / "results" / "logs"
    logdir.mkdir(parents=True, exist_ok=True)
    for s in range(args.starts):
        with CPUServer(target, pair.server_args() + args.flags, cpus={0, 1}, startup_timeout=900,
                       log_path=str(logdir / "step_noise.log")) as srv:
            srv.generate(prompt, {"temperature": 0, "max_new_tokens": 8, "ignore_eos": True})
            rows = [stream_gaps(srv.url, prompt, args.max_new_tokens) for _ in range(args.requests)]
            print(f"start {s}: " + ", ".join(f"median {m:.1f} ms (mean {a:.1f})" for m, a in rows), flush=True)


if __name__ == "__main__":
    main()
