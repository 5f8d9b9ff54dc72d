"""The OpenAI-compatible API through an SSD server gives what the same server without SSD gives."""

from __future__ import annotations

import pytest

from test_e2e_greedy import ssd


@pytest.fixture(scope="module")
def clients(servers):
    import openai

    return {name: openai.OpenAI(base_url=srv.url + "/v1", api_key="none")
            for name, srv in (("ssd", ssd(servers, "draft_same")), ("plain", servers.get("plain")))}


def _both(clients, fn):
    return fn(clients["ssd"]), fn(clients["plain"])


def test_completions_streaming_stop_and_logprobs(clients):
    kw = dict(model="m", prompt="The quick brown fox", max_tokens=24, temperature=0)
    a, b = _both(clients, lambda c: c.completions.create(**kw).choices[0].text)
    assert a == b and len(a) > 0
    s, _ = _both(clients, lambda c: "".join(ch.choices[0].text for ch in c.completions.create(stream=True, **kw)))
    assert s == a  # streamed chunks concatenate to the non-streamed text
    stop = a[len(a) // 2: len(a) // 2 + 2]
    x, y = _both(clients, lambda c: c.completions.create(stop=[stop], **kw).choices[0].text)
    assert x == y and stop not in x
    lx, ly = _both(clients, lambda c: c.completions.create(logprobs=3, **kw).choices[0].logprobs.token_logprobs)
    assert lx == pytest.approx(ly, abs=1e-4)


def test_chat_completions_and_n(clients):
    kw = dict(model="m", messages=[{"role": "user", "content": "Once upon a time"}], max_tokens=20, temperature=0)
    a, b = _both(clients, lambda c: c.chat.completions.create(**kw).choices[0].message.content)
    assert a == b
    n = clients["ssd"].completions.create(model="m", prompt="Numbers: 0 1 2", max_tokens=12, temperature=0.8, n=3)
    assert len(n.choices) == 3 and all(ch.text is not None for ch in n.choices)


def test_chat_streaming_and_top_logprobs(clients):
    kw = dict(model="m", messages=[{"role": "user", "content": "The weather today is"}], max_tokens=18, temperature=0)
    whole, _ = _both(clients, lambda c: c.chat.completions.create(**kw).choices[0].message.content)
    streamed, plain_streamed = _both(clients, lambda c: "".join(
        ch.choices[0].delta.content or "" for ch in c.chat.completions.create(stream=True, **kw) if ch.choices))
    assert streamed == whole == plain_streamed
    ckw = dict(model="m", prompt="def add(a, b):", max_tokens=10, temperature=0, logprobs=3)
    tx, ty = _both(clients, lambda c: c.completions.create(**ckw).choices[0].logprobs.top_logprobs)
    assert len(tx) == len(ty) == 10
    for a, b in zip(tx, ty):
        assert set(a) == set(b) and [a[t] for t in a] == pytest.approx([b[t] for t in a], abs=1e-4)


@pytest.mark.parametrize("max_new", [1, 3, 7, 11])  # K = 4: rounds emit up to 5, so most end mid-round
def test_stop_token_ids_ignore_eos_and_max_tokens_mid_round(servers, max_new):
    srv, plain = ssd(servers, "draft_same"), servers.get("plain")
    prompt = [100, 7, 200, 7, 100, 7]
    sp = {"temperature": 0, "max_new_tokens": max_new, "ignore_eos": True}
    want = plain.generate(prompt, sp)["output_ids"]
    got = srv.generate(prompt, sp)
    assert got["output_ids"] == want and len(want) == max_new
    assert got["meta_info"]["finish_reason"]["type"] == "length"
    full = plain.generate(prompt, dict(sp, max_new_tokens=24))["output_ids"]
    stop = full[min(max_new, 20)]
    # SGLang applies stop token ids only without ignore_eos (its own rule, kept here).
    stop_sp = {"temperature": 0, "max_new_tokens": 24, "stop_token_ids": [stop]}
    want = plain.generate(prompt, stop_sp)
    got = srv.generate(prompt, stop_sp)
    assert got["output_ids"] == want["output_ids"]  # the stop token ends the request even mid-round
    assert got["meta_info"]["finish_reason"] == want["meta_info"]["finish_reason"]
    assert len(want["output_ids"]) <= full.index(stop) + 1


def test_aborting_a_stream_frees_the_request_on_target_and_draft(servers):
    """Close a stream after a few chunks: SGLang aborts the request; once idle the target's KV in
    use and the draft's pool are back where they were."""
    import json
    import time

    import requests

    srv = ssd(servers, "draft_same")
    srv.generate([5, 6, 7], {"temperature": 0, "max_new_tokens": 4})
    time.sleep(1)
    before = srv.ssd_stats()
    body = {"input_ids": [9, 8, 7, 6], "stream": True,
            "sampling_params": {"temperature": 0, "max_new_tokens": 2000, "ignore_eos": True}}
    with requests.post(srv.url + "/generate", json=body, stream=True, timeout=60) as r:
        seen = 0
        for line in r.iter_lines():
            if line.startswith(b"data:") and line[5:].strip() != b"[DONE]":
                seen = len(json.loads(line[5:])["output_ids"])
                if seen >= 12:
                    break
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        st = srv.ssd_stats()
        if st["target_tokens_used"] == before["target_tokens_used"] and st["draft_pool_used"] == before["draft_pool_used"]:
            break
        time.sleep(0.5)
    assert seen >= 12
    assert st["target_tokens_used"] == before["target_tokens_used"] == 0
    assert st["draft_pool_used"] == before["draft_pool_used"] == 0
    assert st["emitted"] - before["emitted"] < 1000  # it stopped long before its 2000 tokens


def test_demo_chat_stream_carries_exact_token_ids(servers):
    """The demo's client (launch/chat_stream.py): a streamed chat answer with its prompt's and its own
    token ids, which equal the server without speculation's; the streamed text is the whole answer."""
    import io

    from sglang_ssd.launch.chat_stream import stream_chat

    srv, plain = ssd(servers, "draft_same"), servers.get("plain")
    out = io.StringIO()
    a = stream_chat(srv.url, "Once upon a time", 16, echo=True, out=out)
    b = stream_chat(plain.url, "Once upon a time", 16, echo=False)
    assert a.input_ids and a.input_ids == b.input_ids
    assert 0 < len(a.output_ids) <= 16 and a.output_ids == b.output_ids
    assert out.getvalue() == a.text + "\n" and a.text == b.text
    assert a.ttft is not None and a.decode_tok_s > 0
