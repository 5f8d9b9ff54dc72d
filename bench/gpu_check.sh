#!/usr/bin/env bash
# One short script for a lent GPU (device tool), at most ~8 minutes: the GPU-only tests (a GPU
# server with SSD against Hugging Face greedy, the compiled Triton kernels against their torch
# references, draft placement on the real device count) and the kernel tests under the
# interpreter, then one summary table, then the projection table of bench/gpu_projection.py.
# Usage on the device machine: bash bench/gpu_check.sh
set -uo pipefail
cd "$(dirname "$0")/.."
nvidia-smi --query-gpu=name,memory.total --format=csv || true
bash scripts/setup.sh
.venv/bin/python -m pytest -q tests/test_gpu.py tests/test_kernels.py -ra -p no:cacheprovider \
    --junitxml="${OUT:-/tmp}/gpu_check.xml"
rc=$?
# Issue 5 item 5 / issue 4 targets: AR vs SD vs SSD projected from measured H200 times with
# random-weight Llama-3.1-8B / Llama-3.2-1B shapes (no downloads) and the CPU pair's acceptance.
timeout 240 .venv/bin/python bench/gpu_projection.py --out "${OUT:-/tmp}/gpu_projection.json" \
    | tee "${OUT:-/tmp}/gpu_projection.md" || rc=1
.venv/bin/python - <<'PY'
import os, xml.etree.ElementTree as ET
root = ET.parse(os.path.join(os.environ.get("OUT", "/tmp"), "gpu_check.xml")).getroot()
print("\n| test | result | seconds |\n|---|---|---|")
for tc in root.iter("testcase"):
    res = "fail" if tc.find("failure") is not None or tc.find("error") is not None else \
        "skip" if tc.find("skipped") is not None else "pass"
    print(f"| {tc.get('name')} | {res} | {float(tc.get('time', 0)):.1f} |")
PY
exit $rc
