"""The draft model run by SGLang's own ModelRunner (same interface as draft_model.DraftModel).

The draft process is a plain Python process, not one SGLang started, so this module bootstraps
SGLang in it the way ``managers/scheduler.py: run_scheduler_process`` does for a scheduler
(sglang 0.5.23): ``load_plugins()`` -> ``publish(server_args, role="scheduler", ranks=...)`` ->
``bootstrap.init_parallel_runtime`` / ``init_layer_runtime`` -> ``TpModelWorker`` ->
``alloc_memory_pool()`` / ``init_attention_backends()`` / ``init_cuda_graphs()`` (the same order
as ``benchmark/one_batch.py: load_model`` and ``Scheduler.init_model_worker``).

How a forward maps onto SGLang: every query token is its own one-token "request" of a
``ForwardMode.DECODE`` batch. Token i gets its own row of ``req_to_token_pool.req_to_token``
holding the KV slots it may see (its group's prefix, then its own slots with its write slot last;
draft_batch.py), written with tensor ops, ``seq_lens[i]`` = that row's length,
``out_cache_loc[i]`` = its write slot and ``positions[i]`` (logical). In
decode mode the attention backends write the KV of all tokens of the batch (``set_kv_buffer``)
before attending, so a token sees slots written by earlier tokens of the same call. The order of
the slots inside a row does not matter to attention (no causal mask in decode; RoPE is applied
before the KV is stored), so moving the write slot last only satisfies the "own token last"
convention. Our slot s is SGLang's KV index s + 1: index 0 of SGLang's KV pools is the padding
slot. Large calls are split into chunks of at most ``max_rows`` tokens, run in order.
"""

from __future__ import annotations

import os
import socket
import sys
from typing import Optional, Sequence

import torch

from sglang_ssd.draft_batch import Group, split_rows
from sglang_ssd.draft_model import PoolFullError, SlotPool

__all__ = ["SGLangDraftModel", "SlotPool", "PoolFullError"]

_PAD = 1  # SGLang KV index 0 is the pools' padding slot


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _prepare_cpu_process() -> None:
    """SGLang's CPU platform needs SGLANG_USE_CPU_ENGINE=1 and our sgl_kernel stand-in."""
    from sglang_ssd.patches.cpu_engine import standin_dir

    if os.environ.get("SGLANG_USE_CPU_ENGINE") != "1" and any(m.startswith("sglang.srt") for m in sys.modules):
        raise RuntimeError("sglang was imported before SGLANG_USE_CPU_ENGINE=1 was set: its CPU "
                           "platform choice is made at import; set the variable first")
    os.environ["SGLANG_USE_CPU_ENGINE"] = "1"
    os.environ.setdefault("SGLANG_SSD_CPU", "1")
    real = sys.modules.get("sgl_kernel")
    if real is not None and not os.path.dirname(real.__file__ or "").startswith(standin_dir()):
        raise RuntimeError(
            f"the CUDA sgl_kernel ({real.__file__}) was imported before the CPU stand-in could be "
            "put first on sys.path; start the process with sglang_ssd.cpu_serve.cpu_env()"
        )
    if standin_dir() not in sys.path:
        sys.path.insert(0, standin_dir())


