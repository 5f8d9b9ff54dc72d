"""oneDNN-packed linear layers (kernels/cpu_linear.py) against F.linear, and the SGLang hooks of
patches/cpu_packed_linear.py that route verify / prefill rows through them."""

from __future__ import annotations

import types

import pytest
import torch
import torch.nn.functional as F

from sglang_ssd.kernels import cpu_linear
from sglang_ssd.patches import cpu_packed_linear as patch

pytestmark = pytest.mark.skipif(not cpu_linear.available(), reason="torch built without oneDNN")


def _weights(out_f=48, in_f=40, dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(out_f, in_f, generator=g) * 0.1).to(dtype), (torch.randn(out_f, generator=g) * 0.1).to(dtype)


@pytest.mark.parametrize("rows", [2, 3, 5, 16, 65])
@pytest.mark.parametrize("with_bias", [True, False])
def test_packed_equals_reference(rows, with_bias):
    w, b = _weights()
    b = b if with_bias else None
    x = torch.randn(rows, w.shape[1], generator=torch.Generator().manual_seed(rows))
    got = cpu_linear.packed_linear(x, w, b, cpu_linear.PackedWeight(w))
    ref = cpu_linear.linear_ref(x, w, b)
    assert got.shape == ref.shape and got.dtype == ref.dtype
    torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-5)


def test_one_row_is_sglangs_own_kernel_bit_for_bit():
    w, b = _weights()
    x = torch.randn(1, w.shape[1])
    assert torch.equal(cpu_linear.packed_linear(x, w, b, cpu_linear.PackedWeight(w)), F.linear(x, w, b))


@pytest.mark.parametrize("dtype,packed_rows", [(torch.float32, [2, 5]), (torch.bfloat16, [1, 2, 5])])
def test_which_rows_take_the_pack(dtype, packed_rows, monkeypatch):
    """float32: one row is F.linear (SGLang's decode kernel); bfloat16: every row count is packed
    (F.linear is oneDNN there already, twice slower for one row without the prepacked layout)."""
    w, b = _weights(dtype=dtype)
    pack = cpu_linear.PackedWeight(w)
    used = []
    real = cpu_linear.PackedWeight.current
    monkeypatch.setattr(cpu_linear.PackedWeight, "current", lambda self, wt: used.append(1) or real(self, wt))
    took = []
    for rows in (1, 2, 5):
        used.clear()
        out = cpu_linear.packed_linear(torch.randn(rows, w.shape[1]).to(dtype), w, b, pack)
        assert out.shape == (rows, w.shape[0])
        if used:
            took.append(rows)
    assert took == packed_rows


def test_leading_dims_and_bfloat16():
    w, b = _weights(dtype=torch.bfloat16)
    x = torch.randn(2, 3, w.shape[1]).to(torch.bfloat16)
    got = cpu_linear.packed_linear(x, w, b, cpu_linear.PackedWeight(w))
    assert got.shape == (2, 3, w.shape[0])
    torch.testing.assert_close(got.float(), F.linear(x, w, b).float(), rtol=2e-2, atol=2e-2)


def test_weight_changed_in_place_is_packed_again():
    w, b = _weights()
    pack = cpu_linear.PackedWeight(w)
    x = torch.randn(4, w.shape[1])
    first = cpu_linear.packed_linear(x, w, b, pack)
    w.mul_(3.0)  # a weight update in place
    torch.testing.assert_close(cpu_linear.packed_linear(x, w, b, pack), F.linear(x, w, b), rtol=1e-5, atol=1e-5)
    assert not torch.allclose(first, F.linear(x, w, b))


def test_pack_linears_routes_modules():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.ReLU(), torch.nn.Linear(32, 8, bias=False)).eval()
    x = torch.randn(6, 16)
    with torch.inference_mode():
        ref = model(x)
    assert cpu_linear.pack_linears(model) == 2
    with torch.inference_mode():
        out = model(x)
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
    assert all(isinstance(m.forward, cpu_linear._PackedForward) for m in model if isinstance(m, torch.nn.Linear))


class _Layer(torch.nn.Module):
    def __init__(self, w, b):
        super().__init__()
        self.weight = torch.nn.Parameter(w, requires_grad=False)
        self.bias = torch.nn.Parameter(b, requires_grad=False)


