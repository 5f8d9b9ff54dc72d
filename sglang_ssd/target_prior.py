"""What the target's forwards cost before its first round: its linear layers, timed at start.

The round cost model (round_costs.py) learns every forward from the rounds served, but a forward
never served is unknown: a plain step at the thread count plain rounds would use, or a sync verify
of K+1 tokens per request on the draft's cores too. On the 2-core EPYC a 2-request bucket served
20 SSD rounds (verify 420 ms on the target's one core) before it measured that a verify on both
cores costs 215 ms, which made sync rounds 1.25x faster; a line through the decode steps it had
(1-2 tokens) put 10 tokens at 700 ms. So a CPU server times, once at start and before its draft
process runs, the linear layers of one decoder layer and the lm_head at 1-32 rows per thread count
it may compute on (`measure`), and scales them to the whole body: a prior whose shape in rows
(memory-bound, then compute-bound) and in threads is this machine's; the cost model scales it to
the forwards it then measures (attention, norms and the scheduler's own time around the linears).
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Callable, Iterable

import torch
import torch.nn.functional as F

logger = logging.getLogger(__name__)

ROWS = (1, 2, 4, 8, 16, 32)  # tokens per forward timed (a verify of 8 requests x 4 tokens is 32)
REPEATS = 2  # per point, the fastest kept (the first may make oneDNN's kernels)
_LAYER = re.compile(r"(?:^|\.)layers\.(\d+)\.")


def linears_of(model: torch.nn.Module) -> tuple[list[tuple], int]:
    """([(call, in_features, dtype, is_lm_head)] for every linear layer of decoder layer 0 and the
    lm_head, the number of decoder layers): each call multiplies [rows, in] by the layer's weight
    through the kernel the layer runs (patches/cpu_packed_linear.py's, else F.linear)."""
    calls, layers = [], set()
    for name, mod in model.named_modules():
        m = _LAYER.search(name)
        if m:
            layers.add(int(m.group(1)))
        weight = getattr(mod, "weight", None)
        if not isinstance(weight, torch.Tensor) or weight.dim() != 2 or not weight.is_floating_point():
            continue
        kernel = getattr(mod, "_ssd_linear", None)
        head = type(mod).__name__ == "ParallelLMHead" or name.endswith("lm_head")
        linear = kernel is not None or type(mod).__name__.endswith("Linear")
        if not (head or (linear and m is not None and m.group(1) == "0")):
            continue
        if kernel is None and weight.stride() == (0, 0):
            continue  # a placeholder without its kernel: nothing to time
        call = (lambda x, k=kernel, w=weight: k(x, w)) if kernel is not None else \
            (lambda x, w=weight: F.linear(x, w))
        calls.append((call, int(weight.shape[1]), weight.dtype, head))
    return calls, len(layers)


def time_rows(calls, layers: int, rows: Iterable[int] = ROWS, repeats: int = REPEATS) -> dict[int, float]:
    """Seconds of the body's linear layers (layer 0's times `layers`, the lm_head once) per row count."""
    out = {}
    for n in rows:
        total = 0.0
        for call, width, dtype, head in calls:
            x = torch.randn(n, width).to(dtype)
            best = float("inf")
            for _ in range(repeats):
                t0 = time.perf_counter()
                call(x)
                best = min(best, time.perf_counter() - t0)
            total += best * (1 if head else max(layers, 1))
        out[n] = total
    return out


def measure(model: torch.nn.Module, counts: Iterable[tuple[int, Callable[[], None]]],
            rows: Iterable[int] = ROWS) -> dict[int, dict[int, float]]:
    """{threads: {rows: seconds}} of the target's linear layers, for each (threads, apply) in
    `counts` (apply() puts this process on that many threads and their cores); {} when the model
    has no linear layer this can time."""
    calls, layers = linears_of(model)
    if not calls:
        return {}
    prior: dict[int, dict[int, float]] = {}
    t0 = time.perf_counter()
    with torch.inference_mode():
        for threads, apply in counts:
            apply()
            prior[threads] = time_rows(calls, layers, tuple(rows))
    logger.info("SSD: the target's linear layers (%d in decoder layer 0, x %d layers, and the lm_head) timed "
                "in %.1f s, ms by rows per thread count: %s", sum(1 for c in calls if not c[3]), layers,
                time.perf_counter() - t0, {t: {n: round(1e3 * v, 1) for n, v in p.items()} for t, p in prior.items()})
    return prior
