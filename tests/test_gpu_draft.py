"""SSD's draft side on CUDA, without SGLang (skipped without CUDA): what the GPU device machine can
run. The draft's rounds for greedy, sampled, seeded and grammar requests with CUDA logits; greedy
SSD rounds against a Hugging Face target on CUDA; sampled rounds verified by the compiled Triton
kernels; the draft's CUDA graphs against its eager forward; the projection's graphed forwards.
Run by bench/gpu_check.sh."""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.gpu


@pytest.fixture(scope="module")
def tok_dir(tmp_path_factory):
    from sglang_ssd.testing.tiny_models import train_tokenizer

    d = tmp_path_factory.mktemp("gpu_tok")
    train_tokenizer(d)
    return d


def _script(tok_dir, device, kinds):
    from transformers import AutoTokenizer

    from sglang_ssd.speculator import Speculator
    from sglang_ssd.testing.draft_scenarios import MarkovDraft, requests, run_script
    from sglang_ssd.testing.workloads import REGEX

    tok = AutoTokenizer.from_pretrained(str(tok_dir))
    model = MarkovDraft(len(tok), device, model_path=str(tok_dir))
    spec = Speculator(model, 3, [2, 1, 1, 2], "neural", 8, saguaro_c=0.5)
    prompt = tok("The quick brown fox jumps over the lazy dog.")["input_ids"]
    begins = requests(prompt, grammar_first=tok("no")["input_ids"][0], grammar=("regex", REGEX))
    return [r for r in run_script(spec, [b for b in begins if b.rid in kinds], rounds=3)]


def test_draft_rounds_with_cuda_logits(tok_dir, monkeypatch):
    """Every kind of request drafted from CUDA logits: greedy, seeded and grammar requests ship
    what the same script ships from CPU logits (deterministic choices); sampled ones ship a q'
    row per token on the CPU, each token inside its row's support."""
    import torch

    from sglang_ssd import qlaw

    monkeypatch.setenv("SGLANG_SSD_DRAFT_GRAMMAR", "1")
    det = {"greedy", "seeded", "grammar"}
    assert _script(tok_dir, "cuda", det) == _script(tok_dir, "cpu", det)
    sampled = _script(tok_dir, "cuda", {"sampled", "plain_sampled"})
    assert sampled
    for _, rid, _, tokens, probs, ids, counts in sampled:
        assert len(counts) == len(tokens)
        q = qlaw.unpack(probs, ids, counts, len(tokens), 512)
        assert q is not None and q.device == torch.device("cpu")
        assert all(float(q[j, t]) > 0 for j, t in enumerate(tokens))


def test_cuda_draft_greedy_rounds_match_the_hf_target(models):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from sglang_ssd.draft_model import DraftModel
    from sglang_ssd.speculator import Speculator
    from sglang_ssd.testing.hf_rounds import greedy_reference, ssd_greedy

    import torch

    tok = AutoTokenizer.from_pretrained(str(models["target"]))
    target = AutoModelForCausalLM.from_pretrained(str(models["target"]), dtype=torch.float32).to("cuda").eval()
    spec = Speculator(DraftModel(str(models["draft_perturbed"]), "cuda", "float32", 4096), 4, [2, 2, 1, 1, 3],
                      "neural", 8)
    prompts = [tok(t)["input_ids"] for t in ("The quick brown fox", "def add(a, b):")]
    got, st = ssd_greedy(spec, target, prompts, 24)
    assert got == [greedy_reference(target, p, 24) for p in prompts]
    assert st["emitted"] > st["rounds"]  # drafts were accepted, not only t*


def test_sampled_rounds_verified_on_cuda():
    """Sampled SSD rounds with the target on CUDA: rejection sampling by the compiled kernel."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from sglang_ssd.testing.draft_scenarios import MarkovDraft
    from sglang_ssd.speculator import Speculator
    from sglang_ssd.testing.simulate import TargetProbs, sample_ssd

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=40, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, initializer_range=0.08)
    hf = LlamaForCausalLM(cfg).to("cuda").eval()
    target = TargetProbs(hf, 1.0, 5, 1.0)
    spec = Speculator(MarkovDraft(40, "cuda", slots=1 << 15, scale=1.0), 2, [2, 2, 2], "neural", 8, 0.3)
    samples, hits, lookups = sample_ssd(spec, target, [3, 7, 11], 200, 4)
    assert len(samples) == 200 and all(len(s) == 4 for s in samples)
    supp = target.exact([3, 7, 11], 2)
    assert all(s[:2] in supp for s in samples)  # only sequences the target can emit


def test_draft_graphs_replay_the_eager_forward(models):
    """The same grouped forwards through captured graphs and eagerly: equal logits (float
    rounding aside) and argmax, graphs replayed, the prefill counted as an eager fallback."""
    import torch

    from sglang_ssd.draft_batch import Group, run, slot_tensor
    from sglang_ssd.draft_graphs import install
    from sglang_ssd.draft_model import DraftModel
    from sglang_ssd.graph_buckets import NO_LOGITS

    a = DraftModel(str(models["target"]), "cuda", "float32", 1024)
    b = DraftModel(str(models["target"]), "cuda", "float32", 1024)
    g = install(b)
    assert g is not None and b.forward == g.forward
    outs = {}
    for name, m in (("eager", a), ("graphs", b)):
        pre = m.pool.alloc(12)
        m.forward([run(slot_tensor([]), list(range(5, 17)), 0, pre)], logits=False)
        new = m.pool.alloc(6)
        res = []
        for rep in range(3):  # the second and third calls replay the graphs captured in the first
            glue = run(slot_tensor(pre), [40, 41], 12, new[:2])
            tree = Group(slot_tensor(pre), [42, 43, 44, 45], [13, 13, 14, 14], new[2:],
                         own=[[new[0], new[2]], [new[0], new[3]], [new[0], new[2], new[4]], [new[0], new[3], new[5]]])
            res.append(m.forward([glue]))
            res.append(m.forward([tree]))
        outs[name] = res
    for x, y in zip(outs["eager"], outs["graphs"]):
        assert torch.allclose(x, y, rtol=1e-4, atol=1e-4)
        assert torch.equal(x.argmax(-1), y.argmax(-1))
    assert g.stats.replays == 6 and g.stats.captures == 2 and g.stats.eager == {NO_LOGITS: 1}


def test_projection_forward_graph_equals_eager():
    import sys
    from pathlib import Path

    import torch

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
    import gpu_projection as gp

    model = gp.build(gp.SHAPES["tiny"][0], "cuda", torch.float32)
    f = gp.Forward(model, 2, 16, 3, "cuda")
    want = f._run().clone()
    assert f.capture()
    f.graphed()
    assert torch.allclose(f.graph.outputs, want, rtol=1e-4, atol=1e-4)
