"""Capture and replay of a fixed-shape forward as a CUDA graph (used only on CUDA).

`StaticGraph(fn, inputs)` runs fn over static input tensors a few times on a side stream (the
warm-up CUDA graphs require, which also lets lazily allocated buffers such as KV caches come into
being), then captures one call; `replay(**values)` copies new values into the static inputs,
replays, and returns the static outputs (overwritten by the next replay: callers copy what they
keep). `GraphSet` holds one StaticGraph per bucket key, captured on first use into one shared
memory pool, up to a cap; a capture that fails is remembered and that key runs eagerly from then
on. Counting and logging of replays and eager fallbacks: graph_buckets.GraphStats.
"""

from __future__ import annotations

import logging
from typing import Callable, Hashable, Optional

import torch

from sglang_ssd.graph_buckets import CAPTURE_FAILED, DISABLED, GRAPH_CAP, NOT_CUDA, GraphStats

logger = logging.getLogger(__name__)


def graphs_available(device) -> bool:
    """CUDA graphs need a CUDA device (and CUDA built into torch)."""
    return torch.device(device).type == "cuda" and torch.cuda.is_available()


class StaticGraph:
    def __init__(self, fn: Callable[..., object], inputs: dict, warmup: int = 2, pool=None):
        self.inputs = inputs
        self.graph = torch.cuda.CUDAGraph()
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(warmup):
                fn(**inputs)
        torch.cuda.current_stream().wait_stream(side)
        with torch.cuda.graph(self.graph, pool=pool):
            self.outputs = fn(**inputs)

    def replay(self, **values):
        for name, v in values.items():
            dst = self.inputs[name]
            if v.shape != dst.shape:
                raise ValueError(f"{name}: {tuple(v.shape)} does not fit the captured {tuple(dst.shape)}")
            dst.copy_(v, non_blocking=True)
        self.graph.replay()
        return self.outputs


class GraphSet:
    """StaticGraphs by bucket key, captured lazily. `make_inputs(key)` returns the static inputs
    for a key, filled with values that are safe to run (the warm-up really executes fn)."""

    def __init__(self, fn: Callable[..., object], make_inputs: Callable[[Hashable], dict], device,
                 stats: Optional[GraphStats] = None, max_graphs: int = 64, enabled: bool = True):
        self.fn, self.make_inputs = fn, make_inputs
        self.stats = stats if stats is not None else GraphStats()
        self.max_graphs = max_graphs
        self.enabled = enabled and graphs_available(device)
        self.why_not = "" if self.enabled else (DISABLED if not enabled else NOT_CUDA)
        self.graphs: dict = {}
        self.failed: set = set()
        self.pool = torch.cuda.graph_pool_handle() if self.enabled else None

    def get(self, key: Hashable) -> tuple[Optional[StaticGraph], str]:
        """(the graph for key, "") or (None, why it runs eagerly); captures on first use."""
        if not self.enabled:
            return None, self.why_not
        g = self.graphs.get(key)
        if g is not None:
            return g, ""
        if key in self.failed:
            return None, CAPTURE_FAILED
        if len(self.graphs) >= self.max_graphs:
            return None, GRAPH_CAP
        try:
            g = StaticGraph(self.fn, self.make_inputs(key), pool=self.pool)
        except Exception as e:  # eager for this key from now on; the first failure says why
            self.failed.add(key)
            logger.warning("%s CUDA graph capture failed for %s (eager from now on): %s: %s",
                           self.stats.name, key, type(e).__name__, e)
            torch.cuda.synchronize()
            return None, CAPTURE_FAILED
        self.graphs[key] = g
        self.stats.captures += 1
        return g, ""
