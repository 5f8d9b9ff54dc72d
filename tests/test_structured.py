"""Structured generation and frontend programs through a real CPU SSD server (draft = target copy).

Grammar requests (json_schema, regex, ebnf, OpenAI response_format) are speculated with the
grammar mask applied at every verify position: greedy outputs equal the non-speculative server's
token for token, sampled outputs always satisfy the grammar, and the SSD statistics show that
grammar requests really were speculated (not served one token per round by the plain path).
The tiny test models have random weights, so the grammars constrain strongly and finish fast.
"""

from __future__ import annotations

import json
import re
from concurrent.futures import ThreadPoolExecutor

import pytest

from sglang_ssd.testing.workloads import EBNF, REGEX, SCHEMA
from test_e2e_greedy import ssd

EBNF_RE = r"color: (red|green|blue); size: [0-9][0-9]?;"
TEXTS = ["The quick brown fox", "Question: what is 12 plus 30?", "Once upon a time",
         "def add(a, b):", "The weather today is", "Numbers: 0 1 2 3"]
GRAMMARS = {
    "regex": {"regex": REGEX},
    "json": {"json_schema": json.dumps(SCHEMA)},
    "ebnf": {"ebnf": EBNF},
}
# The JSON grammar allows any whitespace between tokens (SGLang's default), which a random model
# likes: JSON outputs need a few hundred tokens to finish.
MAX_TOKENS = {"regex": 32, "json": 256, "ebnf": 48}


@pytest.fixture(scope="module")
def tok(models):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(models["target"]))


@pytest.fixture(scope="module")
def prompts(tok):
    return [tok(t)["input_ids"] for t in TEXTS]


@pytest.fixture(scope="module")
def srv(servers):
    return ssd(servers, "draft_same")


@pytest.fixture(scope="module")
def plain(servers):
    return servers.get("plain")


def _many(server, prompts, sp, concurrency=8, **extra):
    with ThreadPoolExecutor(concurrency) as ex:
        return list(ex.map(lambda p: server.generate(p, sp, **extra), prompts))


def _check_text(kind: str, text: str) -> None:
    if kind == "regex":
        assert re.fullmatch(REGEX, text), text
    elif kind == "ebnf":
        assert re.fullmatch(EBNF_RE, text), text
    else:
        obj = json.loads(text)
        assert set(obj) == {"answer", "n"} and obj["answer"] in ("yes", "no", "maybe"), text
        assert isinstance(obj["n"], int) and 0 <= obj["n"] <= 99, text


def _ssd_delta(before: dict, after: dict, key: str) -> int:
    return after.get(key, 0) - before.get(key, 0)


@pytest.mark.parametrize("kind", list(GRAMMARS))
def test_grammar_greedy_matches_plain_and_is_speculated(srv, plain, prompts, kind):
    sp = {"temperature": 0, "max_new_tokens": MAX_TOKENS[kind], **GRAMMARS[kind]}
    before = srv.ssd_stats()
    got = _many(srv, prompts, sp)
    after = srv.ssd_stats()
    want = _many(plain, prompts, sp)
    for i, (g, w) in enumerate(zip(got, want)):
        assert g["output_ids"] == w["output_ids"], f"{kind} prompt {i}"
        assert g["meta_info"]["finish_reason"]["type"] == "stop", (kind, i, g["text"])
        _check_text(kind, g["text"])
    # Speculated, not the plain path: drafts were accepted in grammar rounds, and the SSD
    # statistics count those rounds as speculated grammar rounds.
    assert sum(k for g in got for k in g["meta_info"]["ssd_accepted"]) > 0
    assert _ssd_delta(before, after, "grammar_spec_rounds") >= len(prompts)
    assert _ssd_delta(before, after, "grammar_accepted") > 0
    assert _ssd_delta(before, after, "plain_rounds") == 0
    tokens = sum(len(g["output_ids"]) for g in got)
    rounds = sum(len(g["meta_info"]["ssd_accepted"]) for g in got)
    assert tokens > 1.5 * rounds  # more than one token per target forward


