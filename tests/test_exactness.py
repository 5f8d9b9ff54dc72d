"""SSD with sampling is exact: the law of SSD's outputs equals the target's, for every setting.

A small-vocabulary target (V = 40) makes the exact distribution of the first 5 emitted tokens
enumerable. Each case draws N = 1500 continuations through real SSD rounds (Speculator + the
worker's verification functions) and runs two chi-square tests, on the first three tokens and on
tokens 4-5 (which come from cache hits and backups of later rounds), each at the 1 - 5e-5
quantile: a correct implementation fails a case with probability <= 1e-4.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from sglang_ssd.testing.simulate import TargetProbs, chi_square, sample_ssd

V = 40
N = 1500
LENGTH = 5
K = 2
PROMPT = [3, 7, 11, 5]
STD = 0.08  # flat enough that every case has several likely tokens per position


def _make(path: Path, seed: int, std: float):
    from transformers import LlamaConfig, LlamaForCausalLM

    if not (path / "config.json").exists():
        torch.manual_seed(seed)
        cfg = LlamaConfig(vocab_size=V, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                          num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                          initializer_range=std, tie_word_embeddings=False)
        LlamaForCausalLM(cfg).save_pretrained(str(path))
    return path


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    root = tmp_path_factory.mktemp("small_vocab")
    return {"target": _make(root / "target", 11, STD), "other": _make(root / "other", 12, STD)}


@pytest.fixture(scope="module")
def hf(small):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(str(small["target"]), dtype=torch.float32).eval()


def _speculator(path, c, backup, fanout=(2, 2, 2), q_mass=None):
    from sglang_ssd import qlaw
    from sglang_ssd.draft_model import DraftModel
    from sglang_ssd.speculator import Speculator

    return Speculator(DraftModel(str(path), "cpu", "float32", 1 << 16), K, list(fanout), backup, 8, c,
                      q_mass=qlaw.MASS if q_mass is None else q_mass)


def _project(exact, sl):
    out = {}
    for seq, p in exact.items():
        out[seq[sl]] = out.get(seq[sl], 0.0) + p
    return out


CASES = [
    # draft, C, temperature, top_k, top_p, backup
    ("target", 1.0, 1.0, 4, 1.0, "neural"),
    ("target", 0.3, 1.0, 5, 1.0, "neural"),
    ("target", 0.05, 0.6, 6, 0.8, "neural"),
    ("target", 0.3, 1.5, 4, 0.9, "fast"),
    ("other", 1.0, 1.0, 4, 1.0, "neural"),
    ("other", 0.05, 1.5, 4, 1.0, "fast"),
    ("other", 0.3, 0.6, 6, 0.7, "adaptive"),
    ("target", 0.05, 1.0, 3, 1.0, "adaptive"),
]


@pytest.mark.parametrize("draft,c,temp,top_k,top_p,backup", CASES)
def test_ssd_sampling_matches_target_law(small, hf, draft, c, temp, top_k, top_p, backup):
    target = TargetProbs(hf, temp, top_k, top_p)
    exact = target.exact(PROMPT, LENGTH)
    spec = _speculator(small[draft], c, backup)
    samples, hits, lookups = sample_ssd(spec, target, PROMPT, N, LENGTH)
    for sl in (slice(0, 3), slice(3, 5)):
        stat, crit = chi_square([x[sl] for x in samples], _project(exact, sl), alpha=5e-5)
        assert stat < crit, f"tokens {sl}: chi2={stat:.1f} >= {crit:.1f}"
    if draft == "target" and backup != "fast":
        assert hits > 0  # the cached path is exercised, not only the backup
    assert spec.pool_usage()[0] == 0  # every finished request released its KV (to the prefix cache)
    spec.prefix.clear()
    assert spec.pool_usage()[0] == 0
    spec.prefix.clear()
    assert spec.model.pool.num_used == 0


COMPACT_CASES = [
    # draft, C, temperature, top_k, top_p, backup, q_mass
    ("target", 1.0, 1.0, 6, 1.0, "neural", 0.6),
    ("other", 0.3, 1.5, 6, 1.0, "adaptive", 0.75),
]


@pytest.mark.parametrize("draft,c,temp,top_k,top_p,backup,q_mass", COMPACT_CASES)
def test_compact_q_law_is_exact(small, hf, draft, c, temp, top_k, top_p, backup, q_mass):
    """The draft ships a compact q' (its top tokens holding q_mass of q, renormalised; qlaw.py):
    cut hard here so the law it samples from and ships really differs from q. Same N, tests and
    false-failure bound as above."""
    target = TargetProbs(hf, temp, top_k, top_p)
    exact = target.exact(PROMPT, LENGTH)
    spec = _speculator(small[draft], c, backup, q_mass=q_mass)
    samples, hits, lookups = sample_ssd(spec, target, PROMPT, N, LENGTH)
    for sl in (slice(0, 3), slice(3, 5)):
        stat, crit = chi_square([x[sl] for x in samples], _project(exact, sl), alpha=5e-5)
        assert stat < crit, f"tokens {sl}: chi2={stat:.1f} >= {crit:.1f}"
    spec.prefix.clear()
    assert spec.model.pool.num_used == 0


PARTIAL_CASES = [
    # draft, C, temperature, top_k, top_p, backup, seeded
    ("target", 1.0, 1.0, 4, 1.0, "neural", False),
    ("other", 0.3, 0.6, 6, 0.8, "adaptive", False),
    ("target", 1.0, 1.0, 5, 1.0, "fast", True),
]


@pytest.mark.parametrize("draft,c,temp,top_k,top_p,backup,seeded", PARTIAL_CASES)
def test_stopped_trees_are_exact(small, hf, draft, c, temp, top_k, top_p, backup, seeded):
    """Every tree stops after one step (partial_tree.py): hits carry one drafted token and an
    n-gram tail whose q' rows are one-hot. Same N, tests and false-failure bound as above."""
    target = TargetProbs(hf, temp, top_k, top_p)
    exact = target.exact(PROMPT, LENGTH)
    spec = _speculator(small[draft], c, backup)
    samples, hits, lookups = sample_ssd(spec, target, PROMPT, N, LENGTH, stop_trees=True,
                                        seeds=range(N) if seeded else None)
    for sl in (slice(0, 3), slice(3, 5)):
        stat, crit = chi_square([x[sl] for x in samples], _project(exact, sl), alpha=5e-5)
        assert stat < crit, f"tokens {sl}: chi2={stat:.1f} >= {crit:.1f}"
    if draft == "target":
        assert hits > 0  # partial hits were served, not only backups
    spec.prefix.clear()
    assert spec.model.pool.num_used == 0


