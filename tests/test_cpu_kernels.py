"""The measured CPU linear-kernel choice (kernels/cpu_linear.py, cpu_caps.py, cpu_rowdot.py,
cpu_int8.py) and the SGLang hooks that route layers through it (patches/cpu_packed_linear.py),
on both CPU classes: the capability probe is forced either way, so nothing here depends on the
machine the tests run on."""

from __future__ import annotations

import json
import shutil
import types

import pytest
import torch
import torch.nn.functional as F

from sglang_ssd.kernels import cpu_caps, cpu_int8, cpu_linear, cpu_rowdot
from sglang_ssd.patches import cpu_packed_linear as patch

AVX2 = cpu_caps.AVX2_FLAGS
AVX512 = cpu_caps.AVX512_BF16_FLAGS
needs_onednn = pytest.mark.skipif(not cpu_linear.onednn_available(), reason="torch built without oneDNN")


@pytest.fixture(autouse=True)
def fresh_choices(tmp_path, monkeypatch):
    """Every test measures into its own cache file and forgets the process's earlier choices."""
    monkeypatch.setenv("SGLANG_SSD_KERNEL_CACHE", str(tmp_path / "kernels"))
    monkeypatch.delenv("SGLANG_SSD_CPU_LINEAR", raising=False)
    monkeypatch.delenv("SGLANG_SSD_CPU_PACKED_LINEAR", raising=False)
    monkeypatch.setattr(cpu_linear, "_memo", {})
    monkeypatch.setattr(cpu_rowdot, "_lib", None)
    monkeypatch.setattr(cpu_rowdot, "reason", "")


def _weights(out_f=48, in_f=40, dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(out_f, in_f, generator=g) * 0.1).to(dtype), (torch.randn(out_f, generator=g) * 0.1).to(dtype)


# ---- the capability probe ----------------------------------------------------------------
def test_probe_classes_and_why_a_bf16_pack_cannot_be_made():
    with cpu_caps.forced(AVX2) as c:
        assert c.label == "avx2" and not c.native_bf16 and c.avx2_fma
        assert "avx512bw" in c.pack_unsupported("bfloat16") and c.pack_unsupported("float32") == ""
        assert "avx512bw" in cpu_linear.pack_unsupported(torch.bfloat16) or not cpu_linear.onednn_available()
    with cpu_caps.forced(AVX512) as c:
        assert c.label == "avx512_bf16" and c.native_bf16 and c.pack_unsupported("bfloat16") == ""
    with cpu_caps.forced(AVX512, onednn_max_isa="avx2") as c:  # an AVX2 CPU emulated on an AVX-512 one
        assert c.label == "avx2 (emulated on avx512_bf16)" and not c.native_bf16 and c.pack_unsupported("bfloat16")
    with cpu_caps.forced(AVX2 | {"avx_ne_convert"}) as c:  # AVX2 with bf16 conversions (Arrow Lake, ...)
        assert c.pack_unsupported("bfloat16") == ""


@needs_onednn
def test_an_avx2_cpu_never_attempts_a_bf16_pack_and_a_bf16_model_still_runs(monkeypatch):
    """The AVX2 EPYC of issue 22 died at weight loading making a bfloat16 pack: here the pack is
    never attempted (its call would raise), and the bf16 layer runs F.linear exactly."""
    def no_pack(*a, **k):
        raise AssertionError("a bf16 pack was attempted on an AVX2 CPU")

    monkeypatch.setattr(cpu_linear, "_pack", no_pack)
    w, b = _weights(dtype=torch.bfloat16)
    with cpu_caps.forced(AVX2):
        kernel = cpu_linear.LinearKernel(w)
        assert kernel.plan.kind == "keep" and set(kernel.plan.paths) == {"torch"} and kernel.packed is None
        x = torch.randn(5, w.shape[1]).to(torch.bfloat16)
        assert torch.equal(kernel(x, w, b), F.linear(x, w, b))
        monkeypatch.setenv("SGLANG_SSD_CPU_LINEAR", "onednn")  # even when forced: not made, F.linear
        assert cpu_linear.LinearKernel(w).packed is None


@needs_onednn
def test_an_avx512_cpu_times_the_bf16_pack():
    w, _ = _weights(dtype=torch.bfloat16)
    with cpu_caps.forced(AVX512):
        plan = cpu_linear.plan_for(w)
    assert set(plan.times) == {"torch", "onednn"} and all(len(t) == len(cpu_linear.ROWS) for t in plan.times.values())