@pytest.mark.parametrize("kind", ["regex", "json"])
def test_grammar_sampled_outputs_satisfy_grammar(srv, tok, prompts, kind):
    """At least 50 sampled outputs (temperature 1.0), each parsed / matched against the grammar."""
    import xgrammar as xgr

    sp = {"temperature": 1.0, "max_new_tokens": MAX_TOKENS[kind], **GRAMMARS[kind]}
    ps = [prompts[i % len(prompts)] for i in range(50)]
    before = srv.ssd_stats()
    outs = _many(srv, ps, sp)
    after = srv.ssd_stats()
    info = xgr.TokenizerInfo.from_huggingface(tok, vocab_size=len(tok), stop_token_ids=[tok.eos_token_id])
    comp = xgr.GrammarCompiler(info)
    ctx = comp.compile_regex(REGEX) if kind == "regex" else comp.compile_json_schema(
        json.dumps(SCHEMA), any_whitespace=True)
    finished = 0
    for o in outs:
        m = xgr.GrammarMatcher(ctx)
        for t in o["output_ids"]:  # token by token: every emitted token is grammar-legal
            assert m.accept_token(t), (kind, o["output_ids"], o["text"])
        if o["meta_info"]["finish_reason"]["type"] == "stop":
            finished += 1
            _check_text(kind, o["text"])
    assert finished >= 45, finished
    assert _ssd_delta(before, after, "grammar_accepted") > 0
    assert sum(k for o in outs for k in o["meta_info"]["ssd_accepted"]) > 0


def test_openai_response_format(srv, plain):
    import openai

    kw = dict(model="m", max_tokens=MAX_TOKENS["json"], temperature=0,
              response_format={"type": "json_schema",
                               "json_schema": {"name": "answer", "schema": SCHEMA}})
    before = srv.ssd_stats()
    for text in TEXTS[:3]:
        msgs = [{"role": "user", "content": text}]
        a, b = (openai.OpenAI(base_url=s.url + "/v1", api_key="none").chat.completions.create(
            messages=msgs, **kw).choices[0].message.content for s in (srv, plain))
        assert a == b
        _check_text("json", a)
    after = srv.ssd_stats()
    assert _ssd_delta(before, after, "grammar_accepted") > 0


def test_grammar_with_penalty_takes_the_plain_path_exactly(srv, plain, prompts):
    """Penalties still use the plain path (one token per round), with the reason in the stats."""
    sp = {"temperature": 0, "max_new_tokens": MAX_TOKENS["regex"], "regex": REGEX, "frequency_penalty": 0.5}
    before = srv.ssd_stats()
    got = srv.generate(prompts[0], sp)
    after = srv.ssd_stats()
    assert got["output_ids"] == plain.generate(prompts[0], sp)["output_ids"]
    _check_text("regex", got["text"])
    assert all(k == 0 for k in got["meta_info"]["ssd_accepted"])
    assert (after.get("plain_reasons", {}).get("frequency_penalty", 0)
            - before.get("plain_reasons", {}).get("frequency_penalty", 0)) == len(got["meta_info"]["ssd_accepted"])


def test_prompt_logprobs_served_exactly(srv, plain, prompts):
    """return_logprob with logprob_start_len (prompt logprobs) and top logprobs: same tokens and
    logprobs as the non-speculative server, never an error."""
    for p in prompts[:3]:
        sp = {"temperature": 0, "max_new_tokens": 12, "ignore_eos": True}
        extra = dict(return_logprob=True, logprob_start_len=0, top_logprobs_num=2)
        a, b = srv.generate(p, sp, **extra), plain.generate(p, sp, **extra)
        assert a["output_ids"] == b["output_ids"]
        ma, mb = a["meta_info"], b["meta_info"]
        assert len(ma["input_token_logprobs"]) == len(p)
        for key in ("input_token_logprobs", "output_token_logprobs"):
            assert [x[1] for x in ma[key]] == [x[1] for x in mb[key]]
            assert [x[0] for x in ma[key]] == pytest.approx([x[0] for x in mb[key]], abs=1e-4)
        assert [[t[1] for t in row] for row in ma["output_top_logprobs"]] == \
            [[t[1] for t in row] for row in mb["output_top_logprobs"]]
        assert sum(ma["ssd_accepted"]) > 0  # and still speculated: nothing forces the plain path


