"""CPU engine: the pure-torch sgl_kernel stand-in, the TARGET_VERIFY attention patch, and real
SGLang servers started through sglang_ssd.cpu_serve (greedy tokens equal Hugging Face's)."""

from __future__ import annotations


import pytest
import torch

from conftest import SERVER_ARGS, hf_greedy
from sglang_ssd.patches import torch_verify_attention as tva
from sglang_ssd.patches.cpu_standin import sgl_kernel as sk
from sglang_ssd.testing.server import CPUServer

OPS = torch.ops.sgl_kernel


# ---------------------------------------------------------------- (a) verify attention


def _naive_attention(q, k, v, allowed, scaling):
    """Per query, per head: softmax over the allowed keys, in float64."""
    lq, hq, _ = q.shape
    group = hq // k.shape[1]
    out = torch.zeros(lq, hq, v.shape[-1], dtype=torch.float64)
    for i in range(lq):
        keys = [j for j in range(k.shape[0]) if allowed[i, j]]
        for h in range(hq):
            kv = h // group
            s = torch.stack([(q[i, h].double() * k[j, kv].double()).sum() * scaling for j in keys])
            w = torch.softmax(s, 0)
            out[i, h] = sum(w[t] * v[j, kv].double() for t, j in enumerate(keys))
    return out


# a 5-node tree: 0 is the root; 1, 2 children of 0; 3 child of 1; 4 child of 2
TREE = torch.tensor(
    [[1, 0, 0, 0, 0], [1, 1, 0, 0, 0], [1, 0, 1, 0, 0], [1, 1, 0, 1, 0], [1, 0, 1, 0, 1]], dtype=torch.bool
)


