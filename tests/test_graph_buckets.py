"""CUDA-graph choices, on the CPU: draft forward buckets (graph_buckets.py), verify widths
(verify_widths.py), the padding a replayed draft forward runs with (draft_graphs.py: the padded
forward's real rows equal the eager forward's, logits and KV), and the eager fallback off CUDA."""

from __future__ import annotations

import logging

import pytest
import torch

from sglang_ssd import graph_buckets as gb
from sglang_ssd import verify_widths as vw


def test_request_and_token_buckets():
    assert gb.request_buckets(1) == [1]
    assert gb.request_buckets(5) == [1, 2, 4, 8]
    assert gb.request_buckets(8) == [1, 2, 4, 8]
    assert gb.token_buckets(2, branches=(1, 3), max_tokens=100) == [1, 2, 3, 6]
    # products past the cap: the cap itself is the last bucket
    assert gb.token_buckets(4, branches=(1, 24), max_tokens=64) == [1, 2, 4, 24, 48, 64]
    with pytest.raises(ValueError):
        gb.request_buckets(0)


def test_tree_step_of_requests_times_branches_pads_only_requests():
    sizes = gb.token_buckets(64, max_tokens=2048)
    for requests, branches in [(1, 12), (3, 12), (8, 24), (5, 6), (64, 24)]:
        n = gb.tree_step_tokens(requests, branches)
        padded = gb.smallest_at_least(n, sizes)
        want_requests = gb.smallest_at_least(requests, gb.request_buckets(64))
        assert padded <= want_requests * branches  # never worse than padding the requests
        assert padded >= n
    assert gb.smallest_at_least(7, [1, 2, 4, 8]) == 8
    assert gb.smallest_at_least(9, [1, 2, 4, 8]) is None


def test_read_buckets_are_powers_of_two_capped_by_the_pool():
    assert gb.read_bucket(1, 65536) == 64
    assert gb.read_bucket(65, 65536) == 128
    assert gb.read_bucket(1000, 65536) == 1024
    assert gb.read_bucket(3000, 3000) == 3000  # the pool's size is the last bucket
    assert gb.read_bucket(3001, 3000) is None


def test_choose_and_its_fallback_reasons():
    sizes = [1, 2, 4, 8]
    assert gb.choose(3, 100, sizes, 4096) == gb.Choice(gb.Bucket(4, 128))
    assert gb.choose(9, 100, sizes, 4096) == gb.Choice(None, gb.TOO_MANY_TOKENS)
    assert gb.choose(3, 5000, sizes, 4096) == gb.Choice(None, gb.TOO_WIDE)
    assert gb.choose(8, 4096, sizes, 4096, max_mask=8 * 2048) == gb.Choice(None, gb.TOO_LARGE)


def test_graph_stats_count_and_log_sparsely(caplog):
    st = gb.GraphStats(name="draft")
    with caplog.at_level(logging.INFO, logger="sglang_ssd.graph_buckets"):
        for _ in range(5):
            st.fell_back(gb.TOO_WIDE)
        st.replayed(3, 4)
    assert st.as_dict() == {"replays": 1, "captures": 0, "eager": {gb.TOO_WIDE: 5}, "padded_tokens": 1}
    logged = [r for r in caplog.records if gb.TOO_WIDE in r.getMessage()]
    assert [r.getMessage().split(", ")[-1] for r in logged] == ["1 time(s)", "2 time(s)", "4 time(s)"]


def test_capture_widths_cover_every_width_the_planners_choose():
    assert vw.capture_widths(4, auto_k=True) == [1, 2, 3, 4, 5]
    assert vw.capture_widths(4, auto_k=True, plain=False) == [2, 3, 4, 5]
    assert vw.capture_widths(8, auto_k=False, k_fixed=3) == [1, 4]
    assert vw.capture_widths(4, auto_k=False) == [1, 5]
    assert vw.graph_count([1, 4], 8) == 8
    with pytest.raises(ValueError):
        vw.capture_widths(4, auto_k=False, k_fixed=5)


def test_choose_verify_uses_the_largest_captured_depth_below():
    st = gb.GraphStats(name="verify")
    widths = [1, 3, 5]  # K = 0 (plain), 2, 4
    assert vw.choose_verify(4, 3, widths, 8, st) == vw.VerifyChoice(4, 4)
    assert vw.choose_verify(3, 3, widths, 8, st) == vw.VerifyChoice(2, 4)  # no K=3 graph: K=2
    assert vw.choose_verify(0, 8, widths, 8, st) == vw.VerifyChoice(0, 8)  # plain round
    c = vw.choose_verify(1, 2, widths, 8, st)  # never demoted to a plain round
    assert c == vw.VerifyChoice(1, None, vw.NO_WIDTH) and not c.graphed
    assert vw.choose_verify(4, 9, widths, 8, st) == vw.VerifyChoice(4, None, vw.TOO_MANY_REQUESTS)
    assert st.replays == 3 and st.eager == {vw.NO_WIDTH: 1, vw.TOO_MANY_REQUESTS: 1}
    assert st.padded_tokens == (4 - 3) * 5 + (4 - 3) * 3 + 0
    assert vw.restrict_depths([1, 2, 3, 4], widths) == [2, 4]
    assert vw.restrict_depths([1, 3], widths) == [1, 3]  # nothing captured: keep the choice