def test_frontend_program_matches_plain(srv, plain):
    """An SGLang frontend program (multi-turn gen, regex gen, select, fork/join) via
    RuntimeEndpoint gives the same results on the SSD server as on the plain one (greedy)."""
    import sglang as sgl

    @sgl.function
    def program(s, topic):
        s += "Topic: " + topic + "\n"
        s += "First:" + sgl.gen("first", max_tokens=12, temperature=0)
        s += "\nSecond:" + sgl.gen("second", max_tokens=10, temperature=0, stop="\n")
        s += "\nCode: " + sgl.gen("code", max_tokens=16, temperature=0, regex=REGEX)
        s += "\nPick: " + sgl.select("pick", choices=["red", "green", "blue"], temperature=0)
        forks = s.fork(2)
        for i, f in enumerate(forks):
            f += f"\nBranch {i}:" + sgl.gen("branch", max_tokens=8, temperature=0)
        forks.join()
        s += "\nBranches: " + forks[0]["branch"] + " | " + forks[1]["branch"]
        s += "\nEnd:" + sgl.gen("end", max_tokens=8, temperature=0)

    def run(server):
        backend = sgl.RuntimeEndpoint(server.url)
        states = program.run_batch([{"topic": "the weather"}, {"topic": "numbers"}], backend=backend)
        out = []
        for st in states:
            assert st.error() is None if hasattr(st, "error") else True
            out.append({k: st[k] for k in ("first", "second", "code", "pick", "end")} | {"text": st.text()})
        return out

    a, b = run(srv), run(plain)
    assert a == b
    for o in a:
        assert re.fullmatch(REGEX, o["code"]), o["code"]
        assert o["pick"] in ("red", "green", "blue")


def test_invalid_grammar_is_refused_like_plain(srv, plain, prompts):
    sp = {"temperature": 0, "max_new_tokens": 8, "regex": "(unclosed"}
    import requests

    codes = [requests.post(s.url + "/generate", json={"input_ids": prompts[0], "sampling_params": sp},
                           timeout=120).status_code for s in (srv, plain)]
    assert codes[0] == codes[1] and codes[0] >= 400
    ok = srv.generate(prompts[0], {"temperature": 0, "max_new_tokens": 8, "regex": REGEX})
    _check_text("regex", ok["text"])


# ---- units: no server ---------------------------------------------------------------------
class _XgrObject:
    """The slice of SGLang's grammar-object API the worker uses, over a bare xgrammar matcher."""

    def __init__(self, matcher):
        self.m, self.accepted, self.finished = matcher, [], False

    def accept_token(self, t):
        assert self.m.accept_token(t)
        self.accepted.append(t)

    def rollback(self, k):
        self.m.rollback(k)
        self.accepted = self.accepted[:-k]

    def is_terminated(self):
        return self.m.is_terminated()

    def allocate_vocab_mask(self, vocab_size, batch_size, device):
        import xgrammar as xgr

        return xgr.allocate_token_bitmask(batch_size, vocab_size)

    def fill_vocab_mask(self, mask, idx):
        self.m.fill_next_token_bitmask(mask, idx)


def _compiled(tok, kind="regex"):
    import xgrammar as xgr

    info = xgr.TokenizerInfo.from_huggingface(tok, vocab_size=len(tok), stop_token_ids=[tok.eos_token_id])
    comp = xgr.GrammarCompiler(info)
    return comp.compile_regex(REGEX) if kind == "regex" else comp.compile_json_schema(json.dumps(SCHEMA))


def test_chain_grammar_mask_positions_and_restores_state(tok):
    """Row j is the grammar state after x_1..x_j; the request's grammar is left as it came."""
    import types

    import torch
    import xgrammar as xgr

    from sglang_ssd.grammar import bitmask_to_bool, chain_grammar_mask

    ctx = _compiled(tok)
    ids = tok("yes12")["input_ids"]
    g = _XgrObject(xgr.GrammarMatcher(ctx))
    g.accept_token(ids[0])
    chain = [ids[0]] + ids[1:] + [tok.eos_token_id] * (5 - len(ids))
    req = types.SimpleNamespace(grammar=g)
    _, mask = chain_grammar_mask([req], torch.tensor([chain[:5]]), [0], len(tok))
    assert g.accepted == [ids[0]] and not g.is_terminated()
    allowed = bitmask_to_bool(mask, len(tok))
    ref = xgr.GrammarMatcher(ctx)
    ref.accept_token(ids[0])
    for j in range(1, len(ids)):  # row j-1 allows x_j, and equals a fresh matcher's mask
        bm = xgr.allocate_token_bitmask(1, len(tok))
        ref.fill_next_token_bitmask(bm, 0)
        assert torch.equal(allowed[j - 1], bitmask_to_bool(bm, len(tok))[0])
        assert allowed[j - 1, ids[j]]
        ref.accept_token(ids[j])


