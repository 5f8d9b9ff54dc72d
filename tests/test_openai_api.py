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