# ---- the choice from timings ----------------------------------------------------------------
def test_choice_from_timings():
    n = len(cpu_linear.ROWS)
    # the pack reads weights once: flat; F.linear grows with rows; rowdot wins few rows
    times = {"torch": [3.0, 6, 6, 7, 8, 9, 12], "rowdot": [2.9, 3, 3.2, 4, 7, 12, 20], "onednn": [1.7] * n}
    assert cpu_linear.choose(times).kind == "pack" and cpu_linear.choose(times).paths == ("onednn",) * n
    times["onednn"] = [8.0] * n  # a pack slower than keeping the weight (mean log-time): keep
    plan = cpu_linear.choose(times)
    assert plan.kind == "keep" and plan.paths == ("rowdot",) * 5 + ("torch",) * 2
    assert plan.path_for(1) == "rowdot" and plan.path_for(9) == "rowdot" and plan.path_for(17) == "torch"
    assert plan.path_for(1000) == "torch"
    assert cpu_linear.choose({"torch": [1.0] * n}).paths == ("torch",) * n


def test_a_plan_is_measured_once_then_cached_on_disk(monkeypatch):
    w, _ = _weights(out_f=64, in_f=32)
    calls = []
    real = cpu_linear.measure
    monkeypatch.setattr(cpu_linear, "measure", lambda *a, **k: calls.append(1) or real(*a, **k))
    first = cpu_linear.plan_for(w)
    assert calls == [1] and cpu_linear.plan_for(w) == first
    monkeypatch.setattr(cpu_linear, "_memo", {})  # a new process: read from the cache file
    assert cpu_linear.plan_for(w) == first and calls == [1]
    data = json.loads(cpu_linear._cache_file().read_text())
    assert len(data) == 1 and "64x32" in next(iter(data))
    monkeypatch.setenv("SGLANG_SSD_CPU_LINEAR", "torch")
    assert cpu_linear.plan_for(w).paths == ("torch",) * len(cpu_linear.ROWS) and calls == [1]
    monkeypatch.delenv("SGLANG_SSD_CPU_LINEAR")
    if "rowdot" in cpu_linear._candidates(torch.float32):  # a changed kernel is measured again
        monkeypatch.setattr(cpu_linear, "_memo", {})
        monkeypatch.setattr(cpu_linear.cpu_rowdot, "build_tag", lambda: "another-build")
        cpu_linear.plan_for(w)
        assert calls == [1, 1] and len(json.loads(cpu_linear._cache_file().read_text())) == 2
    monkeypatch.setenv("SGLANG_SSD_CPU_LINEAR", "fastest")
    with pytest.raises(ValueError, match="'fastest'"):
        cpu_linear.plan_for(w)


# ---- each path against F.linear ------------------------------------------------------------
@pytest.mark.skipif(not cpu_caps.caps().avx2_fma, reason="the CPU lacks AVX2/FMA")
@pytest.mark.parametrize("rows", [1, 2, 3, 4, 5, 6, 7, 9, 13, 16, 33])
@pytest.mark.parametrize("shape", [(5, 7), (64, 40), (130, 1000), (50, 9000)])
def test_rowdot_equals_f_linear(rows, shape):
    assert cpu_rowdot.available(), cpu_rowdot.reason
    g = torch.Generator().manual_seed(rows)
    w, x, b = torch.randn(*shape, generator=g), torch.randn(rows, shape[1], generator=g), torch.randn(shape[0], generator=g)
    tol = 1e-4 * max(1.0, shape[1] / 1000)  # float32 sums of K terms of ~K**0.5 in another order
    torch.testing.assert_close(cpu_rowdot.linear(x, w, b), cpu_rowdot.linear_ref(x, w, b), rtol=1e-4, atol=tol)
    assert cpu_rowdot.linear(x[None], w).shape == (1, rows, shape[0])


