#!/usr/bin/env bash
# A Python 3.12 virtualenv that reproduces the GPU device machine's Python (../shared notes:
# torch 2.11.0, triton 3.6, transformers 5.17, accelerate, safetensors, tokenizers, numpy,
# msgpack, pytest, psutil, requests, uvloop, prometheus-client; NO sglang, sgl-kernel, flashinfer,
# pyzmq, msgspec, xgrammar, orjson, fastapi), for `bench/gpu_check.sh --dry-run`.
# PyPI's torch 2.11.0 is the CUDA 13 build, as on the device; here it runs on the CPU.
# Prints the venv's path on its last line. Usage: bash scripts/gpu_dryrun_venv.sh [VENV]
set -euo pipefail
VENV=${1:-${SGLANG_SSD_GPU_DRYRUN_VENV:-$HOME/.cache/sglang_ssd/gpu-dryrun-venv}}
PKGS=(torch==2.11.0 triton==3.6.0 "transformers==5.17.*" accelerate safetensors tokenizers numpy
      msgpack pytest psutil requests uvloop prometheus-client)
want() {
  "$VENV/bin/python" - <<'PY' 2>/dev/null
import sys, torch, triton, transformers
ok = sys.version_info[:2] == (3, 12) and torch.__version__.startswith("2.11.0") \
    and triton.__version__.startswith("3.6") and transformers.__version__.startswith("5.17")
for absent in ("sglang", "sgl_kernel", "flashinfer", "zmq", "msgspec", "xgrammar", "orjson", "fastapi"):
    try:
        __import__(absent)
        ok = False  # the device has none of them: neither may this venv
    except ImportError:
        pass
import accelerate, safetensors, tokenizers, numpy, msgpack, pytest, psutil, requests  # noqa: F401
sys.exit(0 if ok else 1)
PY
}
if [ -x "$VENV/bin/python" ] && want; then
  echo "$VENV"
  exit 0
fi
PY=${PYTHON312:-}
if [ -z "$PY" ]; then
  for c in python3.12 "$HOME/.pyenv/versions/3.12.1/bin/python3.12" /usr/bin/python3.12; do
    if command -v "$c" >/dev/null 2>&1 && "$c" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 12))' 2>/dev/null; then
      PY=$c
      break
    fi
  done
fi
if [ -z "$PY" ]; then
  for d in "$HOME"/.pyenv/versions/3.12*/bin/python3.12; do [ -x "$d" ] && PY=$d && break; done
fi
[ -n "$PY" ] || { echo "gpu_dryrun_venv: no Python 3.12 on this machine (set PYTHON312)" >&2; exit 3; }
rm -rf "$VENV"
mkdir -p "$(dirname "$VENV")"
"$PY" -m venv "$VENV"
"$VENV/bin/python" -m pip install -q --disable-pip-version-check "${PKGS[@]}" >&2
want || { echo "gpu_dryrun_venv: $VENV does not match the device's Python" >&2; exit 1; }
echo "$VENV"
