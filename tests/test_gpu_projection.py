"""bench/gpu_projection.py end to end on CPU with tiny shapes: the same code a lent GPU runs
(model building, timed forwards, the ZeroMQ hand-off, the projection), so the script is known to
work before a device is ever lent. The numbers themselves mean nothing here."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_projection_runs_on_cpu_with_tiny_shapes(tmp_path):
    out = tmp_path / "proj.json"
    cpu = tmp_path / "compare.json"  # a CPU-pair result the projection reads its acceptance from
    cpu.write_text(json.dumps({"protocols": {"pinned": {
        "ssd": {"temps": {"0.0": {"humaneval": {"hit_rate": 0.5, "accept_len": 2.0}}}},
        "sync-sd": {"temps": {"0.0": {"humaneval": {"accept_len": 1.5}}}}}}}))
    r = subprocess.run([sys.executable, str(ROOT / "bench" / "gpu_projection.py"), "--shapes", "tiny",
                        "--device", "cpu", "--ctx", "32", "--batches", "1,2", "--ks", "1,3", "--budget", "4",
                        "--reps", "2", "--cpu-json", str(cpu), "--out", str(out)],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    res = json.loads(out.read_text())
    assert res["cpu_pair"] == {"hit_rate": 0.5, "ssd_accept_len": 2.0, "sd_accept_len": 1.5, "source": str(cpu)}
    assert [(x["batch"], x["k"]) for x in res["rows"]] == [(1, 1), (1, 3), (2, 1), (2, 3)]
    for x in res["rows"]:
        assert x["verify_ms"] > 0 and x["tree_ms"] > 0 and x["handoff_ms"] > 0
        assert abs(x["tree_over_verify"] - x["tree_ms"] / x["verify_ms"]) < 1e-9
        assert x["ar_tok_s"] > 0 and x["sd_tok_s"] > 0 and x["ssd_tok_s"] > 0
    assert "| batch | K |" in r.stdout
    # no CUDA here: eager times only, the CUDA-graph columns empty and said to be
    assert res["graphs"] is False and all(x["ssd_tok_s_graphs"] is None for x in res["rows"])
    assert "no CUDA-graph rows: no CUDA here" in r.stdout
