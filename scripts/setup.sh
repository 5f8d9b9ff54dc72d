#!/usr/bin/env bash
# Create .venv (Python 3.11) with sglang==0.5.23 and this package (editable, with test extras).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3.11}
command -v "$PY" >/dev/null 2>&1 || PY=python3
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
.venv/bin/python -m pip install -q --upgrade pip
if ! .venv/bin/python -c "import sglang_ssd, sglang, pytest, hypothesis, openai, gguf, accelerate, jsonschema, matplotlib" >/dev/null 2>&1; then
  .venv/bin/python -m pip install -q -e ".[test]"
fi
