"""Every draft-side tensor is made on an explicit device: the one of its logits, or the CPU for
what goes on the wire. Run with torch's default device set to "meta", inputs on an explicit
device (the CPU here), any tensor made without a device is a meta tensor, and the first
operation that mixes it with a real one fails: on a GPU the same mistake is a CPU tensor divided
into CUDA logits (the bug a CUDA draft had for every sampled request). The outputs must equal a
run with the ordinary default device, token for token and byte for byte."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

import pytest
import torch

from sglang_ssd import qlaw
from sglang_ssd.wire import Sampling

CPU = torch.device("cpu")


@pytest.fixture
def meta_default():
    torch.set_default_device("meta")
    try:
        yield
    finally:
        torch.set_default_device(None)


@dataclass
class _Chain:  # what proposals.propose reads of a chain
    first_pos: int
    sampling: Optional[Sampling] = None
    qs: list = field(default_factory=list)


def _chains():
    return [_Chain(10), _Chain(10, Sampling(temperature=0.7, top_k=5, top_p=0.9)),
            _Chain(12, Sampling(temperature=1.0)), _Chain(7, Sampling(temperature=0.9, min_p=0.1, seed=77))]


def _propose_all(logits):
    from sglang_ssd.proposals import propose, seeded_scores

    torch.manual_seed(3)
    chains = _chains()
    toks = [propose(chains, logits, step, fan=2, saguaro_c=0.4, q_mass=0.99) for step in range(2)]
    qs = [(qlaw.CompactQ(c.qs).pack() if c.qs else None) for c in chains]
    seeded = seeded_scores(chains[3].sampling, logits[:3], 20)
    return toks, qs, seeded


def test_proposals_follow_their_logits_device(meta_default):
    g = torch.Generator(device="cpu").manual_seed(0)
    logits = torch.randn(4, 50, generator=g, device=CPU) * 3
    got = _propose_all(logits)
    torch.set_default_device(None)
    want = _propose_all(logits)
    assert got[0] == want[0] and got[1] == want[1]
    assert got[2].device == CPU and torch.equal(got[2], want[2])
    assert got[1][1] is not None and got[1][3] is None  # sampled rows ship q', seeded rows none


def test_param_tensors_are_made_on_the_device_asked(monkeypatch, meta_default):
    """proposals asks for its logits' device: a helper that had to fall back on a default would
    be called without one (made to fail here)."""
    from sglang_ssd import proposals, sampling

    def strict(items, device):
        assert torch.device(device) == CPU
        return sampling.param_tensors(items, device)

    monkeypatch.setattr(proposals, "param_tensors", strict)
    logits = torch.randn(4, 50, device=CPU)
    _propose_all(logits)


def test_sampling_and_qlaw_under_a_meta_default(meta_default):
    from sglang_ssd.partial_tree import complete
    from sglang_ssd.sampling import gumbel_choice, param_tensors, processed_probs

    logits = torch.linspace(-2, 2, 60, device=CPU).view(3, 20)
    params = param_tensors([Sampling(temperature=0.5, top_k=4), Sampling(temperature=1.0, top_p=0.8),
                            Sampling(temperature=2.0, min_p=0.2)], CPU)
    p = processed_probs(logits, **params)
    assert p.device == CPU and torch.allclose(p.sum(-1), torch.ones(3, device=CPU))
    assert (p[0] > 0).sum().item() == 4
    t = gumbel_choice(p, seed=5, positions=[1, 2, 3])
    assert t.device == CPU and t.shape == (3,)
    cq = qlaw.compact(p, mass=0.9)
    assert all(ids.device == CPU and pr.device == CPU for ids, pr in cq.rows)
    draws = qlaw.sample(cq, torch.tensor([0.1, 0.5, 0.99], device=CPU))
    assert all(int(cq.rows[i][0].tolist().count(d)) == 1 for i, d in enumerate(draws))
    probs, ids, counts = cq.pack()
    dense = qlaw.unpack(probs, ids, counts, 3, 20)
    assert dense.device == CPU and torch.equal(dense, cq.dense(20))
    toks, q2 = complete([7], cq[:1], [1, 2, 3, 1, 2], 3)
    assert len(toks) == 3 and len(q2) == 3 and q2.pack()[2] == [counts[0], 1, 1]


def test_verification_kernels_references_under_a_meta_default(meta_default):
    from sglang_ssd.kernels.dispatch import chain_accept, fork_topf, saguaro_rescale

    g = torch.Generator(device="cpu").manual_seed(1)
    b, k, v = 3, 2, 16
    p = torch.softmax(torch.randn(b, k + 1, v, generator=g, device=CPU), -1)
    q = torch.softmax(torch.randn(b, k, v, generator=g, device=CPU), -1)
    d = torch.multinomial(q.view(-1, v), 1, generator=g).view(b, k)
    n, t = chain_accept(p, q, d, torch.rand(b, k, generator=g, device=CPU), torch.rand(b, generator=g, device=CPU))
    assert n.device == CPU and t.device == CPU
    r = saguaro_rescale(q[:, 0], torch.tensor([1, 2, 3], device=CPU), 0.3)
    assert r.device == CPU and torch.allclose(r.sum(-1), torch.ones(b, device=CPU))
    f = fork_topf(torch.randn(b, k + 1, v, generator=g, device=CPU), d, [2, 1, 3])
    assert f.device == CPU and f.shape == (b, k + 1, 3)


@pytest.fixture(scope="module")
def tokenizer_dir(tmp_path_factory):
    from sglang_ssd.testing.tiny_models import train_tokenizer

    d = tmp_path_factory.mktemp("tok")
    train_tokenizer(d)
    return d


def _script(tokenizer_dir):
    from transformers import AutoTokenizer

    from sglang_ssd.speculator import Speculator
    from sglang_ssd.testing.draft_scenarios import MarkovDraft, requests, run_script
    from sglang_ssd.testing.workloads import REGEX

    tok = AutoTokenizer.from_pretrained(str(tokenizer_dir))
    model = MarkovDraft(len(tok), CPU, model_path=str(tokenizer_dir))
    spec = Speculator(model, 3, [2, 1, 1, 2], "neural", 8, saguaro_c=0.5)
    prompt = tok("The quick brown fox jumps over the lazy dog.")["input_ids"]
    begins = requests(prompt, grammar_first=tok("no")["input_ids"][0], grammar=("regex", REGEX))
    return run_script(spec, begins, rounds=3), spec


def test_speculator_rounds_under_a_meta_default(tokenizer_dir, monkeypatch):
    """Begin, speculate (glue, forks, K-deep branches), lookup (hits, partial trees) for greedy,
    sampled, seeded and grammar requests: the same shipped bytes with a meta default device."""
    monkeypatch.setenv("SGLANG_SSD_DRAFT_GRAMMAR", "1")
    want, spec = _script(tokenizer_dir)
    assert spec.model.pool.num_used - spec.prefix.tokens == 0  # every request released
    kinds = {r[1] for r in want}
    assert kinds == {"greedy", "sampled", "plain_sampled", "seeded", "grammar"}
    assert any(r[2] for r in want)  # hits were served
    assert all(r[6] for r in want if r[1] in ("sampled", "plain_sampled"))  # with their q'
    assert not any(r[6] for r in want if r[1] in ("greedy", "seeded"))
    assert spec.seqs == {}
    torch.set_default_device("meta")
    try:
        got, _ = _script(tokenizer_dir)
    finally:
        torch.set_default_device(None)
    assert got == want