def _groups():
    from sglang_ssd.draft_batch import Group, run

    pre = torch.tensor([2, 5], dtype=torch.long)
    return [run(pre, [7, 8], 2, [10, 11]),  # a run: causal over its own writes
            Group(torch.tensor([3], dtype=torch.long), [9, 6], [4, 4], [12, 13], own=[[12], [13, 20]])]


def test_pad_groups_layout():
    from sglang_ssd.draft_graphs import pad_groups, plans_of, read_width

    groups = _groups()
    plans = plans_of(groups)
    assert read_width(plans) == 4 + 4  # [2, 5, 10, 11] and [3, 12, 13, 20]
    vals = pad_groups(groups, plans, gb.Bucket(6, 16), 99)
    assert vals["input_ids"].tolist() == [[7, 8, 9, 6, 0, 0]]
    assert vals["position_ids"].tolist() == [[2, 3, 4, 4, 0, 0]]
    assert vals["write_slots"].tolist() == [10, 11, 12, 13, 99, 99]
    assert vals["read_slots"].tolist() == [2, 5, 10, 11, 3, 12, 13, 20] + [99] * 8
    m = vals["mask"][0, 0].int().tolist()
    assert m[0] == [1, 1, 1, 0, 0, 0, 0, 0] + [0] * 8
    assert m[1] == [1, 1, 1, 1, 0, 0, 0, 0] + [0] * 8
    assert m[2] == [0, 0, 0, 0, 1, 1, 0, 0] + [0] * 8
    assert m[3] == [0, 0, 0, 0, 1, 0, 1, 1] + [0] * 8
    assert m[4] == m[5] == [0] * 8 + [1] + [0] * 7  # padding rows: the scratch slot only
    with pytest.raises(ValueError):  # no column left for the padding rows' scratch slot
        pad_groups(groups, plans, gb.Bucket(6, 8), 99)
    with pytest.raises(ValueError):  # the scratch slot must be no real token's
        pad_groups(groups, plans, gb.Bucket(6, 16), 20)


@pytest.fixture(scope="module")
def tiny_draft(tmp_path_factory):
    from sglang_ssd.testing.tiny_models import make_model, train_tokenizer

    root = tmp_path_factory.mktemp("graph_models")
    train_tokenizer(root / "tok")
    return make_model(root / "m", root / "tok", seed=5, hidden=64, layers=2, heads=4, kv_heads=2)


def _prefix(model, n=6):
    from sglang_ssd.draft_batch import run, slot_tensor

    slots = model.pool.alloc(n)
    model.forward([run(slot_tensor([]), [5 + i for i in range(n)], 0, slots)], logits=False)
    return slots


def test_padded_forward_equals_the_eager_forward(tiny_draft):
    """What a replayed graph computes, run eagerly on the CPU: the real rows' logits and KV are
    the grouped eager forward's, and nothing is written anywhere else but the scratch slot."""
    from sglang_ssd.draft_batch import Group, run, slot_tensor
    from sglang_ssd.draft_graphs import pad_groups, plans_of, slot_forward
    from sglang_ssd.draft_model import DraftModel

    a = DraftModel(str(tiny_draft), "cpu", "float32", 256)
    b = DraftModel(str(tiny_draft), "cpu", "float32", 256)
    pa, pb = _prefix(a), _prefix(b)
    assert pa == pb
    new = a.pool.alloc(5)
    assert b.pool.alloc(5) == new
    scratch = b.pool.alloc(1)[0]
    pre = slot_tensor(pa)
    # a glue run of two tokens, then two branches after it, one of them two deep
    groups = [run(pre, [40, 41], 6, new[:2]),
              Group(slot_tensor(pa[:4]), [42, 43, 44], [6, 6, 7], new[2:], own=[[new[2]], [new[3]], [new[2], new[4]]])]
    want = a.forward(groups)
    plans = plans_of(groups)
    vals = pad_groups(groups, plans, gb.Bucket(8, 64), scratch)
    with torch.inference_mode():
        got = slot_forward(b)(**vals)
    assert b._io.read_slots is None  # the eager path's layers return the whole pool again
    assert got.shape == (8, want.shape[1])
    assert torch.allclose(got[:5], want, rtol=1e-5, atol=1e-5)
    assert torch.equal(got[:5].argmax(-1), want.argmax(-1))
    touched = [s for s in range(256) if s != scratch]
    for la, lb in zip(a.cache.layers, b.cache.layers):
        assert torch.allclose(la.keys[:, :, touched], lb.keys[:, :, touched], rtol=1e-4, atol=1e-5)
        assert torch.allclose(la.values[:, :, touched], lb.values[:, :, touched], rtol=1e-4, atol=1e-5)
    assert float(lb.keys[:, :, scratch].abs().sum()) > 0  # the padding rows did write there


