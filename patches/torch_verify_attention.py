"""TARGET_VERIFY for SGLang's torch_native attention backend (SGLang 0.5.23; CPU-only use).

Changes ``sglang.srt.layers.attention.torch_native_backend.TorchNativeAttnBackend.forward_extend``
(an AROUND hook applied by sglang_ssd.patches.cpu_engine): in ``ForwardMode.TARGET_VERIFY`` it
runs :func:`verify_attention` instead; every other mode calls the original unchanged.

Why: torch_native, the only attention backend that runs on CPU without the Intel AMX kernels,
has no TARGET_VERIFY: it ignores ``spec_info.custom_mask`` and reads ``extend_prefix_lens`` /
``extend_seq_lens``, which are None in that mode. Speculative decoding on CPU needs it.

SGLang 0.5.23 TARGET_VERIFY semantics (see intel_amx_backend._build_extend_metadata and
ngram_worker._prepare_for_speculative_decoding):
- ``forward_batch.seq_lens[i]`` is the committed prefix length and EXCLUDES the N =
  ``spec_info.draft_token_num`` verify tokens; the prefix KV is at
  ``req_to_token[req_pool_indices[i], :seq_lens[i]]``.
- The N verify tokens of request i are rows ``i*N:(i+1)*N`` of q/k/v; their KV goes to
  ``out_cache_loc[i*N:(i+1)*N]``, which is also ``req_to_token[req, seq_lens[i]:seq_lens[i]+N]``.
- ``spec_info.custom_mask`` (bool, flat), if given, says which verify tokens each verify token
  sees, in one of two layouts: QLEN_ONLY, ``[bs, N, N]`` (SGLang's CPU default: NGRAM on CPU and
  EAGLE's default_tree_mask_mode()), or FULL_MASK, per request ``[N, seq_len + N]`` rows
  concatenated (GPU layout; prefix columns are all True). None, or ``spec_info.tree_topk == 1``,
  means a chain: causal among the verify tokens. The prefix is always fully visible.
"""

from __future__ import annotations

import torch

_APPLIED = False


def attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, allowed: torch.Tensor, scaling: float) -> torch.Tensor:
    """Masked softmax attention, accumulated in float32.

    q [Lq, Hq, D], k [Lk, Hkv, D], v [Lk, Hkv, Dv] (Hq a multiple of Hkv: grouped-query
    heads share KV head h // (Hq // Hkv)), allowed [Lq, Lk] bool. Returns [Lq, Hq, Dv] in q's
    dtype. Every query must be allowed at least one key.

    The query heads of a KV head are folded into its query rows ([Hkv, group x Lq, D]), so each
    KV head's keys and values are read as they are, never copied once per query head: repeating
    them (the first version) cost 779 ms per 28 layers for a 6-token verify over 4k tokens of
    context on one core against 62 ms folded, with bit-identical results (dot products of the
    same rows).
    """
    lq, hq, d = q.shape
    hkv = k.shape[1]
    group = hq // hkv
    qf = q.float().reshape(lq, hkv, group, d).permute(1, 2, 0, 3).reshape(hkv, group * lq, d)
    kf = k.float().transpose(0, 1)  # [Hkv, Lk, D]
    vf = v.float().transpose(0, 1)
    scores = torch.matmul(qf, kf.transpose(1, 2)) * scaling  # [Hkv, group x Lq, Lk]
    scores.masked_fill_(~allowed.repeat(group, 1)[None], float("-inf"))
    out = torch.matmul(torch.softmax(scores, dim=-1), vf)  # [Hkv, group x Lq, Dv]
    return out.reshape(hkv, group, lq, -1).permute(2, 0, 1, 3).reshape(lq, hq, -1).to(q.dtype)


def verify_visibility(prefix_len: int, n: int, draft_mask: torch.Tensor | None,
                      window: int | None = None) -> torch.Tensor:
    """[n, prefix_len + n] bool: the whole prefix, then draft_mask ([n, n]) or causal (chain).

    window: sliding-window attention (SGLang's sliding_window_size): a query at position p sees
    keys at positions >= p - window only.
    """
    tail = torch.ones(n, n, dtype=torch.bool).tril() if draft_mask is None else draft_mask.to(torch.bool)
    vis = torch.cat([torch.ones(n, prefix_len, dtype=torch.bool), tail], dim=1)
    if window is not None and window > -1:
        q_pos = torch.arange(prefix_len, prefix_len + n).view(-1, 1)
        k_pos = torch.arange(prefix_len + n).view(1, -1)
        vis &= (q_pos - k_pos) <= window
    return vis


