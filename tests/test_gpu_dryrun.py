"""The GPU check's dry run (bench/gpu_check.sh --dry-run), as the device machine would run it: a
Python 3.12 virtualenv with torch 2.11 and none of SGLang's stack (scripts/gpu_dryrun_venv.sh,
made once and kept in ~/.cache/sglang_ssd; about 5 GB from PyPI), the wheel folder built by
scripts/gpu_wheels.sh, installed and run without a network (`unshare -n` where allowed). Every
step that needs no CUDA runs; the CUDA ones are listed as skipped."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.slow


def _venv() -> Path:
    r = subprocess.run(["bash", str(ROOT / "scripts" / "gpu_dryrun_venv.sh")], capture_output=True, text=True,
                       timeout=3600)
    if r.returncode == 3:
        pytest.skip(f"no Python 3.12 on this machine for the device-like virtualenv: {r.stderr.strip()}")
    assert r.returncode == 0, r.stderr[-3000:]
    return Path(r.stdout.strip().splitlines()[-1])


def test_gpu_check_dry_run_passes_offline(tmp_path):
    venv = _venv()
    wheels = tmp_path / "wheels"
    r = subprocess.run(["bash", str(ROOT / "scripts" / "gpu_wheels.sh"), str(wheels)], capture_output=True,
                       text=True, timeout=900, cwd=ROOT)
    assert r.returncode == 0, r.stderr[-3000:]
    assert r.stdout.strip().splitlines()[-1] == f"wheel folder: {wheels}"
    offline = subprocess.run(["unshare", "-n", "true"], capture_output=True).returncode == 0
    cmd = (["unshare", "-n"] if offline else []) + ["bash", str(ROOT / "bench" / "gpu_check.sh"), "--dry-run",
                                                     "--wheels", str(wheels)]
    env = dict(os.environ, PATH=f"{venv / 'bin'}:{os.environ['PATH']}", OUT=str(tmp_path / "out"),
               SGLANG_SSD_GPU_SITE=str(tmp_path / "site"))
    env.pop("PYTHONPATH", None)
    env.pop("VIRTUAL_ENV", None)
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=1500, env=env, cwd=ROOT)
    out = p.stdout
    assert p.returncode == 0, (out + p.stderr)[-6000:]
    assert f"wheel folder: {wheels}" in out
    assert "steps on the GPU (bash bench/gpu_check.sh):" in out
    for step in ("1 env", "2 install", "3 imports", "4 cpu-tests", "5 gpu-tests", "6 draft-check", "7 projection"):
        assert f"  {step} " in out, step
    assert "python 3.12" in out and "torch 2.11.0" in out and "CUDA available: False" in out
    assert "sglang: absent" in out and f"ok sglang_ssd.speculator ({tmp_path / 'site'}" in out
    for skipped in ("gpu-tests on CUDA", "draft-check on CUDA", "projection on CUDA", "SGLang server on CUDA"):
        assert f"| step: {skipped} | skipped |" in out, skipped
    for row in ("| greedy tokens vs HF target (cpu) | ok: 4/4 identical |",
                "| seeded sampling vs seeded reference (cpu) | ok: 16/16 identical |",
                "| sampled law vs exact target law (cpu) | ok: chi-square pass |",
                "| grammar request, regex (yes|no)[0-9]{3} (cpu) | ok: 2/2 identical, 2/2 match |",
                "| draft tree steps, eager vs CUDA graphs | skipped: needs CUDA |",
                "| test test_device_defaults::test_speculator_rounds_under_a_meta_default | pass |",
                "| test test_gpu_draft::test_draft_graphs_replay_the_eager_forward | skipped | needs CUDA |"):
        assert row in out, row
    assert "AR / sync SD / SSD tok/s, batch 8, eager (PROJECTION)" in out
    assert " 0 failed" in out and "gpu_check: all steps passed" in out
