"""Speculative-tree kernels of the CPU engine, in plain torch / Python loops.

SGLang 0.5.23 calls these on CPU from sglang/kernels/ops/speculative/spec_tree.py (EAGLE tree
build, greedy tree verification) and reconstruct_tree.py (NGRAM tree metadata); the CUDA wheel
of sgl_kernel lacks them. Each function is a line-by-line port of the Triton reference in
those files (same in-place outputs, same -1 sentinels). Trees hold a handful of nodes, so the
loops cost microseconds.
"""

from __future__ import annotations

import torch

from ._registry import define

FULL_MASK, QLEN_ONLY, QLEN_ONLY_BITPACKING = 0, 1, 2


def verify_tree_greedy(
    predicts, accept_index, accept_token_num, candidates,
    retrive_index, retrive_next_token, retrive_next_sibling, target_predict,
):
    """Walk each request's draft tree from the root, at every level taking the first child
    (following sibling links) whose token equals the target's greedy token at the current node.

    Outputs (in place): accept_index[b, 0..k] = flat indices of the root and the k accepted
    nodes, accept_token_num[b] = k, predicts[flat idx of each accepted node] = the target token
    there (the next accepted token, or the bonus token for the last one).
    Reference: ``verify_tree_greedy_kernel_triton`` in kernels/ops/speculative/spec_tree.py.
    """
    bs, n = candidates.shape
    num_spec = accept_index.shape[1]
    cand = candidates.tolist()
    r_idx = retrive_index.tolist()
    nxt = retrive_next_token.tolist()
    sib = retrive_next_sibling.tolist()
    tgt = target_predict.reshape(-1).tolist()
    for b in range(bs):
        last = r_idx[b][0]
        accept_index[b, 0] = last
        num = 0
        cur = 0
        for _ in range(1, num_spec):
            cur = nxt[b][cur]
            target_token = tgt[last]
            found = False
            while cur != -1:
                if cand[b][cur] == target_token:
                    predicts[last] = target_token
                    num += 1
                    accept_index[b, num] = r_idx[b][cur]
                    last = r_idx[b][cur]
                    found = True
                    break
                cur = sib[b][cur]
            if not found:
                break
        accept_token_num[b] = num
        predicts[last] = tgt[last]


def build_tree_kernel_efficient(
    parent_list, selected_index, verified_seq_len, tree_mask, positions,
    retrive_index, retrive_next_token, retrive_next_sibling,
    topk, depth, draft_token_num, tree_mask_mode,
):
    """Build an EAGLE verify tree from the draft's top-k expansion.

    Node 0 is the root (the bonus token); node i>0 is selected_index[b, i-1], whose parent is
    the node holding parent_list[b, selected_index[b, i-1] // topk] (the root when that is 0).
    Writes positions (prefix length + depth), retrive_index/next_token/next_sibling (first child
    / next sibling links, -1 = none; caller pre-fills -1) and the tree mask row of every node
    (root column plus its ancestors and itself). FULL_MASK rows span [seq_len + N] columns per
    request (prefix columns untouched, the caller fills them True); QLEN_ONLY rows span N.
    Reference: ``sgl_build_tree_kernel_efficient_triton`` in kernels/ops/speculative/spec_tree.py.
    """
    mode = int(tree_mask_mode)
    if mode == QLEN_ONLY_BITPACKING:
        raise ValueError("tree_mask_mode QLEN_ONLY_BITPACKING is not provided by the CPU stand-in: SGLang's CPU engine uses QLEN_ONLY")
    n = int(draft_token_num)
    topk = int(topk)
    seq_lens = verified_seq_len.tolist()
    sel = selected_index.tolist()
    par = parent_list.reshape(parent_list.shape[0], -1).tolist()
    prefix = 0
    for b, seq_len in enumerate(seq_lens):
        seq_tree_idx = n * n * b + prefix * n
        prefix += seq_len
        positions[b * n] = seq_len

        def find(token_idx: int) -> int:
            for pp in range(n - 1):
                if sel[b][pp] == token_idx:
                    return pp
            return -1

        for i in range(n - 1, 0, -1):
            retrive_index[b, i] = b * n + i
            parent_tb_idx = sel[b][i - 1] // topk
            if parent_tb_idx == 0:
                parent_position = 0
            else:
                pp = find(par[b][parent_tb_idx])
                if pp < 0:
                    continue
                parent_position = pp + 1
            next_tok = int(retrive_next_token[b, parent_position])
            retrive_next_token[b, parent_position] = i
            if next_tok != -1:
                retrive_next_sibling[b, i] = next_tok
        retrive_index[b, 0] = b * n

        for tx in range(n):
            if mode == FULL_MASK:
                row = seq_tree_idx + (seq_len + n) * tx + seq_len
            else:
                row = n * n * b + n * tx
            tree_mask[row] = True
            tree_mask[row + 1 : row + n] = False
            if tx == 0:
                continue
            cur_position = tx - 1
            position = 0
            for _ in range(int(depth)):
                position += 1
                tree_mask[row + 1 + cur_position] = True
                parent_tb_idx = sel[b][cur_position] // topk
                if parent_tb_idx == 0:
                    break
                cur_position = find(par[b][parent_tb_idx])
                if cur_position < 0:
                    break
            positions[b * n + tx] = position + seq_len