def _pool_setup(seq_lens, n, hq=4, hkv=2, d=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    bs = len(seq_lens)
    slots = 64
    k_cache = torch.randn(slots, hkv, d, generator=g)
    v_cache = torch.randn(slots, hkv, d, generator=g)
    req_to_token = torch.zeros(8, 32, dtype=torch.int32)
    perm = torch.randperm(slots, generator=g)
    used = 0
    req_pool_indices = torch.tensor([5, 2, 7][:bs])
    for i, s in enumerate(seq_lens):
        req_to_token[req_pool_indices[i], : s + n] = perm[used : used + s + n].to(torch.int32)
        used += s + n
    q = torch.randn(bs * n, hq, d, generator=g)
    return q, k_cache, v_cache, req_to_token, req_pool_indices


def _reference(q, k_cache, v_cache, req_to_token, req_pool_indices, seq_lens, n, masks, scaling):
    outs = []
    for i, s in enumerate(seq_lens):
        slots = req_to_token[req_pool_indices[i], : s + n].long()
        tail = torch.ones(n, n, dtype=torch.bool).tril() if masks is None else masks[i]
        allowed = torch.cat([torch.ones(n, s, dtype=torch.bool), tail], 1)
        outs.append(_naive_attention(q[i * n : (i + 1) * n], k_cache[slots], v_cache[slots], allowed, scaling))
    return torch.cat(outs)


def test_attend_matches_naive_gqa():
    g = torch.Generator().manual_seed(1)
    q, k, v = torch.randn(3, 4, 8, generator=g), torch.randn(6, 2, 8, generator=g), torch.randn(6, 2, 8, generator=g)
    allowed = torch.rand(3, 6, generator=g) > 0.4
    allowed[:, 0] = True
    got = tva.attend(q, k, v, allowed, 0.3)
    torch.testing.assert_close(got.double(), _naive_attention(q, k, v, allowed, 0.3), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("hq,hkv", [(12, 2), (14, 2), (4, 4), (6, 1)])
def test_attend_folds_each_kv_heads_query_heads_exactly(hq, hkv):
    """Qwen2.5-1.5B's 12/2 and 0.5B's 14/2 heads, plain MHA and MQA: query head h reads KV head
    h // (hq // hkv), each under its own row of an irregular mask."""
    g = torch.Generator().manual_seed(hq * 10 + hkv)
    q = torch.randn(5, hq, 16, generator=g)
    k, v = torch.randn(40, hkv, 16, generator=g), torch.randn(40, hkv, 16, generator=g)
    allowed = torch.rand(5, 40, generator=g) > 0.5
    allowed[:, 3] = True
    got = tva.attend(q, k, v, allowed, 0.25)
    torch.testing.assert_close(got.double(), _naive_attention(q, k, v, allowed, 0.25), rtol=1e-5, atol=1e-5)
    assert got.shape == (5, hq, 16)


def test_verify_attention_chain():
    seq_lens, n = [3, 7], 4
    q, kc, vc, r2t, rpi = _pool_setup(seq_lens, n)
    got = tva.verify_attention(q, kc, vc, r2t, rpi, torch.tensor(seq_lens), n, None, 0.25)
    ref = _reference(q, kc, vc, r2t, rpi, seq_lens, n, None, 0.25)
    torch.testing.assert_close(got.double(), ref, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("layout", ["qlen_only", "full_mask"])
def test_verify_attention_tree(layout):
    seq_lens, n = [2, 6, 1], 5
    q, kc, vc, r2t, rpi = _pool_setup(seq_lens, n, seed=3)
    masks = [TREE, torch.ones(n, n, dtype=torch.bool).tril(), TREE]
    if layout == "qlen_only":
        flat = torch.stack(masks).flatten()
    else:  # per request [n, seq_len + n], prefix columns True
        flat = torch.cat([torch.cat([torch.ones(n, s, dtype=torch.bool), m], 1).flatten() for s, m in zip(seq_lens, masks)])
    got = tva.verify_attention(q, kc, vc, r2t, rpi, torch.tensor(seq_lens), n, flat, 0.25)
    ref = _reference(q, kc, vc, r2t, rpi, seq_lens, n, masks, 0.25)
    torch.testing.assert_close(got.double(), ref, rtol=1e-5, atol=1e-5)


def test_draft_masks_rejects_bad_size():
    with pytest.raises(ValueError):
        tva.draft_masks(torch.ones(7, dtype=torch.bool), [2, 3], 2)


# ---------------------------------------------------------------- (b) stand-in ops


def test_standin_exports_and_no_amx_marker():
    for name in sk.__all__:
        assert callable(getattr(sk, name))
    # SGLang would switch to Intel AMX kernels if this op existed (srt/utils/common.py)
    assert not hasattr(OPS, "convert_weight_packed")


def test_assign_req_to_token_pool_and_extend_cache_locs():
    r2t = torch.full((4, 10), -1, dtype=torch.int32)
    rpi = torch.tensor([2, 0])
    start, end = torch.tensor([1, 4]), torch.tensor([4, 6])
    out = torch.tensor([10, 11, 12, 20, 21], dtype=torch.int64)
    OPS.assign_req_to_token_pool_cpu(rpi, r2t, start, end, out, 10)
    assert r2t[2].tolist() == [-1, 10, 11, 12] + [-1] * 6
    assert r2t[0].tolist() == [-1] * 4 + [20, 21] + [-1] * 4
    back = torch.zeros(5, dtype=torch.int64)
    OPS.assign_extend_cache_locs_cpu(rpi, r2t, start, end, back, 10)
    assert back.tolist() == out.tolist()


def test_assign_draft_cache_locs_contiguous():
    r2t = torch.arange(40, dtype=torch.int32).view(4, 10)
    out = torch.zeros(2 * 2 * 3, dtype=torch.int64)
    OPS.assign_draft_cache_locs_contiguous_cpu(torch.tensor([3, 1]), r2t, torch.tensor([2, 4]), out, 10, 2, 3)
    assert out.tolist() == list(range(32, 38)) + list(range(14, 20))


def test_fill_accept_out_cache_loc():
    accept_index = torch.tensor([[0, 2, -1], [4, -1, -1], [8, 9, 11]], dtype=torch.int32)
    out_cache_loc = torch.arange(100, 112)
    dst = torch.zeros(9, dtype=torch.int64)
    OPS.fill_accept_out_cache_loc_cpu(accept_index, out_cache_loc, dst)
    assert dst.tolist() == [100, 102, 104, 108, 109, 111, 0, 0, 0]


def test_fill_bonus_tokens():
    accept_tokens = torch.tensor([[5, 6, 7], [8, 9, 10]])
    bonus = torch.zeros(2, dtype=torch.int32)
    OPS.fill_bonus_tokens_cpu(accept_tokens, torch.tensor([2, 3], dtype=torch.int32), bonus, 3)
    assert bonus.tolist() == [6, 10]


def test_copy_all_layer_kv_cache_in_place_swap():
    bufs = [torch.randn(16, 2, 4), torch.randn(16, 3, 2).to(torch.float64)]
    ref = [b.clone() for b in bufs]
    tgt, src = torch.tensor([1, 3, 9]), torch.tensor([3, 1, 15])  # 1<->3 swap reads before writing
    for r in ref:
        r[tgt] = r[src].clone()
    ptrs = torch.tensor([b.data_ptr() for b in bufs], dtype=torch.uint64 if hasattr(torch, "uint64") else torch.int64)
    strides = torch.tensor([b[0].numel() * b.element_size() for b in bufs], dtype=torch.int64)
    OPS.copy_all_layer_kv_cache_cpu(ptrs.to(torch.int64), strides, tgt, src)
    for b, r in zip(bufs, ref):
        assert torch.equal(b, r)


def _retrieve_buffers(bs, n):
    buf = torch.full((3, bs, n), -1, dtype=torch.long)
    return buf[0], buf[1], buf[2]


def test_build_tree_chain_and_tree():
    # chain: topk=1, three steps, N=4
    n = 4
    seq = torch.tensor([5])
    mask = torch.ones(n * n, dtype=torch.bool)
    pos = torch.empty(n, dtype=torch.long)
    ri, nt, ns = _retrieve_buffers(1, n)
    OPS.build_tree_kernel_efficient_cpu(torch.tensor([[-1, 0, 1]]), torch.tensor([[0, 1, 2]]), seq, mask, pos, ri, nt, ns, 1, 3, n, 1)
    assert torch.equal(mask.view(n, n), torch.ones(n, n, dtype=torch.bool).tril())
    assert pos.tolist() == [5, 6, 7, 8] and ri.tolist() == [[0, 1, 2, 3]]
    assert nt.tolist() == [[1, 2, 3, -1]] and ns.tolist() == [[-1, -1, -1, -1]]

    # tree: topk=2, depth 2; tokens 0,1 are the root's children, 2,3 children of token 0
    # (parent_list[1] = 0), 4,5 of token 1; the selected nodes are tokens 0, 1, 2
    mask = torch.ones(2 * n * n, dtype=torch.bool)
    pos = torch.empty(2 * n, dtype=torch.long)
    ri, nt, ns = _retrieve_buffers(2, n)
    sel = torch.tensor([[0, 1, 2], [0, 1, 4]])
    OPS.build_tree_kernel_efficient_cpu(torch.tensor([[-1, 0, 1]] * 2), sel, torch.tensor([3, 7]), mask, pos, ri, nt, ns, 2, 2, n, 1)
    m = mask.view(2, n, n).int().tolist()
    assert m[0] == [[1, 0, 0, 0], [1, 1, 0, 0], [1, 0, 1, 0], [1, 1, 0, 1]]
    assert m[1] == [[1, 0, 0, 0], [1, 1, 0, 0], [1, 0, 1, 0], [1, 0, 1, 1]]
    assert pos.tolist() == [3, 4, 4, 5, 7, 8, 8, 9]
    assert nt.tolist() == [[1, 3, -1, -1], [1, -1, 3, -1]]
    assert ns.tolist() == [[-1, 2, -1, -1], [-1, 2, -1, -1]]
    assert ri.tolist() == [[0, 1, 2, 3], [4, 5, 6, 7]]

    # the same tree in FULL_MASK layout: prefix columns untouched, tree block identical
    full = torch.ones(3 * n + n * n + 7 * n + n * n, dtype=torch.bool)
    OPS.build_tree_kernel_efficient_cpu(torch.tensor([[-1, 0, 1]] * 2), sel, torch.tensor([3, 7]), full, pos, *_retrieve_buffers(2, n), 2, 2, n, 0)
    rows0 = full[: n * (3 + n)].view(n, 3 + n)
    rows1 = full[n * (3 + n) :].view(n, 7 + n)
    assert rows0[:, :3].all() and rows1[:, :7].all()
    assert rows0[:, 3:].int().tolist() == m[0] and rows1[:, 7:].int().tolist() == m[1]


def test_reconstruct_indices_from_tree_mask():
    n, seq = 5, torch.tensor([2, 9])
    masks = torch.stack([TREE, torch.ones(n, n, dtype=torch.bool).tril()])
    pos = torch.empty(2 * n, dtype=torch.long)
    ri, nt, ns = (torch.empty(2, n, dtype=torch.long) for _ in range(3))
    sk.reconstruct_indices_from_tree_mask(masks.flatten(), seq, pos, ri, nt, ns, 2, n)
    assert pos.tolist() == [2, 3, 3, 4, 4] + [9, 10, 11, 12, 13]
    assert ri.tolist() == [list(range(5)), list(range(5, 10))]
    assert nt.tolist() == [[1, 3, 4, -1, -1], [1, 2, 3, 4, -1]]
    assert ns.tolist() == [[-1, 2, -1, -1, -1], [-1] * 5]


def test_verify_tree_greedy():
    n = 4
    # request 0: the tree of test_build_tree (node 1, 2 children of root, 3 child of 1);
    # request 1: a chain 0-1-2-3.
    cand = torch.tensor([[50, 11, 12, 13], [60, 21, 22, 23]])
    ri = torch.tensor([[0, 1, 2, 3], [4, 5, 6, 7]])
    nt = torch.tensor([[1, 3, -1, -1], [1, 2, 3, -1]])
    ns = torch.tensor([[-1, 2, -1, -1], [-1, -1, -1, -1]])
    # target greedy token at each node: root of req 0 predicts 12 (the second child), node 2
    # predicts 99 (no child) -> 1 accepted; req 1 accepts the whole chain, bonus 77.
    target = torch.tensor([[12, 0, 99, 0], [21, 22, 23, 77]])
    predicts = torch.zeros(8, dtype=torch.int32)
    accept_index = torch.full((2, n), -1, dtype=torch.int32)
    num = torch.empty(2, dtype=torch.int32)
    sk.verify_tree_greedy_cpu(
        predicts=predicts, accept_index=accept_index, accept_token_num=num, candidates=cand,
        retrive_index=ri, retrive_next_token=nt, retrive_next_sibling=ns, target_predict=target,
    )
    assert num.tolist() == [1, 3]
    assert accept_index.tolist() == [[0, 2, -1, -1], [4, 5, 6, 7]]
    assert predicts.tolist() == [12, 0, 99, 0, 21, 22, 23, 77]


# ---------------------------------------------------------------- (c) real servers


PROMPTS = ["The quick brown fox", "def add(a, b):\n", "Numbers: 0 1 2 3 4 5 6 7", "Once upon a time there was a small model"]
NEW_TOKENS = 24


@pytest.fixture(scope="module")
def hf_reference(models, hf_target):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(models["target"]))
    return [(tok(p).input_ids, hf_greedy(hf_target, tok(p).input_ids, NEW_TOKENS)) for p in PROMPTS]


SPEC_CONFIGS = {
    "plain": [],
    # NGRAM drafts from a corpus of earlier tokens: its verify forwards are TARGET_VERIFY with a
    # QLEN_ONLY tree mask through our torch_native patch and the stand-in spec ops.
    "ngram": ["--speculative-algorithm", "NGRAM", "--speculative-num-draft-tokens", "4"],
}


@pytest.mark.parametrize("config", list(SPEC_CONFIGS))
def test_cpu_server_greedy_matches_hf(config, models, hf_reference, log_dir):
    server = CPUServer(models["target"], SERVER_ARGS + SPEC_CONFIGS[config], log_path=str(log_dir / f"cpu_{config}.log"))
    params = {"temperature": 0, "max_new_tokens": NEW_TOKENS, "ignore_eos": True}
    try:
        for ids, ref in hf_reference:
            assert server.generate(ids, params)["output_ids"] == ref
        if config == "ngram":
            # the corpus now holds these continuations: the second pass must accept drafts
            # (exercising accept/KV-move paths) and still equal HF
            for ids, ref in hf_reference:
                out = server.generate(ids, params)
                assert out["output_ids"] == ref
                assert out["meta_info"]["spec_accept_length"] > 2.0
    finally:
        server.stop()
