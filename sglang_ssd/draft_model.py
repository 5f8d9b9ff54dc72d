"""The draft model and its slot-addressed KV pool (the torch tree-attention path).

Every token's KV lives in one slot of a flat pool shared by all requests. A forward names, per
query token, the slot it writes, and what it attends to as a group's shared prefix (a tensor of
slots, once per group) plus its own few slots (draft_batch.py); positions are logical. So a
request's prefix and glue KV are written once and every branch of its speculation tree attends to
them in place (only the branch's own tokens are new), all branches of all requests run in one
forward, and nothing the forward builds in Python grows with the context. The model is a Hugging
Face causal LM driven through a Cache whose layers write at the named slots and whose attention
(slot_attention.py) reads each group's keys from the pool under a block mask.
"""

from __future__ import annotations

import heapq
import os
from typing import Optional, Sequence

import torch
from transformers.cache_utils import Cache, StaticLayer

from sglang_ssd import slot_attention
from sglang_ssd.draft_batch import Group, split_rows
from sglang_ssd.draft_linears import prepare_linears, weights_dtype


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
            raise PoolFullError(f"draft pool full: need {n} slots, {len(self._free)} free of {self.size}")
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
    """Per-forward slots, shared by every layer of the cache."""

    write_slots: torch.Tensor
    # None: the layers return the whole pool (slot_attention gathers each group's keys). A tensor:
    # they return the KV at these slots, for a caller that passes its own 4D additive mask over
    # them and no plan (draft_graphs.slot_forward's fixed-shape replays).
    read_slots: Optional[torch.Tensor] = None


class _SlotLayer(StaticLayer):
    """Writes the new KV at its slots and hands the attention the whole pool (slot_attention.py
    gathers each group's keys from it)."""

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
        if read is not None:
            return self.keys.index_select(2, read), self.values.index_select(2, read)
        return self.keys, self.values


MAX_ROWS = int(os.environ.get("SGLANG_SSD_DRAFT_MAX_ROWS", "512"))  # query rows per model call


class DraftModel:
    """Runs forwards of grouped token sets (draft_batch.py) against the slot pool."""

    def __init__(self, model_path: str, device: str, dtype: str, num_slots: int, max_rows: int = MAX_ROWS):
        from transformers import AutoConfig, AutoModelForCausalLM

        slot_attention.register()
        config = AutoConfig.from_pretrained(model_path)
        self.model = AutoModelForCausalLM.from_pretrained(
            model_path, dtype=weights_dtype(dtype), attn_implementation=slot_attention.NAME
        ).to(device).eval()
        self.device = torch.device(device)
        prepare_linears(self.model, dtype, self.device.type)  # int8, or each weight's measured kernel
        self.dtype = weights_dtype(dtype)
        self.vocab_size = int(config.vocab_size)
        self.max_positions = int(getattr(config, "max_position_embeddings", 1 << 20))
        self.max_rows = max(1, int(max_rows))
        self.pool = SlotPool(num_slots)
        self._io = _SlotIO()
        layers = [_SlotLayer(num_slots, self._io) for _ in range(config.num_hidden_layers)]
        self.cache = Cache(layers=layers)

    @torch.inference_mode()
    def forward(self, groups: Sequence[Group], logits: bool = True) -> Optional[torch.Tensor]:
        """Logits [queries, V] (float32), the groups' queries in order; None when `logits` is False
        (a prefill: only the KV is wanted). Runs at most max_rows queries per model call (a long run
        is cut into chunks, in order), so memory does not grow with the tokens of one call."""
        outs = []
        for part in split_rows([g for g in groups if len(g)], self.max_rows):
            out = self._forward(part, logits)
            if logits:
                outs.append(out)
        if not logits:
            return None
        if not outs:
            return torch.empty(0, self.vocab_size)
        return outs[0] if len(outs) == 1 else torch.cat(outs)

    def _forward(self, groups: list[Group], logits: bool) -> torch.Tensor:
        dev = self.device
        tokens = [t for g in groups for t in g.tokens]
        positions = [p for g in groups for p in g.positions]
        self._io.write_slots = torch.tensor([w for g in groups for w in g.write], dtype=torch.long, device=dev)
        self._io.read_slots = None
        out = self.model(
            input_ids=torch.tensor([tokens], dtype=torch.long, device=dev),
            position_ids=torch.tensor([positions], dtype=torch.long, device=dev),
            past_key_values=self.cache,
            use_cache=True,
            ssd_plan=slot_attention.build_plan(groups, dev),
            logits_to_keep=0 if logits else 1,  # a prefill computes one row of logits, not L x V
        )
        return out.logits[0].float()
