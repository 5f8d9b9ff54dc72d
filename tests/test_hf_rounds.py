"""The Hugging Face-target harness the GPU check runs on the device machine (no SGLang there),
checked here on the CPU: greedy SSD rounds equal the target's greedy tokens with drafts really
accepted, a grammar request equals the target's greedy output under the grammar and matches it,
and a wrong verification is caught."""

from __future__ import annotations

import re

import pytest
import torch

from sglang_ssd.testing.workloads import REGEX


@pytest.fixture(scope="module")
def pair(models):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(models["target"]))
    target = AutoModelForCausalLM.from_pretrained(str(models["target"]), dtype=torch.float32).eval()
    return tok, target


def _spec(models):
    from sglang_ssd.draft_model import DraftModel
    from sglang_ssd.speculator import Speculator

    return Speculator(DraftModel(str(models["draft_perturbed"]), "cpu", "float32", 4096), 4, [2, 2, 1, 1, 3],
                      "neural", 8)


def test_greedy_rounds_equal_the_target(models, pair):
    from sglang_ssd.testing.hf_rounds import greedy_reference, ssd_greedy

    tok, target = pair
    prompts = [tok(t)["input_ids"] for t in ("The quick brown fox", "def add(a, b):")]
    got, st = ssd_greedy(_spec(models), target, prompts, 20)
    assert got == [greedy_reference(target, p, 20) for p in prompts]
    assert st["emitted"] > 1.5 * st["rounds"] and st["hits"] > 0


def test_grammar_rounds_equal_the_target_under_the_grammar(models, pair, monkeypatch):
    from sglang_ssd.grammar import DraftGrammars
    from sglang_ssd.testing.hf_rounds import greedy_reference, ssd_greedy

    monkeypatch.setenv("SGLANG_SSD_DRAFT_GRAMMAR", "1")
    tok, target = pair
    v = int(target.config.vocab_size)
    grammars = DraftGrammars(str(models["target"]), v)
    prompts = [tok(t)["input_ids"] for t in ("Question: what is 12 plus 30?", "The weather today")]
    spec = _spec(models)
    got, _ = ssd_greedy(spec, target, prompts, 24, grammar=("regex", REGEX), grammars=grammars)
    want = [greedy_reference(target, p, 24, grammars.matcher("regex", REGEX), v) for p in prompts]
    assert got == want
    for g in got:  # ends with the stop token the grammar requires, and matches the regex before it
        assert g[-1] == tok.eos_token_id and re.fullmatch(REGEX, tok.decode(g[:-1]))
    assert spec.model.pool.num_used == spec.prefix.tokens  # every request released


def test_a_wrong_verification_is_caught(models, pair, monkeypatch):
    """Accept every draft token whatever the target says: the outputs then differ from the
    target's (the harness would see a broken verify on the device)."""
    from sglang_ssd.testing import hf_rounds

    tok, target = pair

    def accept_all_drafts(drafts, logits, plain, plain_tokens):
        from sglang_ssd.verify import emitted_tokens

        n = drafts.shape[1] - 1
        return emitted_tokens(drafts, torch.full((1,), n), logits.view(1, n + 1, -1)[:, -1].argmax(-1))

    monkeypatch.setattr(hf_rounds, "accept_chain", accept_all_drafts)
    prompts = [tok("The quick brown fox")["input_ids"]]
    got, _ = hf_rounds.ssd_greedy(_spec(models), target, prompts, 20)
    assert got != [hf_rounds.greedy_reference(target, prompts[0], 20)]
