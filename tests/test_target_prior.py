"""The target's linear layers timed at start (target_prior.py): which layers, how they scale."""

from __future__ import annotations

import torch

from sglang_ssd import target_prior


class _Layer(torch.nn.Module):
    def __init__(self, h):
        super().__init__()
        self.qkv_proj = torch.nn.Linear(h, 3 * h, bias=False)
        self.down_proj = torch.nn.Linear(2 * h, h, bias=False)
        self.norm = torch.nn.LayerNorm(h)  # a 1-d weight: not a linear layer


class ParallelLMHead(torch.nn.Module):  # named as SGLang's, which is not called as a module
    def __init__(self, v, h):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.randn(v, h))


class _Model(torch.nn.Module):
    def __init__(self, h=16, layers=3, v=40):
        super().__init__()
        self.model = torch.nn.Module()
        self.model.embed_tokens = torch.nn.Embedding(v, h)
        self.model.layers = torch.nn.ModuleList([_Layer(h) for _ in range(layers)])
        self.lm_head = ParallelLMHead(v, h)


def test_layer_zero_and_the_lm_head_are_timed_and_the_layers_counted():
    m = _Model(layers=3)
    calls, layers = target_prior.linears_of(m)
    assert layers == 3
    assert sorted((width, head) for _, width, _, head in calls) == [(16, False), (16, True), (32, False)]
    x = torch.randn(2, 16)
    head = [c for c in calls if c[3]][0][0]
    assert torch.equal(head(x), x @ m.lm_head.weight.T)  # the lm_head's product, as logits take it


def test_a_layers_kernel_is_what_is_timed(monkeypatch):
    """A layer given a kernel (patches/cpu_packed_linear.py) is timed through it, not F.linear."""
    m = _Model(layers=2)
    seen = []

    def kernel(x, w):
        seen.append(tuple(w.shape))
        return x @ w.T

    m.model.layers[0].qkv_proj._ssd_linear = kernel
    calls, _ = target_prior.linears_of(m)
    for call, width, dtype, _ in calls:
        call(torch.randn(1, width, dtype=dtype))
    assert seen == [(48, 16)]


def test_measure_times_every_thread_count_and_scales_layer_zero_by_the_layer_count(monkeypatch):
    """Every (threads, apply) is applied before its timing; the body's time is layer 0's times the
    number of layers plus the lm_head's once."""
    m = _Model(layers=5)
    clock = iter(range(10 ** 6))
    monkeypatch.setattr(target_prior.time, "perf_counter", lambda: float(next(clock)))  # each call: 1 s
    applied = []
    prior = target_prior.measure(m, [(2, lambda: applied.append(2)), (1, lambda: applied.append(1))], rows=(1, 4))
    assert applied == [2, 1] and sorted(prior) == [1, 2] and sorted(prior[1]) == [1, 4]
    # 2 linears in layer 0 (x 5 layers) + the lm_head, each timed at 1 "second"
    assert prior[1][1] == prior[2][4] == 2 * 5 + 1
    assert target_prior.measure(torch.nn.Module(), [(1, lambda: None)]) == {}