def reconstruct_indices_from_tree_mask(
    tree_mask, verified_seq_len, positions, retrive_index, retrive_next_token,
    retrive_next_sibling, batch_size, draft_token_num,
):
    """Derive NGRAM verify metadata from a [bs, N, N] ancestor mask (mask[b,i,j]: j is an
    ancestor of i or i itself).

    positions[b,i] = seq_len_b + #strict ancestors; retrive_index[b,i] = b*N + i;
    next_token[b,i] = first child (smallest k>i with i among k's ancestors) else -1;
    next_sibling[b,i] = smallest k>i with the same parent (parent = largest strict ancestor),
    -1 for the root or when none.
    Reference: ``_reconstruct_tree_mask_kernel`` in kernels/ops/speculative/reconstruct_tree.py.
    """
    bs, n = int(batch_size), int(draft_token_num)
    if bs == 0:
        return
    m = tree_mask.reshape(-1)[: bs * n * n].reshape(bs, n, n).to(torch.bool)
    order = torch.arange(n)
    anc = m & (order[None, :] < order[:, None])[None]  # [b, i, j], j < i
    positions[: bs * n] = (anc.sum(-1).to(torch.int64) + verified_seq_len.to(torch.int64)[:, None]).reshape(-1)
    retrive_index[:bs] = (torch.arange(bs)[:, None] * n + order[None, :]).to(retrive_index.dtype)
    parent = torch.where(anc.any(-1), torch.where(anc, order[None, None, :], -1).amax(-1), -1)  # [b, i]
    big = torch.full_like(anc, n, dtype=torch.int64)
    rows = order[None, :, None].expand_as(big)  # k
    first_child = torch.where(anc, rows, big).amin(1)  # over k, per column i
    retrive_next_token[:bs] = torch.where(first_child < n, first_child, -1).to(retrive_next_token.dtype)
    same = (parent[:, :, None] == parent[:, None, :]) & (order[:, None] > order[None, :])[None]  # [b, k, i]
    first_sib = torch.where(same, rows, big).amin(1)
    ok = (parent >= 0) & (first_sib < n)
    retrive_next_sibling[:bs] = torch.where(ok, first_sib, -1).to(retrive_next_sibling.dtype)


define(
    "verify_tree_greedy_cpu(Tensor(a!) predicts, Tensor(b!) accept_index, Tensor(c!) accept_token_num,"
    " Tensor candidates, Tensor retrive_index, Tensor retrive_next_token, Tensor retrive_next_sibling,"
    " Tensor target_predict) -> ()",
    verify_tree_greedy,
)
define(
    "build_tree_kernel_efficient_cpu(Tensor parent_list, Tensor selected_index, Tensor verified_seq_len,"
    " Tensor(a!) tree_mask, Tensor(b!) positions, Tensor(c!) retrive_index, Tensor(d!) retrive_next_token,"
    " Tensor(e!) retrive_next_sibling, int topk, int depth, int draft_token_num, int tree_mask_mode) -> ()",
    build_tree_kernel_efficient,
)
define(
    "reconstruct_indices_from_tree_mask_cpu(Tensor tree_mask, Tensor verified_seq_len, Tensor(a!) positions,"
    " Tensor(b!) retrive_index, Tensor(c!) retrive_next_token, Tensor(d!) retrive_next_sibling,"
    " int batch_size, int draft_token_num) -> ()",
    reconstruct_indices_from_tree_mask,
)
