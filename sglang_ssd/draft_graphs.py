"""CUDA graphs for the draft's grouped slot forwards (draft_model.DraftModel.forward), per bucket.

A forward's groups (draft_batch.py) become one fixed-shape attention: every group's keys (its
plan's read slots, slot_attention.build_plan) side by side, under one block-diagonal boolean mask,
so each query sees exactly its own group's keys as in the grouped eager forward. The forward is
padded to its bucket (graph_buckets.choose): extra query rows are token 0 at position 0, write a
reserved scratch slot and see only it; extra read columns name the scratch slot and no real row
sees them. Real rows thus compute the eager forward's logits and KV (masked columns add exact
zeros), and are copied out of the graph's output. Forwards without a bucket (a prefill, a batch
past the largest bucket, a mask too large), or whose capture failed, run eagerly, counted by
reason (graph_buckets.GraphStats).

`install(model)` routes a CUDA DraftModel's `forward` through the graphs (returns the DraftGraphs,
or None off CUDA or with SGLANG_SSD_DRAFT_GRAPHS=0). It uses the model's `model` (the HF module),
`cache`, `_io` (write_slots; read_slots: the KV the cache layers return, see draft_model._SlotIO),
`pool`, `dtype`, `device` and slot_attention's plan-less path (the caller's 4D mask).
"""

from __future__ import annotations

import os
from typing import Callable, Optional, Sequence

import torch

from sglang_ssd.cuda_graphs import GraphSet, graphs_available
from sglang_ssd.graph_buckets import BRANCH_BUCKETS, NO_LOGITS, Bucket, GraphStats, choose, token_buckets

MAX_REQUESTS = 64  # request buckets 1..64 (times the branch counts, capped at MAX_TOKENS)
MAX_TOKENS = 512  # DraftModel runs at most 512 query rows per model call (MAX_ROWS) anyway
MAX_GRAPHS = 48
MAX_READ = 1 << 20  # read columns (keys of all groups side by side); the mask cap binds first
CPU = torch.device("cpu")


def enabled_by_env() -> bool:
    return os.environ.get("SGLANG_SSD_DRAFT_GRAPHS", "1").strip().lower() not in ("0", "false", "off", "no")


def plans_of(groups) -> list:
    """slot_attention's per-group plans (keys and masks), on the CPU."""
    from sglang_ssd.slot_attention import build_plan

    return build_plan(groups, CPU)


def read_width(plans) -> int:
    return sum(int(p.read.numel()) for p in plans)


def pad_groups(groups, plans, bucket: Bucket, scratch: int) -> dict:
    """CPU tensors of one forward padded to `bucket`: input_ids [1, T], position_ids [1, T],
    write_slots [T], read_slots [R] (the groups' keys side by side, then the scratch slot) and the
    boolean mask [1, 1, T, R] (True: visible), block-diagonal over the groups."""
    n = sum(len(g) for g in groups)
    r = read_width(plans)
    if n > bucket.tokens or r + (n < bucket.tokens) > bucket.read:
        raise ValueError(f"{n} tokens over {r} read slots do not fit {bucket}")
    ids = torch.zeros(1, bucket.tokens, dtype=torch.long, device=CPU)
    pos = torch.zeros(1, bucket.tokens, dtype=torch.long, device=CPU)
    wr = torch.full((bucket.tokens,), scratch, dtype=torch.long, device=CPU)
    rd = torch.full((bucket.read,), scratch, dtype=torch.long, device=CPU)
    mask = torch.zeros(bucket.tokens, bucket.read, dtype=torch.bool, device=CPU)
    if n:
        ids[0, :n] = torch.tensor([t for g in groups for t in g.tokens], dtype=torch.long, device=CPU)
        pos[0, :n] = torch.tensor([p for g in groups for p in g.positions], dtype=torch.long, device=CPU)
        wr[:n] = torch.tensor([w for g in groups for w in g.write], dtype=torch.long, device=CPU)
    off = 0
    for p in plans:
        w = int(p.read.numel())
        rd[off:off + w] = p.read
        if p.mask is None:
            mask[p.start:p.end, off:off + w] = True
        else:
            mask[p.start:p.end, off:off + w] = p.mask
        off += w
    if bool((rd[:r] == scratch).any()):
        raise ValueError(f"scratch slot {scratch} is read by a real token")
    if n < bucket.tokens:
        mask[n:, r] = True  # padding rows see only the scratch slot
    return {"input_ids": ids, "position_ids": pos, "write_slots": wr, "read_slots": rd, "mask": mask[None, None]}


def slot_forward(model) -> Callable[..., torch.Tensor]:
    """The model's forward over explicit slot tensors and a 4D mask (what a graph captures):
    logits [T, V] float32."""
    def fn(input_ids, position_ids, mask, write_slots, read_slots):
        model._io.write_slots = write_slots
        model._io.read_slots = read_slots
        try:
            out = model.model(input_ids=input_ids, position_ids=position_ids, attention_mask=mask,
                              past_key_values=model.cache, use_cache=True)
        finally:
            model._io.read_slots = None  # the eager forward's layers return the whole pool
        return out.logits[0].float()

    return fn


class DraftGraphs:
    def __init__(self, model, eager: Callable, max_requests: int = MAX_REQUESTS, max_tokens: int = MAX_TOKENS,
                 max_graphs: int = MAX_GRAPHS, branches: Sequence[int] = BRANCH_BUCKETS):
        self.model, self.eager = model, eager
        self.device = torch.device(model.device)
        self.stats = GraphStats(name="draft")
        self.sizes = token_buckets(max_requests, branches, max_tokens)
        self.scratch = model.pool.alloc(1)[0]  # written only by padding rows, read by no real token
        self._fn = slot_forward(model)
        self.graphs = GraphSet(self._fn, self._safe_inputs, self.device, self.stats, max_graphs)

    def _safe_inputs(self, bucket: Bucket) -> dict:
        """Static inputs whose warm-up runs write only the scratch slot."""
        return {k: v.to(self.device) for k, v in pad_groups([], [], bucket, self.scratch).items()}

    @torch.inference_mode()
    def forward(self, groups: Sequence, logits: bool = True) -> Optional[torch.Tensor]:
        """DraftModel.forward's contract: logits [queries, V] float32 (None without logits)."""
        groups = [g for g in groups if len(g)]
        if not logits or not groups:
            if not logits:
                self.stats.fell_back(NO_LOGITS)
            return self.eager(groups, logits)
        n = sum(len(g) for g in groups)
        plans = plans_of(groups)
        pick = choose(n, read_width(plans) + 1, self.sizes, MAX_READ)  # + 1: the scratch column
        if pick.bucket is None:
            self.stats.fell_back(pick.reason)
            return self.eager(groups, logits)
        g, why = self.graphs.get(pick.bucket)
        if g is None:
            self.stats.fell_back(why)
            return self.eager(groups, logits)
        out = g.replay(**pad_groups(groups, plans, pick.bucket, self.scratch))
        self.stats.replayed(n, pick.bucket.tokens)
        return out[:n].clone()  # the graph's output is overwritten by its next replay


def install(model, enabled: Optional[bool] = None, **kw) -> Optional[DraftGraphs]:
    """Route a CUDA DraftModel's forwards through bucketed CUDA graphs; None (nothing changed)
    off CUDA or when disabled (SGLANG_SSD_DRAFT_GRAPHS=0)."""
    on = enabled_by_env() if enabled is None else enabled
    if not on or not graphs_available(model.device):
        return None
    graphs = DraftGraphs(model, model.forward, **kw)
    model.forward = graphs.forward
    model.graphs = graphs
    return graphs
