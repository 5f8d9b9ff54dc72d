"""The draft model and its slot-addressed KV pool (the torch tree-attention path).

Every token's KV lives in one slot of a flat pool shared by all requests. A forward names, per
query token, the slot it writes and the slots it may attend to; positions are logical. So a
request's prefix and glue KV are written once and every branch of its speculation tree attends to
them in place (only the branch's own tokens are new), and all branches of all requests run in one
forward. The model is a Hugging Face causal LM driven through a Cache whose layers write at the
named slots and read the pool's used range under an explicit mask.
"""

from __future__ import annotations

import heapq
from typing import Sequence

import torch
from transformers.cache_utils import Cache, StaticLayer

from sglang_ssd.kernels import cpu_linear


class PoolFullError(RuntimeError):
    """The draft KV pool has no free slots for this round."""


class SlotPool:
    """Free list of KV slots; lowest slots first so the used range stays small."""

    def __init__(self, size: int):
        self.size = size
        self._free = list(range(size))
        heapq.heapify(self._free)
        self._used = set()

    def alloc(self, n: int) -> list[int]:
        if n > len(self._free):
            raise PoolFullError(f"draft KV pool full: need {n} slots, {len(self._free)} free of {self.size}")
        out = [heapq.heappop(self._free) for _ in range(n)]
        self._used.update(out)
        return out

    def free(self, slots: Sequence[int]) -> None:
        for s in slots:
            if s in self._used:
                self._used.remove(s)
                heapq.heappush(self._free, s)

    @property
    def num_used(self) -> int:
        return len(self._used)


class _SlotIO:
    """Per-forward slot plan, shared by every layer of the cache."""

    write_slots: torch.Tensor
    read_slots: torch.Tensor  # the union of the slots any query token may see, in mask order


class _SlotLayer(StaticLayer):
    def __init__(self, max_cache_len: int, io: _SlotIO):
        super().__init__(max_cache_len=max_cache_len)
        self._io = io

    def update(self, key_states, value_states, *args, **kwargs):
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        slots = self._io.write_slots
        self.keys.index_copy_(2, slots, key_states)
        self.values.index_copy_(2, slots, value_states)
        read = self._io.read_slots
        return self.keys.index_select(2, read), self.values.index_select(2, read)


_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


class DraftModel:
    """Runs forwards of arbitrary token sets against the slot pool."""

    def __init__(self, model_path: str, device: str, dtype: str, num_slots: int):
        from transformers import AutoConfig, AutoModelForCausalLM

        config = AutoConfig.from_pretrained(model_path)
        self.model = AutoModelForCausalLM.from_pretrained(
            model_path, dtype=_DTYPES[dtype], attn_implementation="sdpa"
        ).to(device).eval()
        self.device = torch.device(device)
        if self.device.type == "cpu" and _DTYPES[dtype] == torch.bfloat16 and cpu_linear.enabled():
            # bf16: every row count 2x faster, same numbers. Not float32: oneDNN's per-shape caches
            # grew a float32 draft's RSS by 27% under 64 clients (tests/test_load.py).
            cpu_linear.pack_linears(self.model)
        self.dtype = _DTYPES[dtype]
        self.vocab_size = int(config.vocab_size)
        self.max_positions = int(getattr(config, "max_position_embeddings", 1 << 20))
        self.pool = SlotPool(num_slots)
        self._io = _SlotIO()
        layers = [_SlotLayer(num_slots, self._io) for _ in range(config.num_hidden_layers)]
        self.cache = Cache(layers=layers)

    @torch.inference_mode()
    def forward(self, tokens: Sequence[int], positions: Sequence[int], write_slots: Sequence[int],
                visible: Sequence[Sequence[int]]) -> torch.Tensor:
        """Logits [len(tokens), V] (float32); token i writes write_slots[i], sees visible[i]."""
        q = len(tokens)
        lens = torch.tensor([len(v) for v in visible], dtype=torch.long)
        rows = torch.repeat_interleave(torch.arange(q), lens)
        flat = torch.tensor([s for v in visible for s in v], dtype=torch.long)
        # Attend over the slots someone sees, not the pool's whole used range: the cost of a
        # forward does not grow with what other requests or the prefix cache hold.
        read, cols = torch.unique(flat, return_inverse=True)
        mask = torch.full((q, len(read)), float("-inf"), dtype=self.dtype)
        mask[rows, cols] = 0.0
        self._io.write_slots = torch.tensor(write_slots, dtype=torch.long, device=self.device)
        self._io.read_slots = read.to(self.device)
        out = self.model(
            input_ids=torch.tensor([list(tokens)], dtype=torch.long, device=self.device),
            position_ids=torch.tensor([list(positions)], dtype=torch.long, device=self.device),
            attention_mask=mask.to(self.device)[None, None],
            past_key_values=self.cache,
            use_cache=True,
        )
        return out.logits[0].float()
