"""Which of a request's tokens the draft sees (--ssd-draft-window, request_view.DraftView).

A prompt longer than SINK + window tokens reaches the draft as its first SINK tokens and its last
`window`, then everything generated; the draft's lengths, a seeded request's noise positions and a
grammar's start are moved by the hidden count so that the draft's view stays consistent with the
target's. Through a server: a 300-token prompt with a 64-token window speculates in a 256-token
draft pool (whole, it cannot fit: tests/test_pool_full.py) and its output is exact."""

from __future__ import annotations

import random
from types import SimpleNamespace

import pytest
import torch

from conftest import PIN_SSD, SERVER_ARGS, hf_greedy
from sglang_ssd import wire
from sglang_ssd.request_view import SINK, DraftView, begin_of


def _req(prompt, output=(), temperature=0.0, seed=None, rid="r"):
    sp = SimpleNamespace(temperature=temperature, top_k=-1, top_p=1.0, min_p=0.0, sampling_seed=seed,
                         frequency_penalty=0.0, presence_penalty=0.0, repetition_penalty=1.0, min_new_tokens=0,
                         logit_bias=None, json_schema=None, regex=None, ebnf=None, structural_tag=None)
    return SimpleNamespace(rid=rid, origin_input_ids=list(prompt), output_ids=list(output), sampling_params=sp,
                           grammar=None)


def test_prompts_up_to_the_window_are_seen_whole():
    p = list(range(100, 100 + SINK + 16))
    req = _req(p, [7, 8])
    for view in (DraftView(16), DraftView(0), DraftView(10_000)):
        b = view.begin(req, p + [7], 8)
        assert view.hidden(req) == 0 and b.prompt == p + [7] and view.committed(req, len(p) + 2) == len(p) + 2
    assert DraftView(15).hidden(req) == 1  # one token longer than SINK + window: one hidden
    assert begin_of(req, p, 7) == DraftView(0).begin(req, p, 7)


def test_a_long_prompt_keeps_its_sinks_and_last_window_then_everything_generated():
    p = list(range(1000, 1100))
    out = [5, 6, 7]
    req = _req(p, out)
    view = DraftView(16)
    assert view.hidden(req) == 100 - SINK - 16
    b = view.begin(req, p + out[:-1], out[-1])
    assert b.prompt == p[:SINK] + p[-16:] + out[:-1] and b.pending == out[-1]
    w = view.warm(req, True)
    assert w.prompt == p[:SINK] + p[-16:] + out
    # the target's sequence length -> the draft's: what the Outcome says must match the draft's own
    assert view.committed(req, len(p) + len(out)) == len(b.prompt) + 1
    assert b.sampling is None  # greedy


def test_seeded_noise_and_a_grammar_start_are_at_the_targets_positions():
    p = list(range(2000, 2100))
    req = _req(p, [9], temperature=0.7, seed=1234)
    view = DraftView(32)
    h = view.hidden(req)
    b = view.begin(req, p, 9)
    assert b.sampling.seed == 1234 and b.sampling.offset == h == 100 - SINK - 32
    assert DraftView(0).begin(req, p, 9).sampling.offset == 0
    req.grammar = object()
    req.sampling_params.regex = "[a-z]+"
    g = view.begin(req, p, 9)
    assert g.grammar_kind == "regex" and g.grammar_start == len(g.prompt) == SINK + 32
    # the offset travels on the wire
    assert wire.decode_to_draft(wire.encode(wire.Step(round=1, begins=[b]))).begins[0].sampling.offset == h


def test_the_drafts_seeded_choice_uses_the_targets_position():
    from sglang_ssd.proposals import propose, seeded_scores
    from sglang_ssd.sampling import gumbel_choice, gumbel_scores, param_tensors, processed_probs

    torch.manual_seed(0)
    logits = torch.randn(1, 50)
    s0 = wire.Sampling(temperature=0.9, seed=77)
    s1 = wire.Sampling(temperature=0.9, seed=77, offset=40)
    q = processed_probs(logits, **param_tensors([s0], logits.device))
    # over many positions the choice depends on the position; the offset must move it exactly
    for pos in range(20):
        c1 = SimpleNamespace(sampling=s1, first_pos=pos, qs=[])
        want = int(gumbel_choice(q, 77, [pos + 1 + 40])[0])
        assert propose([c1], logits, 0, 1, 1.0, 1.0) == [want]
    assert torch.equal(seeded_scores(s1, logits.repeat(3, 1), 5),
                       gumbel_scores(q.repeat(3, 1), 77, range(45, 48)).float())


# ---- through a real server ----------------------------------------------------------------------
@pytest.fixture(scope="module")
def window_server(models, log_dir):
    from sglang_ssd.testing.server import CPUServer

    args = SERVER_ARGS + PIN_SSD + ["--speculative-algorithm", "SSD", "--speculative-draft-model-path",
                                    str(models["draft_same"]), "--speculative-num-steps", "4",
                                    "--ssd-draft-kv-tokens", "256", "--ssd-draft-window", "64"]
    srv = CPUServer(models["target"], args, log_path=str(log_dir / "draft_window.log"))
    yield srv
    srv.stop()


def test_a_prompt_longer_than_the_draft_pool_speculates_through_a_window(window_server, hf_target):
    rng = random.Random(5)
    prompt, n = [rng.randrange(3, 400) for _ in range(300)], 48
    out = window_server.generate(prompt, {"temperature": 0, "max_new_tokens": n, "ignore_eos": True})
    assert out["output_ids"] == hf_greedy(hf_target, prompt, n)
    st = window_server.ssd_stats()
    # speculated, never refused (whole, this prompt is refused for a full pool at every Begin), and
    # the draft's lengths agreed with the target's every round (a mismatch is a refusal too)
    assert st["refusal_reasons"] == {} and st["plain_reasons"] == {}, (st["refusal_reasons"], st["plain_reasons"])
    assert st["spec_rounds"] >= len(out["meta_info"]["ssd_accepted"]) >= n // 5
    # (this fixture's random-weight model attends almost uniformly over its context, so a draft
    # that sees 68 of 300 tokens rarely agrees with it; a prompt within the window is seen whole:
    # the draft is the target itself and every K = 4 tokens are accepted)
    short = [rng.randrange(3, 400) for _ in range(60)]
    out = window_server.generate(short, {"temperature": 0, "max_new_tokens": 20, "ignore_eos": True})
    assert out["output_ids"] == hf_greedy(hf_target, short, 20)
    assert out["meta_info"]["ssd_accepted"].count(4) >= 2, out["meta_info"]["ssd_accepted"]
