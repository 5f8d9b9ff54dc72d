#!/usr/bin/env bash
# Set up (if needed) and run the whole test suite on CPU. Extra arguments go to pytest,
# e.g. `bash scripts/test.sh -m "not slow"` to skip the slow load/fuzz tests locally.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export SGLANG_SSD_TEST_LOGS=${SGLANG_SSD_TEST_LOGS:-$PWD/.test-logs}
exec .venv/bin/python -m pytest -ra --durations=20 "$@"
