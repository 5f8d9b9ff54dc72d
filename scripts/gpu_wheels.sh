#!/usr/bin/env bash
# Build the wheel folder that travels to the GPU device machine with the working tree (which has
# no network: ../shared notes, gpu-device.md). The device has Python 3.12, torch 2.11, triton,
# transformers, numpy, pytest, ...; what SSD's draft side needs beyond that is here, every
# dependency named (pip download --no-deps), cp312 manylinux x86-64 wheels only:
#   msgspec, pyzmq           the wire and the draft process's socket (sglang_ssd/wire.py, draft_service.py)
#   xgrammar + apache-tvm-ffi, pydantic, pydantic-core, annotated-types, typing-inspection,
#   typing-extensions        grammar-aware drafting (sglang_ssd/grammar.py), the check's grammar request
#   scipy                    chi-square quantiles of the sampled-law checks (tests/test_qlaw.py, simulate.py)
# Not here, and why: sglang (pins torch 2.14.1; its server needs fastapi, uvicorn, orjson, ... and
# sgl-kernel's CUDA ops), sgl-kernel (1.2 GB installed), flashinfer (593 MB): see bench/gpu_check.sh.
# Checks the folder plus the working tree against one command's 64 MiB and prints
# `wheel folder: PATH` last. Usage: bash scripts/gpu_wheels.sh [DIR]   (default: .gpu-wheels)
set -euo pipefail
cd "$(dirname "$0")/.."
DIR=${1:-${SGLANG_SSD_GPU_WHEELS:-.gpu-wheels}}
LIMIT=$((64 * 1024 * 1024))
WHEELS=(
  msgspec==0.23.0
  pyzmq==27.3.0
  xgrammar==0.2.7
  apache-tvm-ffi==0.1.11
  pydantic==2.14.4
  pydantic-core==2.50.5
  annotated-types==0.8.0
  typing-inspection==0.4.5
  typing-extensions==4.16.0
  scipy==1.17.1
)
PY=${PYTHON:-python3}
mkdir -p "$DIR"
if ! ls "$DIR"/*.whl >/dev/null 2>&1 || [ "$(cat "$DIR/REQUIREMENTS.txt" 2>/dev/null)" != "$(printf '%s\n' "${WHEELS[@]}")" ]; then
  rm -f "$DIR"/*.whl
  "$PY" -m pip download -q --disable-pip-version-check --no-deps --only-binary=:all: \
    --python-version 3.12 --implementation cp --abi cp312 --abi abi3 --abi none \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_26_x86_64 \
    --platform manylinux_2_24_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    --platform any -d "$DIR" "${WHEELS[@]}" 2> >(grep -v "is ignored: it is neither" >&2)
  printf '%s\n' "${WHEELS[@]}" > "$DIR/REQUIREMENTS.txt"
fi
n=$(ls "$DIR"/*.whl | wc -l)
if [ "$n" -ne "${#WHEELS[@]}" ]; then
  echo "gpu_wheels: $n wheels in $DIR for ${#WHEELS[@]} requirements" >&2
  exit 1
fi
(cd "$DIR" && sha256sum *.whl > SHA256SUMS)
wheels=$(cat "$DIR"/*.whl | wc -c)
tree=$(git ls-files -z --cached --others --exclude-standard | xargs -0 -r cat 2>/dev/null | wc -c)
total=$((wheels + tree))
printf 'wheels %.1f MiB + working tree %.1f MiB = %.1f MiB of one command'"'"'s 64 MiB\n' \
  "$(echo "$wheels / 1048576" | bc -l)" "$(echo "$tree / 1048576" | bc -l)" "$(echo "$total / 1048576" | bc -l)"
if [ "$total" -gt "$LIMIT" ]; then
  echo "gpu_wheels: over 64 MiB: the device command cannot carry it" >&2
  exit 1
fi
echo "wheel folder: $(cd "$DIR" && pwd)"