def _original_fails(*args, **kwargs):
    raise AssertionError("the original ran")


def test_linear_hooks_pack_at_load_and_serve_several_rows():
    w, b = _weights()
    layer = _Layer(w, b)
    assert patch._after_loading(None, object(), layer) is None
    assert isinstance(getattr(layer, patch._ATTR), cpu_linear.PackedWeight)
    x = torch.randn(5, w.shape[1])
    with torch.inference_mode():
        out = patch._apply(_original_fails, object(), layer, x, layer.bias)
    torch.testing.assert_close(out, F.linear(x, w, b), rtol=1e-5, atol=1e-5)
    seen = []
    one = patch._apply(lambda *a, **k: seen.append(1) or F.linear(a[2], a[1].weight, a[3]), object(), layer,
                       x[:1], layer.bias)
    assert seen == [] and torch.equal(one, F.linear(x[:1], w, b))  # one row: F.linear, same numbers


def test_linear_hook_leaves_amx_and_unpacked_layers_to_sglang():
    w, b = _weights()
    amx = _Layer(w, b)
    amx.use_intel_amx_backend = True
    patch._after_loading(None, object(), amx)
    assert not hasattr(amx, patch._ATTR)
    plain = _Layer(w, b)
    sentinel = torch.zeros(1)
    assert patch._apply(lambda *a, **k: sentinel, object(), plain, torch.randn(5, w.shape[1]), None) is sentinel


def test_lm_head_hook():
    w, _ = _weights(out_f=100)
    head = _Layer(w, torch.zeros(100))
    proc = types.SimpleNamespace(use_fp32_lm_head=False, rl_on_policy_target=None)
    h = torch.randn(5, w.shape[1])
    with torch.inference_mode():
        out = patch._compute_lm_head(_original_fails, proc, h, head)
    torch.testing.assert_close(out, h @ w.T, rtol=1e-5, atol=1e-5)
    sentinel = torch.zeros(1)
    orig = lambda *a, **k: sentinel  # noqa: E731
    assert patch._compute_lm_head(orig, proc, h[:1], head) is sentinel  # one row
    assert patch._compute_lm_head(orig, types.SimpleNamespace(use_fp32_lm_head=True, rl_on_policy_target=None),
                                  h, head) is sentinel
    assert patch._compute_lm_head(orig, proc, h, head, torch.zeros(100)) is sentinel  # embedding bias
    lora = _Layer(w, torch.zeros(100))
    lora.set_lora = True
    assert patch._compute_lm_head(orig, proc, h, lora) is sentinel


def test_cpu_engine_registers_the_hooks():
    from sglang.srt.plugins.hook_registry import HookRegistry

    from sglang_ssd.patches import cpu_engine

    cpu_engine.apply()
    targets = set(HookRegistry._hooks)
    assert {"sglang.srt.layers.quantization.unquant.UnquantizedLinearMethod.apply",
            "sglang.srt.layers.quantization.unquant.UnquantizedLinearMethod.process_weights_after_loading",
            "sglang.srt.layers.logits_processor.LogitsProcessor._compute_lm_head"} <= targets


def test_draft_model_packs_its_linears_and_keeps_its_logits(models, monkeypatch):
    """The Hugging Face draft engine on CPU in bfloat16 routes its linears (lm_head included)
    through the packs; its logits for a 6-row forward equal the unpacked model's."""
    from sglang_ssd.draft_model import DraftModel

    def run(m):
        return m.forward([1, 2, 3, 4, 5, 6], list(range(6)), list(range(6)),
                         [list(range(i + 1)) for i in range(6)])

    packed = DraftModel(str(models["target"]), "cpu", "bfloat16", 64)
    routed = [m for m in packed.model.modules() if isinstance(m, torch.nn.Linear)]
    assert routed and all(isinstance(m.forward, cpu_linear._PackedForward) for m in routed)
    monkeypatch.setenv("SGLANG_SSD_CPU_PACKED_LINEAR", "0")
    plain = DraftModel(str(models["target"]), "cpu", "bfloat16", 64)
    assert not any(isinstance(m.forward, cpu_linear._PackedForward) for m in plain.model.modules())
    torch.testing.assert_close(run(packed), run(plain), rtol=1e-2, atol=1e-2)
