"""Starting the worker's draft: where it runs, in what precision, and the check that it speaks
the target's vocabulary (a draft whose ids mean other tokens is refused, naming both sides)."""

from __future__ import annotations

from typing import Optional

import torch

from sglang.srt.runtime_context import get_parallel

from sglang_ssd import wire
from sglang_ssd.config import SSDConfig, choose_draft_device, choose_draft_dtype, endpoint_for_replica
from sglang_ssd.draft_client import DraftClient, DraftStartError
from sglang_ssd.vocab import tokenizer_digest


def start_draft(server_args, cfg: SSDConfig, k: int, fanout: list[int], vocab_size: int,
                cpus: Optional[tuple[int, ...]] = None) -> tuple[DraftClient, Optional[str]]:
    """(the connected draft client, the endpoint it was given or None when spawned privately);
    `cpus`: the cores a spawned CPU draft pins itself to (cpu_cores.py). Raises ValueError naming
    the flag or the models when the draft cannot serve this target."""
    target_device = str(server_args.device)
    dp_rank = get_parallel().dp_rank or 0
    device = choose_draft_device(
        cfg.draft_device, target_device, torch.cuda.device_count() if target_device != "cpu" else 0,
        base_gpu_id=int(getattr(server_args, "base_gpu_id", 0) or 0), tp_size=int(server_args.tp_size),
        dp_size=int(getattr(server_args, "dp_size", 1) or 1), dp_rank=dp_rank,
        gpu_id_step=int(getattr(server_args, "gpu_id_step", 1) or 1))
    endpoint = cfg.draft_endpoint and endpoint_for_replica(cfg.draft_endpoint, dp_rank)
    draft_path = server_args.speculative_draft_model_path
    dtype = choose_draft_dtype(cfg.draft_dtype, device, server_args.dtype, draft_path, cfg.draft_engine)
    target_tok = server_args.tokenizer_path or server_args.model_path
    mine = tokenizer_digest(target_tok)

    def check_ready(ready: wire.Ready) -> Optional[str]:
        if mine and ready.tokenizer_digest:
            if mine != ready.tokenizer_digest:
                return (f"--speculative-draft-model-path={draft_path!r}: the draft's tokenizer "
                        f"(vocabulary digest {ready.tokenizer_digest[:12]}, {ready.vocab_size} ids) "
                        f"differs from the target's {target_tok!r} ({mine[:12]}, {vocab_size} "
                        "ids); SSD needs a shared vocabulary")
        elif ready.vocab_size != vocab_size:
            return (f"--speculative-draft-model-path={draft_path!r}: draft vocabulary size "
                    f"{ready.vocab_size} != target vocabulary size {vocab_size}")
        return None

    try:
        client = DraftClient(
            model_path=draft_path, k=k, fanout=fanout,
            backup=cfg.backup, backup_batch_threshold=cfg.backup_batch_threshold, device=device,
            dtype=dtype, kv_tokens=cfg.draft_kv_tokens,
            threads=cfg.draft_threads or (1 if device == "cpu" else None),
            endpoint=endpoint, curve_keys=cfg.curve_keys, timeout_s=cfg.draft_timeout,
            max_reply_bytes=wire.max_reply_bytes(k, vocab_size, int(server_args.max_running_requests or 1024)),
            start_timeout_s=cfg.draft_start_timeout, saguaro_c=cfg.saguaro_c,
            fanout_budget=None if cfg.fanout is not None else sum(fanout),
            auto_budget=cfg.fanout is None and cfg.fanout_budget is None,
            check_ready=check_ready, engine=cfg.draft_engine,
            cpus=list(cpus) if cpus and device == "cpu" and endpoint is None else None,
        )
    except DraftStartError as e:
        raise ValueError(str(e)) from None
    return client, endpoint