def _speculator(models, fanout=(2, 2, 1, 1, 3)):
    from sglang_ssd.draft_model import DraftModel
    from sglang_ssd.speculator import Speculator

    model = DraftModel(str(models["target"]), "cpu", "float32", 4096)
    return Speculator(model, 4, list(fanout), "neural", 8)


def _legal_prefix(ctx, tokens) -> bool:
    """Every token up to (and including) the grammar's termination is legal."""
    import xgrammar as xgr

    m = xgr.GrammarMatcher(ctx)
    for t in tokens:
        if m.is_terminated():
            return True
        if not m.accept_token(t):
            return False
    return True


def test_draft_never_proposes_forbidden_tokens(models, tok, monkeypatch):
    from sglang_ssd.wire import Begin, Outcome

    monkeypatch.setenv("SGLANG_SSD_DRAFT_GRAMMAR", "1")
    for kind, spec in (("regex", REGEX), ("json", json.dumps(SCHEMA))):
        ctx = _compiled(tok, kind)
        spx = _speculator(models)
        prompts = [tok(t)["input_ids"] for t in TEXTS[:3]]
        first = {"regex": "no", "json": "{"}[kind]
        t0 = tok(first)["input_ids"][0]
        spx.begin([Begin(rid=str(i), prompt=p, pending=t0, grammar_kind=kind, grammar=spec,
                         grammar_start=len(p)) for i, p in enumerate(prompts)])
        for rnd in range(3):
            for s in spx.seqs.values():
                assert s.matcher is not None
                assert _legal_prefix(ctx, s.tokens[len(prompts[int(s.rid)]):] + [s.pending] + s.spec), kind
            spx.speculate()
            outcomes, forks = [], 0
            for s in list(spx.seqs.values()):
                done = s.tokens[len(prompts[int(s.rid)]):] + [s.pending]
                for (j, c), (toks, _) in s.cache.items():  # every fork and its drafts are legal
                    assert _legal_prefix(ctx, done + s.spec[:j] + [c] + toks), (kind, j, c)
                    forks += 1
                if not s.cache:  # its grammar is complete: nothing left to fork
                    spx.release([s.rid])
                    continue
                (j, c), _ = next(iter(s.cache.items()))
                outcomes.append(Outcome(rid=s.rid, k=j, t_star=c, committed_len=len(s.tokens) + j + 1))
            if rnd == 0:
                assert forks > 0
            if not outcomes:
                break
            specs, refusals, _ = spx.lookup(outcomes)
            assert not refusals and all(sp.hit for sp in specs)


def test_draft_grammar_off_or_uncompilable_drafts_unmasked(models, tok, monkeypatch):
    from sglang_ssd.wire import Begin

    p = tok(TEXTS[0])["input_ids"]
    monkeypatch.setenv("SGLANG_SSD_DRAFT_GRAMMAR", "1")
    spx = _speculator(models)
    assert not spx.begin([Begin(rid="bad", prompt=p, pending=5, grammar_kind="regex", grammar="(unclosed",
                                grammar_start=len(p))])
    assert spx.seqs["bad"].matcher is None and len(spx.seqs["bad"].spec) == 4
    monkeypatch.setenv("SGLANG_SSD_DRAFT_GRAMMAR", "0")
    spx = _speculator(models)
    spx.begin([Begin(rid="off", prompt=p, pending=5, grammar_kind="regex", grammar=REGEX, grammar_start=len(p))])
    assert spx.seqs["off"].matcher is None and len(spx.seqs["off"].spec) == 4
