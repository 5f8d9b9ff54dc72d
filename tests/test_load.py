"""Load: 64 concurrent streaming clients for 2 minutes against one SSD server on the CPU pair.

Zero errors, every greedy output exact (against Hugging Face), and afterwards the target's KV in
use and the draft's pool back at their idle values, the draft's RSS grown by less than 5%.
"""

from __future__ import annotations

import json
import os
import random
import threading
import time

import psutil
import pytest
import requests

from conftest import PIN_SSD, K, SERVER_ARGS, hf_greedy
from sglang_ssd.testing.server import CPUServer

CLIENTS = 64
SECONDS = float(os.environ.get("SGLANG_SSD_LOAD_SECONDS", "120"))
MAX_NEW = 24
PROMPTS = [[5, 6, 7, 8, 9], [40, 41, 42], [100, 7, 200, 7, 100, 7], [3, 1, 4, 1, 5, 9, 2, 6],
           [11, 12], [300, 301, 302, 303], [9, 9, 9, 9], [17, 250, 33, 460, 2]]


def stream_tokens(url: str, prompt: list[int], n: int) -> list[int]:
    body = {"input_ids": prompt, "stream": True,
            "sampling_params": {"max_new_tokens": n, "temperature": 0, "ignore_eos": True}}
    out: list[int] = []
    with requests.post(url + "/generate", json=body, stream=True, timeout=300) as r:
        r.raise_for_status()
        for line in r.iter_lines():
            if not line.startswith(b"data:"):
                continue
            data = line[5:].strip()
            if data == b"[DONE]":
                break
            msg = json.loads(data)
            out = list(msg["output_ids"])  # SGLang streams the cumulative ids
    return out


def wait_idle(srv, want_pool: int, want_tokens: int, timeout: float = 60) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        st = srv.ssd_stats()
        if (st["draft_pool_used"] == want_pool and st["target_tokens_used"] == want_tokens) \
                or time.monotonic() > deadline:
            return st
        time.sleep(1)


@pytest.mark.slow
def test_64_streaming_clients_for_two_minutes(models, log_dir, hf_target):
    refs = {i: hf_greedy(hf_target, p, MAX_NEW) for i, p in enumerate(PROMPTS)}
    args = SERVER_ARGS + PIN_SSD + ["--speculative-algorithm", "SSD", "--speculative-draft-model-path",
                          str(models["draft_perturbed"]), "--speculative-num-steps", str(K),
                          "--max-running-requests", "32"]
    srv = CPUServer(models["target"], args, log_path=str(log_dir / "load.log"))
    try:
        for i, p in enumerate(PROMPTS):  # warm up: every prompt once, at full length
            assert stream_tokens(srv.url, p, MAX_NEW) == refs[i]
        time.sleep(2)
        st0 = srv.ssd_stats()
        idle_pool, idle_tokens = st0["draft_pool_used"], st0["target_tokens_used"]
        assert idle_pool == 0  # idle: the draft holds no request (finished ones are released)
        draft = psutil.Process(st0["draft_pid"])
        rss0 = draft.memory_info().rss

        errors, wrong, done = [], [], [0]
        lock = threading.Lock()
        stop_at = time.monotonic() + SECONDS

        def client(seed: int) -> None:
            rng = random.Random(seed)
            while time.monotonic() < stop_at:
                i, n = rng.randrange(len(PROMPTS)), rng.randrange(1, MAX_NEW + 1)
                try:
                    out = stream_tokens(srv.url, PROMPTS[i], n)
                except Exception as e:  # counted, reported below
                    with lock:
                        errors.append(repr(e))
                    continue
                with lock:
                    done[0] += 1
                    if out != refs[i][:n]:
                        wrong.append((i, n, out))

        threads = [threading.Thread(target=client, args=(s,)) for s in range(CLIENTS)]
        t0 = time.monotonic()
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        took = time.monotonic() - t0
        st = wait_idle(srv, idle_pool, idle_tokens)
        rss1 = draft.memory_info().rss
        print(f"\nload: {CLIENTS} clients x {took:.0f}s: {done[0]} requests, {len(errors)} errors, "
              f"{len(wrong)} wrong; accept length {st['accept_length']:.2f}, hit rate "
              f"{st['cache_hit_rate']:.3f}, backups neural/fast {st['backup_neural']}/{st['backup_fast']} "
              f"(b* {st['backup_threshold']}); target tokens used {idle_tokens} -> "
              f"{st['target_tokens_used']}, draft pool {idle_pool} -> {st['draft_pool_used']}, "
              f"draft RSS {rss0 / 2**20:.1f} -> {rss1 / 2**20:.1f} MiB")
        assert errors == [] and wrong == []
        assert done[0] >= CLIENTS
        assert st["draft_pool_used"] == idle_pool and st["target_tokens_used"] == idle_tokens
        assert rss1 < 1.05 * rss0
        assert st["draft_failures"] == 0 and st["spec_rounds"] > done[0]
    finally:
        srv.stop()
