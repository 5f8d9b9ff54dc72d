"""The `SSD` entry in SGLang's speculative-algorithm registry.

`SSDSpecAlgo` fills in what SGLang's scheduler calls on every algorithm but the stock
CustomSpecAlgo lacks, and sets the speculative defaults SGLang leaves unset for plugin
algorithms (K, chain width K+1, no overlap schedule) so allocation sizing works. Without
--speculative-num-steps, K is automatic and the reserved width is that of the deepest K.
"""

from __future__ import annotations

import logging

from sglang.srt.speculative.spec_registry import CustomSpecAlgo

from sglang_ssd.auto_k import AUTO_MAX_K
from sglang_ssd.config import MAX_K

logger = logging.getLogger(__name__)

NAME = "SSD"
DEFAULT_MAX_RUNNING_REQUESTS = 48
GPU_GRAPH_K = 4


def auto_k_max(device) -> int:
    """The deepest K automatic K may choose (SGLang reserves KV and captures verify graphs for
    it). On a GPU the target's graph runner captures this one verify width and every other one
    runs eagerly (verify_widths.py), so K stays there: GPU_GRAPH_K, the depth a measured H100 run
    found best (Qwen3-32B + 0.6B: K * 2.54 ms of tree steps must fit an 11.45 ms verify);
    --speculative-num-steps chooses another."""
    return GPU_GRAPH_K if str(device or "").startswith("cuda") else AUTO_MAX_K


class SSDSpecAlgo(CustomSpecAlgo):
    def carries_draft_hidden_states(self) -> bool:
        return False

    def need_topk(self) -> bool:
        return False

    def has_draft_kv(self) -> bool:
        # The draft's KV lives in the draft process, not in the target's pool.
        return False

    def create_future_map(self, device, req_to_token_pool, needs_cpu_seq_lens=True,
                          needs_confidence_relay=False):
        from sglang.srt.managers.overlap_utils import FutureMap

        return FutureMap(device, self, req_to_token_pool, needs_cpu_seq_lens, needs_confidence_relay)

    def handle_server_args(self, server_args) -> None:
        k = server_args.speculative_num_steps
        if k is None:  # K left to the worker (auto_k.py): reserve room for the deepest it may pick
            k = auto_k_max(getattr(server_args, "device", None))
            server_args.speculative_num_steps = k
        server_args.speculative_eagle_topk = 1
        server_args.speculative_num_draft_tokens = k + 1
        server_args.disable_overlap_schedule = True
        server_args.enable_mixed_chunk = False
        if server_args.max_running_requests is None:
            server_args.max_running_requests = DEFAULT_MAX_RUNNING_REQUESTS


def validate_server_args(server_args) -> None:
    """Checks for every entry point (CLI and the Python Engine alike)."""
    path = server_args.speculative_draft_model_path
    if not path:
        raise ValueError("--speculative-draft-model-path is required with --speculative-algorithm SSD")
    k = server_args.speculative_num_steps
    if k is not None and not (1 <= int(k) <= MAX_K):
        raise ValueError(f"--speculative-num-steps={k!r}: SSD needs K in [1, {MAX_K}]")


def _worker_factory(server_args):
    from sglang_ssd.worker import SSDWorker

    return SSDWorker


def register() -> None:
    from sglang.srt.speculative.spec_info import SpeculativeAlgorithm
    from sglang.srt.speculative.spec_registry import get_spec

    if get_spec(NAME) is not None:
        return
    SpeculativeAlgorithm.register(
        NAME, supports_overlap=False, validate_server_args=validate_server_args,
        spec_class=SSDSpecAlgo,
    )(_worker_factory)
