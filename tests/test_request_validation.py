"""Bad requests get a 4xx naming the field and never take a server (or its draft) down."""

from __future__ import annotations

import time

import pytest
import requests

from conftest import hf_greedy
from test_e2e_greedy import ssd

BIG = 10**9
BAD = [
    # (name, request body, text the error must contain)
    ("negative id", {"input_ids": [5, -1, 7]}, "input_ids[1] = -1"),
    ("huge id", {"input_ids": [5, BIG]}, f"input_ids[1] = {BIG}"),
    ("id past the tokenizer", {"input_ids": [5, "VOCAB"]}, "outside the vocabulary"),
    ("string id", {"input_ids": [5, "x"]}, ""),
    ("n = 0", {"input_ids": [5, 6], "sampling_params": {"n": 0}}, "n = 0"),
    ("n negative", {"input_ids": [5, 6], "sampling_params": {"n": -3}}, "n = -3"),
    ("negative max_new_tokens", {"input_ids": [5], "sampling_params": {"max_new_tokens": -1}}, "max_new_tokens"),
    ("negative temperature", {"input_ids": [5], "sampling_params": {"temperature": -1}}, "temperature"),
    ("top_p 0", {"input_ids": [5], "sampling_params": {"top_p": 0}}, "top_p"),
    ("top_p 1.5", {"input_ids": [5], "sampling_params": {"top_p": 1.5}}, "top_p"),
    ("string temperature", {"input_ids": [5], "sampling_params": {"temperature": "hot"}}, ""),
    ("empty prompt", {"text": ""}, "empty"),
    ("empty ids", {"input_ids": []}, "input_ids"),
    ("prompt beyond context", {"input_ids": [5] * 5000}, "context length"),
    ("batch with one bad id", {"input_ids": [[5, 6], [7, -2]]}, "-2"),
    ("bad stop_token_ids", {"input_ids": [5], "sampling_params": {"stop_token_ids": ["a"]}}, ""),
    ("invalid regex", {"input_ids": [5], "sampling_params": {"regex": "(["}}, "regex"),
]


def _servers(servers):
    return {"plain": servers.get("plain"), "ssd": ssd(servers, "draft_same")}


@pytest.mark.parametrize("kind", ["plain", "ssd"])
def test_malformed_requests_are_refused_and_nothing_dies(servers, models, hf_target, kind):
    from transformers import AutoTokenizer

    srv = _servers(servers)[kind]
    vocab = len(AutoTokenizer.from_pretrained(str(models["target"])))
    pids = (srv.proc.pid, srv.ssd_stats().get("draft_pid") if kind == "ssd" else None)
    for name, body, needle in BAD:
        body = {k: ([vocab if t == "VOCAB" else t for t in v] if k == "input_ids" and isinstance(v, list)
                    and v and not isinstance(v[0], list) else v) for k, v in body.items()}
        r = requests.post(srv.url + "/generate", json=body, timeout=60)
        assert 400 <= r.status_code < 500, (name, r.status_code, r.text[:300])
        assert needle in r.text, (name, r.text[:300])
        assert requests.get(srv.url + "/health", timeout=30).status_code == 200, name
    # The completions API with token prompts goes through the same checks.
    r = requests.post(srv.url + "/v1/completions", json={"model": "m", "prompt": [5, -7], "max_tokens": 4}, timeout=60)
    assert 400 <= r.status_code < 500 and "-7" in r.text
    assert srv.proc.poll() is None
    if kind == "ssd":
        assert srv.ssd_stats()["draft_pid"] == pids[1]
    prompt = [5, 6, 7, 8]
    out = srv.generate(prompt, {"temperature": 0, "max_new_tokens": 16, "ignore_eos": True})
    assert out["output_ids"] == hf_greedy(hf_target, prompt, 16)


@pytest.mark.slow
def test_random_bodies_never_5xx(servers):
    """Property test: 2 minutes of random JSON bodies and token lists against the SSD server."""
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st

    srv = ssd(servers, "draft_same")
    ids = st.lists(st.one_of(st.integers(-5, 600), st.integers(-2**40, 2**40)), max_size=12)
    params = st.dictionaries(st.sampled_from(["temperature", "top_p", "top_k", "n", "max_new_tokens", "min_p",
                                              "stop_token_ids", "ignore_eos", "frequency_penalty"]),
                             st.one_of(st.integers(-3, 40), st.floats(-2, 3, allow_nan=False), st.booleans(),
                                       st.text(max_size=3), st.lists(st.integers(-3, 600), max_size=3)),
                             max_size=4)
    body = st.fixed_dictionaries({"input_ids": st.one_of(ids, st.lists(ids, min_size=1, max_size=3))},
                                 optional={"sampling_params": params})
    deadline = time.monotonic() + 120
    seen = {"n": 0}

    @settings(max_examples=200, deadline=None, database=None,
              suppress_health_check=list(HealthCheck))
    @given(body)
    def check(b):
        seen["n"] += 1
        if isinstance(b.get("sampling_params"), dict):
            b["sampling_params"].setdefault("max_new_tokens", 4)
            if isinstance(b["sampling_params"]["max_new_tokens"], int) and b["sampling_params"]["max_new_tokens"] > 8:
                b["sampling_params"]["max_new_tokens"] = 8
        else:
            b["sampling_params"] = {"max_new_tokens": 4}
        r = requests.post(srv.url + "/generate", json=b, timeout=120)
        assert r.status_code < 500, (b, r.status_code, r.text[:300])

    while time.monotonic() < deadline:  # at least 2 minutes of bodies
        check()
    assert seen["n"] > 50
    assert requests.get(srv.url + "/health", timeout=30).status_code == 200
