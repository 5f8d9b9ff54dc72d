#!/usr/bin/env bash
# Create .venv (Python 3.11) with sglang==0.5.23 and this package (editable, with test extras).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3.11}
command -v "$PY" >/dev/null 2>&1 || PY=python3
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
  # Only for a new venv: on a machine whose package index is unreachable this step alone
  # spent ~24 minutes retrying before the tests could start.
  .venv/bin/python -m pip install -q --upgrade pip
fi
if ! .venv/bin/python -c "import sglang_ssd, sglang, pytest, hypothesis, openai, gguf, accelerate, jsonschema, matplotlib" >/dev/null 2>&1; then
  .venv/bin/python -m pip install -q -e ".[test]"
fi