SEEDED_CASES = [
    # draft, temperature, top_k, top_p, backup
    ("target", 1.0, 4, 1.0, "neural"),
    ("other", 0.6, 6, 0.8, "fast"),
    ("other", 1.5, 5, 0.9, "adaptive"),
]


@pytest.mark.parametrize("draft,temp,top_k,top_p,backup", SEEDED_CASES)
def test_seeded_sampling_matches_target_law(small, hf, draft, temp, top_k, top_p, backup):
    """Requests with sampling_seed (Gumbel-max rule, one seed per request): same N, same tests
    and false-failure bound as above; hits and misses both occur with the target's copy."""
    target = TargetProbs(hf, temp, top_k, top_p)
    exact = target.exact(PROMPT, LENGTH)
    spec = _speculator(small[draft], 1.0, backup)
    samples, hits, lookups = sample_ssd(spec, target, PROMPT, N, LENGTH, seeds=range(1000, 1000 + N))
    for sl in (slice(0, 3), slice(3, 5)):
        stat, crit = chi_square([x[sl] for x in samples], _project(exact, sl), alpha=5e-5)
        assert stat < crit, f"tokens {sl}: chi2={stat:.1f} >= {crit:.1f}"
    if draft == "target":
        assert hits > 0.9 * lookups  # same model, same noise: the forks hold the target's choice
    assert spec.pool_usage()[0] == 0
    spec.prefix.clear()
    assert spec.model.pool.num_used == 0


def test_seeded_output_does_not_depend_on_the_draft(small, hf):
    """The same seeds give the same continuations with the target's copy, an unrelated draft
    and either backup."""
    target = TargetProbs(hf, 1.0, 5, 1.0)
    runs = [sample_ssd(_speculator(small[d], 1.0, b), target, PROMPT, 40, 8, seeds=range(40))[0]
            for d, b in (("target", "neural"), ("other", "fast"), ("other", "neural"))]
    assert runs[0] == runs[1] == runs[2]
    assert len(set(runs[0])) > 10


def test_wrong_acceptance_rule_is_caught(small, hf):
    """Resampling a rejection from p instead of norm(max(0, p - q')) must fail the same test."""
    target = TargetProbs(hf, 1.0, 4, 1.0)
    exact = target.exact(PROMPT, LENGTH)
    spec = _speculator(small["target"], 0.05, "neural")
    samples, _, _ = sample_ssd(spec, target, PROMPT, 2 * N, LENGTH, wrong_residual=True)
    stat, crit = chi_square([x[1:3] for x in samples], _project(exact, slice(1, 3)))
    print(f"wrong rule: chi2={stat:.1f}, critical {crit:.1f}")
    assert stat > crit, f"the wrong rule went unnoticed: chi2={stat:.1f} < {crit:.1f}"


def test_saguaro_raises_hit_rate(small, hf):
    target = TargetProbs(hf, 1.0, 6, 1.0)
    rates = {}
    for c in (1.0, 0.05):
        _, hits, lookups = sample_ssd(_speculator(small["target"], c, "neural", (1, 1, 1)), target, PROMPT,
                                      400, 8)
        rates[c] = hits / max(lookups, 1)
    assert rates[0.05] > rates[1.0]
