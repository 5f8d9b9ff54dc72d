"""Draft-model attention backends for ``torch_native`` (SGLang 0.5.23; CPU-only use).

Changes ``sglang.srt.speculative.draft_utils.DraftBackendFactory._create_backend`` (an AROUND
hook applied by sglang_ssd.patches.cpu_engine): when the draft's backend resolves to
``torch_native`` it adds that name to the factory's backend map (decode: a multi-step container
of :class:`TorchNativeDraftStepBackend`; draft extend: a plain ``TorchNativeAttnBackend``) and
then runs the original, so SGLang's own stamping and wrapping still apply. Other backends are
untouched.

Why: EAGLE-family workers (STANDALONE, EAGLE, EAGLE3) build their draft backends through that
factory, whose maps list only GPU backends and intel_amx (which needs the AMX kernels the
stand-in ``sgl_kernel`` lacks), so on a CPU-only machine they stopped at "EAGLE is not supported
in decode attention backend torch_native".

Semantics copied from the GPU path (triton ``generate_draft_decode_kv_indices``): at draft step
i (0-based, of the ``num_steps - 1`` model forwards) candidate j of request b, at position
``seq_len_b + i``, sees the committed prefix ``req_to_token[req_b, :seq_len_b]`` plus its own
draft slots ``req_to_token[req_b, seq_len_b + j*num_steps :][: i + 1]`` (its KV is written to
``out_cache_loc`` first). DRAFT_EXTEND_V2 is an ordinary causal extend (prefix ``seq_lens``,
``num_draft_tokens`` new tokens), which ``TorchNativeAttnBackend.forward_extend`` handles.
The draft slots are laid out contiguously per candidate (page size 1, or topk 1); SGLang itself
refuses topk > 1 with page size > 1 on torch_native (speculative_hook._handle_eagle_family).
"""

from __future__ import annotations

import torch

_APPLIED = False


def _draft_step_backend_cls():
    """Build the per-step class lazily: sglang must not be imported when this module loads."""
    from sglang.srt.layers.attention.torch_native_backend import TorchNativeAttnBackend
    from sglang.srt.mem_cache.memory_pool import KVWriteLoc

    class TorchNativeDraftStepBackend(TorchNativeAttnBackend):
        """One draft-decode step: decode attention over per-candidate KV tables (see module doc).

        ``draft_decode_metadata`` = (table [bs*topk, W], rows [bs*topk], kv_lens [bs*topk]), set by
        the container before each draft round, mirrors IntelAMXAttnBackend's field of that name.
        """

        draft_decode_metadata = None

        def forward_decode(self, q, k, v, layer, forward_batch, save_kv_cache=True, **kwargs):
            if self.draft_decode_metadata is None:
                raise RuntimeError("draft decode ran before TorchNativeMultiStepDraftBackend.init_forward_metadata")
            if layer.is_cross_attention:
                raise ValueError("a draft model with cross-attention is not supported on CPU")
            table, rows, kv_lens = self.draft_decode_metadata
            loc = forward_batch.out_cache_loc
            if save_kv_cache and k is not None and v is not None:
                swa = (self.token_to_kv_pool.translate_loc_from_full_to_swa(loc)
                       if self.use_sliding_window_kv_pool else None)
                self.token_to_kv_pool.set_kv_buffer(layer, KVWriteLoc(loc, swa), k, v)
            q_ = q.reshape(-1, layer.tp_q_head_num, layer.qk_head_dim)
            o = q_.new_empty((q_.shape[0], layer.tp_q_head_num, layer.v_head_dim))
            window = layer.sliding_window_size
            self._run_sdpa_forward_decode(
                q_, o,
                self.token_to_kv_pool.get_key_buffer(layer.layer_id),
                self.token_to_kv_pool.get_value_buffer(layer.layer_id),
                table, rows, kv_lens, None,
                scaling=layer.scaling,
                enable_gqa=layer.tp_q_head_num != layer.tp_k_head_num,
                causal=False,
                sliding_window_size=window if window is not None and window > -1 else None,
            )
            return o.view(-1, layer.tp_q_head_num * layer.v_head_dim)

    return TorchNativeDraftStepBackend


class TorchNativeMultiStepDraftBackend:
    """``num_steps - 1`` per-step torch_native backends (the shape EagleDraftWorker expects of
    e.g. TritonMultiStepDraftBackend: ``attn_backends`` plus ``init_forward_metadata``)."""

    def __init__(self, model_runner, topk: int, speculative_num_steps: int):
        step_cls = _draft_step_backend_cls()
        self.topk = topk
        self.speculative_num_steps = speculative_num_steps
        self.attn_backends = [step_cls(model_runner) for _ in range(speculative_num_steps - 1)]
        self.req_to_token = model_runner.req_to_token_pool.req_to_token

    def init_forward_metadata(self, forward_batch) -> None:
        table = torch.ops.sgl_kernel.build_draft_decode_metadata_cpu(
            self.req_to_token, forward_batch.req_pool_indices.to(torch.int64),
            forward_batch.seq_lens.to(torch.int64), self.topk, self.speculative_num_steps,
            self.req_to_token.shape[1],
        )
        rows = torch.arange(table.shape[0], dtype=torch.int64)
        base = forward_batch.seq_lens.to(torch.int64).repeat_interleave(self.topk)
        for i, backend in enumerate(self.attn_backends):
            backend.draft_decode_metadata = (table, rows, base + i + 1)


def _create_backend(original, self, backend_name, backend_map, error_template, stamps_children=False):
    """AROUND hook on DraftBackendFactory._create_backend: add torch_native to the map."""
    from sglang.srt.layers.attention.torch_native_backend import TorchNativeAttnBackend

    def make():
        runner = self.draft_model_runner
        if stamps_children:  # the multi-step draft-decode container
            return "torch_native", TorchNativeMultiStepDraftBackend(runner, self.topk, self.speculative_num_steps)
        return "torch_native", TorchNativeAttnBackend(runner)  # draft extend

    return original(self, backend_name, {**backend_map, "torch_native": make}, error_template, stamps_children)


def apply() -> None:
    """Register the hook (idempotent within a process)."""
    global _APPLIED
    if _APPLIED:
        return
    from sglang.srt.plugins.hook_registry import HookRegistry, HookType

    HookRegistry.register(
        "sglang.srt.speculative.draft_utils.DraftBackendFactory._create_backend",
        _create_backend,
        HookType.AROUND,
    )
    _APPLIED = True