def test_install_is_a_no_op_off_cuda_and_graph_set_runs_eagerly(tiny_draft):
    from sglang_ssd.cuda_graphs import GraphSet
    from sglang_ssd.draft_graphs import install
    from sglang_ssd.draft_model import DraftModel

    m = DraftModel(str(tiny_draft), "cpu", "float32", 64)
    fwd = m.forward
    assert install(m) is None and m.forward == fwd and m.pool.num_used == 0
    gs = GraphSet(lambda **kw: None, lambda key: {}, "cpu")
    assert gs.get(gb.Bucket(1, 64)) == (None, gb.NOT_CUDA)
    gs = GraphSet(lambda **kw: None, lambda key: {}, "cpu", enabled=False)
    assert gs.get(gb.Bucket(1, 64)) == (None, gb.DISABLED)


def test_verify_graphs_of_sglang_s_single_width_capture():
    """SGLang captures one verify width (K+1) at its capture batch sizes: K keeps to that depth,
    plain rounds and batches past the largest captured size run eagerly, counted by reason."""
    vg = vw.VerifyGraphs([5], [1, 2, 4, 8, 12, 16, 24])
    assert vg.depths(8) == [4] and vg.depths(3) == [1, 2, 3]  # nothing captured within 1..3: no restriction
    assert vg.choose(4, 10) == vw.VerifyChoice(4, 12)  # padded to the captured 12, not a power of two
    assert vg.choose(6, 3) == vw.VerifyChoice(4, 4)
    assert vg.choose(0, 1) == vw.VerifyChoice(0, None, vw.NO_WIDTH)
    assert vg.choose(4, 25) == vw.VerifyChoice(4, None, vw.TOO_MANY_REQUESTS)
    assert vg.stats.as_dict() == {"replays": 2, "captures": 0, "padded_tokens": 2 * 5 + 1 * 5,
                                  "eager": {vw.NO_WIDTH: 1, vw.TOO_MANY_REQUESTS: 1}}
    with pytest.raises(ValueError):
        vw.VerifyGraphs([], [1])


def test_captured_verify_reads_the_target_s_graph_runner():
    from types import SimpleNamespace

    pytest.importorskip("sglang", reason="reads SGLang's graph runner (the GPU machine has no SGLang)")

    from sglang.srt.model_executor.forward_batch_info import ForwardMode

    from sglang_ssd.target_verify import captured_verify

    eager = object()
    runner = SimpleNamespace(captured_req_width=5, capture_bs=[1, 2, 4], capture_forward_mode=ForwardMode.TARGET_VERIFY)
    assert captured_verify(SimpleNamespace(decode_cuda_graph_runner=runner, eager_runner=eager)) == ([5], [1, 2, 4])
    assert captured_verify(SimpleNamespace(decode_cuda_graph_runner=eager, eager_runner=eager)) is None  # CPU / no graphs
    assert captured_verify(SimpleNamespace(decode_cuda_graph_runner=None)) is None
    decode = SimpleNamespace(captured_req_width=1, capture_bs=[1], capture_forward_mode=ForwardMode.DECODE)
    assert captured_verify(SimpleNamespace(decode_cuda_graph_runner=decode, eager_runner=eager)) is None


def test_automatic_k_reserve_on_a_gpu_is_the_graph_depth():
    pytest.importorskip("sglang", reason="SGLang's algorithm registry (the GPU machine has no SGLang)")
    from sglang_ssd.auto_k import AUTO_MAX_K
    from sglang_ssd.spec_algo import GPU_GRAPH_K, auto_k_max

    assert auto_k_max("cuda") == auto_k_max("cuda:1") == GPU_GRAPH_K == 4
    assert auto_k_max("cpu") == auto_k_max(None) == AUTO_MAX_K


def test_plans_and_slot_tensors_are_host_tensors_under_any_default_device():
    """Slot lists and masks are built on the CPU and moved to the model's device once: under a
    meta default device (a tensor made without a device is meta) the plans equal the ordinary ones."""
    from sglang_ssd.draft_batch import Group, SlotMirror, run, slot_tensor
    from sglang_ssd.slot_attention import build_plan

    def plans():
        m = SlotMirror()
        pre = m.of([2, 5, 6])
        groups = [run(pre, [7, 8], 3, [10, 11]), run(slot_tensor([]), [1], 0, [12]),
                  Group(slot_tensor([3]), [9, 6], [4, 4], [13, 14], own=[[13], [14, 20]])]
        return [(p.start, p.end, p.read, p.mask) for p in build_plan(groups, torch.device("cpu"))]

    want = plans()
    torch.set_default_device("meta")
    try:
        got = plans()
    finally:
        torch.set_default_device(None)
    assert len(got) == len(want) == 3
    for g, w in zip(got, want):
        assert g[:2] == w[:2] and g[2].device.type == "cpu" and torch.equal(g[2], w[2])
        assert (g[3] is None) == (w[3] is None) and (g[3] is None or torch.equal(g[3], w[3]))
    assert want[2][3] is not None and want[0][3] is not None
