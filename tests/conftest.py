"""Shared fixtures: one set of tiny local models and one server per configuration per session.

A CPU SGLang server takes ~20-40 s to start here, so servers are session-scoped and shared.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from sglang_ssd.testing.tiny_models import make_pair_set

K = 4
# SSD servers of tests about speculation itself serve every round with SSD (--ssd-mode ssd): the
# mode planner would rightly stop speculating with a draft that buys nothing on these tiny models.
PIN_SSD = ["--ssd-mode", "ssd"]
SERVER_ARGS = ["--dtype", "float32", "--mem-fraction-static", "0.25", "--max-total-tokens", "32768",
               "--max-running-requests", "16", "--sleep-on-idle",
               "--log-level", "warning"]


def pytest_collection_modifyitems(config, items):
    import torch

    if not torch.cuda.is_available():
        skip = pytest.mark.skip(reason="needs CUDA")
        for item in items:
            if "gpu" in item.keywords:
                item.add_marker(skip)


@pytest.fixture(scope="session")
def models(tmp_path_factory) -> dict:
    root = os.environ.get("SGLANG_SSD_TEST_MODELS")
    root = Path(root) if root else tmp_path_factory.mktemp("tiny_models")
    return make_pair_set(root)


@pytest.fixture(scope="session")
def log_dir(tmp_path_factory) -> Path:
    d = os.environ.get("SGLANG_SSD_TEST_LOGS")
    if d:
        Path(d).mkdir(parents=True, exist_ok=True)
        return Path(d)
    return tmp_path_factory.mktemp("server_logs")


class _Servers:
    """Lazily started servers keyed by name, all stopped at session end."""

    def __init__(self, models, log_dir):
        self.models, self.log_dir, self.live = models, log_dir, {}

    def get(self, name: str, draft: str | None = None, extra: list[str] = ()):
        from sglang_ssd.testing.server import CPUServer

        if name not in self.live:
            args = list(SERVER_ARGS)
            if draft is not None:
                args += ["--speculative-algorithm", "SSD", "--speculative-draft-model-path",
                         str(self.models[draft]), "--speculative-num-steps", str(K)]
            args += list(extra)
            if draft is not None and "--ssd-mode" not in extra:
                args += PIN_SSD
            self.live[name] = CPUServer(self.models["target"], args, log_path=str(self.log_dir / f"{name}.log"))
        return self.live[name]

    def stop_all(self):
        for s in self.live.values():
            s.stop()
        self.live.clear()


@pytest.fixture(scope="session")
def servers(models, log_dir):
    s = _Servers(models, log_dir)
    yield s
    s.stop_all()


@pytest.fixture(scope="session")
def hf_target(models):
    import torch
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(str(models["target"]), dtype=torch.float32).eval()


def cache_answer_rate(st: dict) -> float:
    """Lookups answered from the speculation cache: full hits plus answers from a tree the draft
    stopped early to answer in time (partial_rate). Which of the two a lookup gets depends on the
    machine's load (a tree that overruns the verify is cut short), whether it is answered from the
    cache at all does not: a broken cache or a dead draft leaves both low."""
    return (st["cache_hit_rate"] or 0.0) + (st["partial_rate"] or 0.0)


def hf_greedy(model, prompt: list[int], n: int, frequency_penalty: float = 0.0) -> list[int]:
    """Hugging Face greedy decoding without EOS handling (the servers run with ignore_eos);
    frequency_penalty as SGLang defines it: minus penalty x count of each token in the output."""
    import torch

    out, past, inp = [], None, torch.tensor([prompt])
    counts = torch.zeros(model.config.vocab_size)
    with torch.no_grad():
        for _ in range(n):
            res = model(inp, past_key_values=past, use_cache=True)
            past = res.past_key_values
            t = int((res.logits[0, -1].float() - frequency_penalty * counts).argmax())
            counts[t] += 1
            out.append(t)
            inp = torch.tensor([[t]])
    return out


def hf_seeded(model, prompt, n, sp):
    """The seeded reference: at each position the Gumbel-max sample (sglang_ssd.sampling) of
    the target's distribution as SGLang's sampler forms it, from Hugging Face logits."""
    import torch

    from sglang_ssd.sampling import gumbel_choice, processed_probs

    ids = list(prompt)
    params = [torch.tensor([x]) for x in (sp["temperature"], sp.get("top_k", -1), sp.get("top_p", 1.0), 0.0)]
    with torch.no_grad():
        for _ in range(n):
            probs = processed_probs(model(torch.tensor([ids])).logits[0, -1:], *params)
            ids.append(int(gumbel_choice(probs, sp["sampling_seed"], [len(ids)])[0]))
    return ids[len(prompt):]
