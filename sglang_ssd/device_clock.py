"""Wall time of device work. A CUDA forward returns once its kernels are queued, long before they
end, so on CUDA the clock is read after the device has caught up; elsewhere it is perf_counter."""

from __future__ import annotations

import time

import torch


def now(device) -> float:
    """perf_counter() once `device`'s queued work is done."""
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter()