class SGLangDraftModel:
    """Runs forwards of arbitrary token sets against the slot pool, with SGLang's ModelRunner."""

    def __init__(self, model_path: str, device: str, dtype: str, num_slots: int,
                 max_rows: int = 256, attention_backend: str | None = None,
                 mem_fraction_static: float | None = None):
        dev = torch.device(device)
        if dev.type == "cpu":
            _prepare_cpu_process()

        from sglang.srt.configs.model_config import ModelConfig
        from sglang.srt.distributed import bootstrap
        from sglang.srt.layers.moe import initialize_moe_config
        from sglang.srt.layers.quantization.fp4_utils import initialize_fp4_gemm_config
        from sglang.srt.layers.quantization.fp8_utils import initialize_fp8_gemm_config
        from sglang.srt.layers.quantization.unquant import initialize_bf16_gemm_config
        from sglang.srt.managers.tp_worker import TpModelWorker
        from sglang.srt.plugins import load_plugins
        from sglang.srt.runtime_context import SpawnRanks, get_device, publish
        from sglang.srt.server_args import ServerArgs

        load_plugins()
        self.max_rows = int(max_rows)
        gpu_id = (dev.index or 0) if dev.type != "cpu" else 0
        port = _free_port()
        kwargs = dict(
            model_path=str(model_path),
            device=dev.type,
            dtype=dtype,
            attention_backend=attention_backend or ("torch_native" if dev.type == "cpu" else "flashinfer"),
            sampling_backend="pytorch",
            disable_cuda_graph=True,
            disable_radix_cache=True,
            disable_overlap_schedule=True,
            skip_tokenizer_init=True,
            max_total_tokens=int(num_slots) + 2 * _PAD,
            max_running_requests=self.max_rows,
            nccl_port=port,
            random_seed=0,
            log_level="warning",
        )
        if mem_fraction_static is not None:
            kwargs["mem_fraction_static"] = mem_fraction_static
        server_args = ServerArgs(**kwargs)
        publish(server_args, role="scheduler", ranks=SpawnRanks(world_rank=0, gpu_id=gpu_id))
        model_config = ModelConfig.from_server_args(server_args)
        bootstrap.init_parallel_runtime(server_args=server_args, device=get_device().device, dist_port=port)
        bootstrap.init_layer_runtime(model_config=model_config)
        if any(hasattr(model_config.hf_text_config, a) for a in (
                "num_experts_per_tok", "num_experts_per_token", "top_k_experts", "moe_top_k", "moe_topk")):
            initialize_moe_config()
        initialize_fp8_gemm_config()
        initialize_fp4_gemm_config()
        initialize_bf16_gemm_config()

        self.worker = TpModelWorker(server_args=server_args, gpu_id=gpu_id, nccl_port=port)
        self.worker.alloc_memory_pool()
        self.worker.init_attention_backends()
        self.worker.init_cuda_graphs()
        self.runner = self.worker.model_runner
        self.server_args = server_args

        kv_size = int(self.runner.token_to_kv_pool.size)  # its buffers hold indices 0..size
        if kv_size < num_slots + _PAD:
            raise RuntimeError(f"SGLang KV pool holds {kv_size} tokens, {num_slots} draft slots asked")
        self.req_to_token = self.runner.req_to_token_pool.req_to_token
        rows = self.req_to_token.shape[0]
        # Row 0 of req_to_token is left alone (SGLang pools reserve it for padding requests).
        self.max_rows = min(self.max_rows, rows - 1)
        self.row_width = self.req_to_token.shape[1]

        self.device = torch.device(self.runner.device) if dev.type == "cpu" else dev
        self.vocab_size = int(model_config.vocab_size)
        self.max_positions = min(int(model_config.context_len), self.row_width)
        self.pool = SlotPool(num_slots)

    @torch.inference_mode()
    def forward(self, groups: Sequence[Group], logits: bool = True) -> Optional[torch.Tensor]:
        """Logits [queries, V] (float32), the groups' queries in order (draft_batch.py); None when
        `logits` is False."""
        outs = [self._forward_chunk(part) for part in split_rows([g for g in groups if len(g)], self.max_rows)]
        if not logits:
            return None
        if not outs:
            return torch.empty(0, self.vocab_size)
        return outs[0] if len(outs) == 1 else torch.cat(outs)

    def _fill_rows(self, groups: list[Group]) -> list[int]:
        """Write each query's row of req_to_token (its group's prefix, then its own slots with its
        write slot last) with tensor ops; returns the rows' lengths."""
        dev, lens, r0 = self.device, [], 1
        for g in groups:
            n, L = len(g), int(g.prefix.numel())
            own = None if g.own is None else [[s for s in o if s != w] + [w] for o, w in zip(g.own, g.write)]
            width = L + (n if own is None else max(len(o) for o in own))
            if width > self.row_width:
                raise ValueError(f"a token sees {width} slots, more than SGLang's row width {self.row_width}")
            if L:
                self.req_to_token[r0:r0 + n, :L] = (g.prefix + _PAD).to(dev, self.req_to_token.dtype)[None, :]
            if own is None:  # a run: query i sees write[:i + 1], its own last
                i, j = torch.tril_indices(n, n)
                vals = torch.tensor(g.write, dtype=torch.int64)[j]
                lens += [L + x + 1 for x in range(n)]
            else:
                i = torch.repeat_interleave(torch.arange(n), torch.tensor([len(o) for o in own]))
                j = torch.cat([torch.arange(len(o)) for o in own])
                vals = torch.tensor([s for o in own for s in o], dtype=torch.int64)
                lens += [L + len(o) for o in own]
            self.req_to_token[(r0 + i).to(dev), (L + j).to(dev)] = (vals + _PAD).to(dev, self.req_to_token.dtype)
            r0 += n
        return lens

    def _forward_chunk(self, groups: list[Group]) -> torch.Tensor:
        from sglang.srt.model_executor.forward_batch_info import CaptureHiddenMode, ForwardBatch, ForwardMode
        from sglang.srt.speculative.spec_info import SpeculativeAlgorithm

        tokens = [t for g in groups for t in g.tokens]
        positions = [p for g in groups for p in g.positions]
        write_slots = [w for g in groups for w in g.write]
        q = len(tokens)
        dev = self.device
        rows = torch.arange(1, q + 1, dtype=torch.int64)
        lens = self._fill_rows(groups)
        lens_t = torch.tensor(lens, dtype=torch.int64)

        seq_lens_cpu = lens_t.to(torch.int32)
        fb = ForwardBatch(
            forward_mode=ForwardMode.DECODE,
            batch_size=q,
            input_ids=torch.tensor(list(tokens), dtype=torch.int64, device=dev),
            req_pool_indices=rows.to(dev),
            seq_lens=seq_lens_cpu.to(dev),
            out_cache_loc=(torch.tensor(list(write_slots), dtype=torch.int64) + _PAD).to(dev),
            seq_lens_sum=int(sum(lens)),
            seq_lens_cpu=seq_lens_cpu,
            positions=torch.tensor(list(positions), dtype=torch.int64, device=dev),
            spec_algorithm=SpeculativeAlgorithm.NONE,
            capture_hidden_mode=CaptureHiddenMode.NULL,
            return_hidden_states_before_norm=False,
        )
        self.runner.kv_index_translator.bind_own_plan(fb)
        out = self.runner.forward(fb)
        logits = out.logits_output.next_token_logits
        return logits[:, : self.vocab_size].float()