def draft_masks(custom_mask: torch.Tensor | None, seq_lens: list[int], n: int) -> list[torch.Tensor | None]:
    """Split a flat custom mask into per-request [n, n] draft-vs-draft masks (QLEN_ONLY or
    FULL_MASK layout, told apart by size); [None]*bs when there is no mask (chain)."""
    bs = len(seq_lens)
    if custom_mask is None or custom_mask.numel() == 0:
        return [None] * bs
    flat = custom_mask.reshape(-1).to(torch.bool).cpu()
    if flat.numel() == bs * n * n:
        return list(flat.view(bs, n, n).unbind(0))
    full = sum(n * (s + n) for s in seq_lens)
    if flat.numel() != full:
        raise ValueError(f"custom_mask has {flat.numel()} entries; expected {bs * n * n} (QLEN_ONLY) or {full} (FULL_MASK)")
    out, off = [], 0
    for s in seq_lens:
        out.append(flat[off : off + n * (s + n)].view(n, s + n)[:, s:])
        off += n * (s + n)
    return out


def verify_attention(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    req_to_token: torch.Tensor,
    req_pool_indices: torch.Tensor,
    seq_lens: torch.Tensor,
    n: int,
    custom_mask: torch.Tensor | None,
    scaling: float,
    window: int | None = None,
) -> torch.Tensor:
    """TARGET_VERIFY attention over the KV pool (the verify tokens' KV must already be written).

    q [bs*n, Hq, D]; request i's keys are k_cache[req_to_token[req_i, :seq_lens[i] + n]].
    Returns [bs*n, Hq, Dv].
    """
    lens = [int(x) for x in seq_lens.tolist()]
    masks = draft_masks(custom_mask, lens, n)
    out = q.new_empty((q.shape[0], q.shape[1], v_cache.shape[-1]))
    for i, (req, s) in enumerate(zip(req_pool_indices.tolist(), lens)):
        slots = req_to_token[req, : s + n].to(torch.int64)
        out[i * n : (i + 1) * n] = attend(
            q[i * n : (i + 1) * n], k_cache[slots], v_cache[slots], verify_visibility(s, n, masks[i], window),
            scaling
        )
    return out


def _forward_extend(original, self, q, k, v, layer, forward_batch, save_kv_cache=True, **kwargs):
    """AROUND hook on TorchNativeAttnBackend.forward_extend: TARGET_VERIFY here, else original."""
    if not forward_batch.forward_mode.is_target_verify():
        return original(self, q, k, v, layer, forward_batch, save_kv_cache, **kwargs)
    from sglang.srt.mem_cache.memory_pool import KVWriteLoc

    if layer.is_cross_attention:
        raise ValueError("speculative verification of an encoder-decoder (cross-attention) model is "
                         "not supported on CPU; serve it without --speculative-algorithm")
    if save_kv_cache and k is not None and v is not None:
        self.token_to_kv_pool.set_kv_buffer(layer, KVWriteLoc(forward_batch.out_cache_loc, self.swa_out_cache_loc), k, v)
    spec = forward_batch.spec_info
    mask = None if getattr(spec, "tree_topk", None) == 1 else spec.custom_mask
    o = verify_attention(
        q.reshape(-1, layer.tp_q_head_num, layer.qk_head_dim),
        self.token_to_kv_pool.get_key_buffer(layer.layer_id),
        self.token_to_kv_pool.get_value_buffer(layer.layer_id),
        self.req_to_token_pool.req_to_token,
        forward_batch.req_pool_indices,
        forward_batch.seq_lens,
        int(spec.draft_token_num),
        mask,
        layer.scaling,
        getattr(layer, "sliding_window_size", None),
    )
    return o.reshape(o.shape[0], layer.tp_q_head_num * layer.v_head_dim)


def apply() -> None:
    """Register the hook (idempotent within a process)."""
    global _APPLIED
    if _APPLIED:
        return
    from sglang.srt.plugins.hook_registry import HookRegistry, HookType

    HookRegistry.register(
        "sglang.srt.layers.attention.torch_native_backend.TorchNativeAttnBackend.forward_extend",
        _forward_extend,
        HookType.AROUND,
    )
    _APPLIED = True