@pytest.mark.skipif(not cpu_caps.caps().avx2_fma, reason="the CPU lacks AVX2/FMA")
@pytest.mark.parametrize("shape", [(5, 7), (13, 40), (130, 1000), (1000, 64)])
def test_rowdot_on_several_threads_is_the_same_bit_for_bit(shape):
    """The weight's rows split between torch's threads: every output is the same tile's sum as on
    one thread (shares of 12 rows), and a candidate of the measured choice on any thread count."""
    assert cpu_rowdot.available(), cpu_rowdot.reason
    g = torch.Generator().manual_seed(shape[0])
    before = torch.get_num_threads()
    try:
        for rows in (1, 2, 3, 5, 7, 13):
            w, x = torch.randn(*shape, generator=g), torch.randn(rows, shape[1], generator=g)
            torch.set_num_threads(1)
            one = cpu_rowdot.linear(x, w)
            for threads in (2, 3):
                torch.set_num_threads(threads)
                assert torch.equal(cpu_rowdot.linear(x, w), one), (rows, threads)
        torch.set_num_threads(2)
        assert "rowdot" in cpu_linear._candidates(torch.float32)
        assert "rowdot" not in cpu_linear._candidates(torch.bfloat16)
    finally:
        torch.set_num_threads(before)


@pytest.mark.skipif(not cpu_caps.caps().avx2_fma or not shutil.which("g++"), reason="needs AVX2/FMA and g++")
def test_rowdot_builds_without_openmp(tmp_path, monkeypatch):
    """A compiler that refuses -fopenmp still builds the kernel (its shares then run on one thread):
    available, and equal to F.linear on two threads."""
    cxx = tmp_path / "cxx"
    cxx.write_text('#!/bin/sh\nfor a in "$@"; do [ "$a" = "-fopenmp" ] && exit 1; done\nexec g++ "$@"\n')
    cxx.chmod(0o755)
    monkeypatch.setenv("CXX", str(cxx))
    assert cpu_rowdot.available(), cpu_rowdot.reason
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        w, x = torch.randn(1000, 64), torch.randn(5, 64)
        torch.testing.assert_close(cpu_rowdot.linear(x, w), F.linear(x, w), rtol=1e-4, atol=1e-4)
    finally:
        torch.set_num_threads(before)


def test_rowdot_unavailable_says_why(monkeypatch):
    with cpu_caps.forced({"sse4_2"}):
        assert not cpu_rowdot.available() and "avx2" in cpu_rowdot.reason
        with pytest.raises(RuntimeError, match="avx2"):
            cpu_rowdot.linear(torch.randn(2, 8), torch.randn(4, 8))


@needs_onednn
@pytest.mark.parametrize("path", ["onednn", "rowdot", "torch"])
@pytest.mark.parametrize("with_bias", [True, False])
def test_every_path_serves_every_row_count(path, with_bias, monkeypatch):
    monkeypatch.setenv("SGLANG_SSD_CPU_LINEAR", path)
    w, b = _weights()
    b = b if with_bias else None
    kernel = cpu_linear.LinearKernel(w)
    for rows in (1, 2, 5, 16, 65):
        x = torch.randn(rows, w.shape[1], generator=torch.Generator().manual_seed(rows))
        torch.testing.assert_close(kernel(x, w, b), cpu_linear.linear_ref(x, w, b), rtol=1e-5, atol=1e-5)
    x3 = torch.randn(2, 3, w.shape[1])
    torch.testing.assert_close(kernel(x3, w, b), F.linear(x3, w, b), rtol=1e-5, atol=1e-5)


# ---- a pack replaces the weight ------------------------------------------------------------
@needs_onednn
def test_a_pack_replaces_the_weights_memory_and_follows_new_data(monkeypatch):
    monkeypatch.setenv("SGLANG_SSD_CPU_LINEAR", "onednn")
    w, b = _weights(out_f=256, in_f=128)
    ref_w = w.clone()
    param = torch.nn.Parameter(w, requires_grad=False)
    kernel = cpu_linear.LinearKernel(param)
    assert kernel.release(param) == 256 * 128 * 4
    assert param.shape == (256, 128) and param.stride() == (0, 0)  # one element left: the memory is gone
    assert torch.isnan(param[0, 0])  # a reader that bypasses the kernel sees NaN, not a wrong number
    x = torch.randn(5, 128)
    torch.testing.assert_close(kernel(x, param, b), F.linear(x, ref_w, b), rtol=1e-5, atol=1e-5)
    assert kernel.release(param) == 0  # idempotent
    param.data = ref_w * 2  # a weight update gives the parameter new data: packed again
    torch.testing.assert_close(kernel(x, param, b), F.linear(x, ref_w * 2, b), rtol=1e-5, atol=1e-5)


