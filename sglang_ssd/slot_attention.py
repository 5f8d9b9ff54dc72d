"""Grouped attention over the draft's slot pool, in torch (any device): the draft model's attention.

A forward's queries come in groups (draft_batch.py). Each group attends once over its keys: its
shared prefix (gathered from the pool by one index, whatever the number of queries sharing it)
followed by the group's own new slots, under a boolean block mask [queries, prefix + own] whose
prefix columns are all visible and whose own columns are causal (a run) or per query (tree
branches). Groups never attend over each other's slots, so a forward costs the sum of its groups'
(queries x keys), not (all queries x all keys). This is the shape of shared-prefix ("cascade")
attention; on CPU, SDPA's flash kernel takes the block mask without materialising the scores.

The Hugging Face model calls `slot_attention` (registered as attention implementation NAME) with
the whole pool as keys and values (the cache layers write the new KV at their slots and return
the pool) and the forward's Plan in its keyword arguments.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence

import torch
import torch.nn.functional as F

from sglang_ssd.draft_batch import HOST, Group, slot_tensor

NAME = "ssd_slots"


@dataclass
class GroupPlan:
    start: int  # the group's query rows in the forward: [start, end)
    end: int
    read: torch.Tensor  # int64 pool slots of its keys: prefix, then own
    mask: Optional[torch.Tensor]  # bool [queries, keys], True = visible; None: every key visible


def build_plan(groups: Sequence[Group], device) -> list[GroupPlan]:
    """Keys and masks of every group, once per forward (every layer uses them)."""
    plans, row = [], 0
    for g in groups:
        q, L = len(g), int(g.prefix.numel())
        if g.own is None:
            local = slot_tensor(g.write)
            mask = None
            if q > 1:
                mask = torch.ones(q, L + q, dtype=torch.bool, device=HOST)
                mask[:, L:] = torch.ones(q, q, dtype=torch.bool, device=HOST).tril()
        else:
            lens = torch.tensor([len(o) for o in g.own], dtype=torch.long, device=HOST)
            flat = slot_tensor([s for o in g.own for s in o])
            local, cols = torch.unique(flat, return_inverse=True)
            mask = None
            if not bool((lens == len(local)).all()):  # someone does not see all of the group's own slots
                mask = torch.zeros(q, L + len(local), dtype=torch.bool, device=HOST)
                mask[:, :L] = True
                mask[torch.repeat_interleave(torch.arange(q, device=HOST), lens), L + cols] = True
        read = torch.cat([g.prefix, local]).to(device)
        plans.append(GroupPlan(row, row + q, read, None if mask is None else mask.to(device)))
        row += q
    return plans


def slot_attention(module, query, key, value, attention_mask=None, scaling=None, dropout=0.0,
                   ssd_plan: Optional[list[GroupPlan]] = None, **kwargs):
    """query [1, H, q, D]; key, value: the whole pool [1, H_kv, slots, D]. Returns [1, q, H, D].
    Without a plan: plain attention over the given keys under the caller's 4D mask (a caller
    that gathered them itself, through the cache's read_slots)."""
    gqa = query.shape[1] != key.shape[1]
    if ssd_plan is None:
        out = F.scaled_dot_product_attention(query, key, value, attn_mask=attention_mask, scale=scaling, enable_gqa=gqa)
        return out.transpose(1, 2).contiguous(), None
    out = query.new_empty(query.shape)
    for p in ssd_plan:
        k, v = key.index_select(2, p.read), value.index_select(2, p.read)
        out[:, :, p.start:p.end] = F.scaled_dot_product_attention(
            query[:, :, p.start:p.end], k, v, attn_mask=p.mask, scale=scaling, enable_gqa=gqa)
    return out.transpose(1, 2).contiguous(), None


def register() -> None:
    """Make NAME an attention implementation Hugging Face models can be set to (idempotent)."""
    from transformers import AttentionInterface

    AttentionInterface.register(NAME, slot_attention)
