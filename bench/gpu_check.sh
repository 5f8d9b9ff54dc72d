#!/usr/bin/env bash
# One short script for a lent GPU (device tool): GPU-only tests, then the CPU suite's fast tests.
# Usage on the device machine: bash bench/gpu_check.sh
set -uo pipefail
cd "$(dirname "$0")/.."
nvidia-smi --query-gpu=name,memory.total --format=csv || true
bash scripts/setup.sh
.venv/bin/python -m pytest -q -m gpu tests/test_gpu.py -ra