@needs_onednn
def test_route_linears_releases_only_weights_nothing_else_holds(monkeypatch):
    monkeypatch.setenv("SGLANG_SSD_CPU_LINEAR", "onednn")
    torch.manual_seed(0)
    emb = torch.nn.Embedding(32, 16)
    head = torch.nn.Linear(16, 32, bias=False)
    head.weight = emb.weight  # tied
    body = torch.nn.Linear(16, 16)
    model = torch.nn.ModuleDict({"emb": emb, "body": body, "head": head}).eval()
    x = torch.randn(6, 16)
    with torch.inference_mode():
        ref = head(body(x))
    assert cpu_linear.route_linears(model) == 2
    assert body.weight.stride() == (0, 0) and head.weight.stride() == (16, 1)  # the tied one kept
    with torch.inference_mode():
        torch.testing.assert_close(head(body(x)), ref, rtol=1e-5, atol=1e-5)
    assert torch.equal(emb(torch.tensor([3])), emb.weight[3:4])


# ---- int8 drafts ---------------------------------------------------------------------------
@pytest.mark.skipif(bool(cpu_int8.unavailable()), reason=cpu_int8.unavailable() or "x")
def test_int8_linears_stay_close_to_float32():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(64, 256), torch.nn.ReLU(), torch.nn.Linear(256, 64)).eval()
    x = torch.randn(7, 64)
    with torch.inference_mode():
        ref = model(x)
    assert cpu_int8.quantize_linears(model) == 2
    assert not any(type(m) is torch.nn.Linear for m in model.modules())
    with torch.inference_mode():
        out = model(x)
    assert out.shape == ref.shape and (out - ref).abs().max() < 0.05 * ref.abs().max()
    assert not torch.equal(out, ref)  # really quantized


# ---- the SGLang hooks ----------------------------------------------------------------------
class _Layer(torch.nn.Module):
    def __init__(self, w, b, method=None):
        super().__init__()
        self.weight = torch.nn.Parameter(w, requires_grad=False)
        self.bias = torch.nn.Parameter(b, requires_grad=False)
        if method is not None:
            self.quant_method = method


class ParallelLMHead(_Layer):  # the hook recognises SGLang's lm_head by its class name
    pass


def _original_fails(*args, **kwargs):
    raise AssertionError("the original ran")


@needs_onednn
def test_prepare_model_routes_linears_and_a_plain_untied_lm_head(monkeypatch):
    from sglang.srt.layers.quantization.unquant import UnquantizedLinearMethod

    monkeypatch.setenv("SGLANG_SSD_CPU_LINEAR", "onednn")
    w, b = _weights()
    hw, _ = _weights(out_f=100, seed=1)
    model = torch.nn.Module()
    model.lin = _Layer(w.clone(), b, UnquantizedLinearMethod())
    model.amx = _Layer(w.clone(), b, UnquantizedLinearMethod())
    model.amx.use_intel_amx_backend = True
    model.head = ParallelLMHead(hw.clone(), torch.zeros(100))
    model.logits_processor = types.SimpleNamespace(use_fp32_lm_head=False, rl_on_policy_target=None)
    done = patch.prepare_model(model)
    assert done["layers"] == 2 and done["packed"] == 2 and done["freed_mb"] > 0
    assert not hasattr(model.amx, patch._ATTR) and model.amx.weight.stride() == (w.shape[1], 1)
    x = torch.randn(5, w.shape[1])
    with torch.inference_mode():
        out = patch._apply(_original_fails, object(), model.lin, x, model.lin.bias)
        torch.testing.assert_close(out, F.linear(x, w, b), rtol=1e-5, atol=1e-5)
        head = patch._compute_lm_head(_original_fails, model.logits_processor, x, model.head)
        torch.testing.assert_close(head, x @ hw.T, rtol=1e-5, atol=1e-5)
    sentinel = torch.zeros(1)
    orig = lambda *a, **k: sentinel  # noqa: E731
    assert patch._compute_lm_head(orig, model.logits_processor, x, model.head, torch.zeros(100)) is sentinel
    # an fp32-upcast lm_head is the original's to compute, and is never released
    model2 = torch.nn.Module()
    model2.head = ParallelLMHead(hw.clone(), torch.zeros(100))
    model2.logits_processor = types.SimpleNamespace(use_fp32_lm_head=True, rl_on_policy_target=None)
    assert patch.prepare_model(model2)["layers"] == 0 and model2.head.weight.stride() == (hw.shape[1], 1)


