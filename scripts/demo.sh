#!/usr/bin/env bash
# Set up (if needed) and run the CPU demo: a real SGLang server with SSD over small local models.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/python -m sglang_ssd.launch.demo "$@"