def test_cpu_engine_registers_the_hooks():
    from sglang.srt.plugins.hook_registry import HookRegistry

    from sglang_ssd.patches import cpu_engine

    cpu_engine.apply()
    targets = set(HookRegistry._hooks)
    assert {"sglang.srt.layers.quantization.unquant.UnquantizedLinearMethod.apply",
            "sglang.srt.model_executor.model_runner.ModelRunner.load_model",
            "sglang.srt.layers.logits_processor.LogitsProcessor._compute_lm_head"} <= targets


# ---- the Hugging Face draft engine ---------------------------------------------------------
@pytest.mark.parametrize("dtype", ["float32", "bfloat16", "int8"])
def test_draft_model_routes_its_linears_and_keeps_its_logits(models, monkeypatch, dtype):
    """The draft engine on CPU gives every linear (lm_head included) its measured kernel, or int8
    ones; its logits for a 6-row forward match the model on torch's own F.linear in float32
    (int8: the same argmax on most rows: a draft's precision changes acceptance, never outputs)."""
    if dtype == "int8" and cpu_int8.unavailable():
        pytest.skip(cpu_int8.unavailable())
    from sglang_ssd.draft_batch import run as causal_run
    from sglang_ssd.draft_batch import slot_tensor
    from sglang_ssd.draft_model import DraftModel

    def run(m):
        return m.forward([causal_run(slot_tensor([]), [1, 2, 3, 4, 5, 6], 0, list(range(6)))])

    routed = DraftModel(str(models["target"]), "cpu", dtype, 64)
    lins = [m for m in routed.model.modules() if "Linear" in type(m).__name__]
    assert lins
    if dtype == "int8":
        assert all(type(m) is not torch.nn.Linear for m in lins) and routed.dtype == torch.float32
    else:
        assert all(isinstance(m.forward, cpu_linear._Forward) for m in lins)
    monkeypatch.setenv("SGLANG_SSD_CPU_LINEAR", "torch")
    plain = DraftModel(str(models["target"]), "cpu", "float32", 64)
    got, ref = run(routed), run(plain)
    if dtype == "float32":
        torch.testing.assert_close(got, ref, rtol=1e-4, atol=1e-4)
    else:
        assert (got.argmax(-1) == ref.argmax(-1)).float().mean() >= 0.5
        assert (got - ref).abs().max() < 0.1 * ref.abs().max() + 0.5


def test_cache_sizes_are_read_from_sysfs(tmp_path):
    """The largest cache, from sysfs's size files ('32768K', '2M', '512'), sizes the buffer that
    empties the caches between timed calls; an unreadable tree gives 32 MiB; bad text is named."""
    assert cpu_linear.parse_cache_size("32768K\n") == 32 << 20
    assert cpu_linear.parse_cache_size("2M") == 2 << 20 and cpu_linear.parse_cache_size("512") == 512
    with pytest.raises(ValueError, match="'lots'"):
        cpu_linear.parse_cache_size("lots")
    for i, size in enumerate(["48K", "1024K", "32768K", "garbage"]):
        (tmp_path / f"index{i}").mkdir()
        (tmp_path / f"index{i}" / "size").write_text(size + "\n")
    assert cpu_linear.largest_cache_bytes(tmp_path) == 32 << 20
    (tmp_path / "index4").mkdir()
    (tmp_path / "index4" / "size").write_text("96M\n")
    assert cpu_linear.largest_cache_bytes(tmp_path) == 96 << 20
    assert cpu_linear.largest_cache_bytes(tmp_path / "missing") == 32 << 20


def test_every_timed_call_of_a_measurement_starts_with_cold_caches(monkeypatch):
    """A weight that fits in L3 timed over and over would be timed from cache, which no forward
    through a model larger than the cache sees: the caches are emptied before every timed call
    (not before the untimed warm-up), and the buffer that does it is twice the largest cache."""
    events = []
    monkeypatch.setattr(cpu_linear.ColdCaches, "__call__", lambda self: events.append("cold"))
    real_run = cpu_linear._run
    monkeypatch.setattr(cpu_linear, "_run", lambda *a: events.append("run") or real_run(*a))
    w = torch.randn(24, 16)
    reps = 3
    times = cpu_linear.measure(w, None, ["torch"], reps=reps)
    assert len(times["torch"]) == len(cpu_linear.ROWS)
    per_row = ["run"] + ["cold", "run"] * reps  # the warm-up, then each timed call after a flush
    assert events == per_row * len(cpu_linear.ROWS)
    monkeypatch.undo()
    assert cpu_linear.ColdCaches().buf.numel() * 4 == min(2 * cpu_linear.largest_cache_bytes(), 512 << 20)
