"""bench/compare.py's workload plan and report, on synthetic results (no server, no model): every cell
gets fresh prompts, the tables carry the ratios on the same cell, the greedy check catches a
difference, the plots are written."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench"))
import modes  # noqa: E402
import report  # noqa: E402

SETS = {s: [[i, j] for j in range(10)] for i, s in enumerate(["humaneval", "math"])}


def test_plan_gives_every_cell_fresh_prompts():
    cells = modes.plan(SETS, [0.0, 0.7], 2, [4], [0.0, 0.7], [modes.MIXED])
    assert [(c.concurrency, c.temp, c.set, len(c.prompts)) for c in cells] == [
        (1, 0.0, "humaneval", 2), (1, 0.0, "math", 2), (1, 0.7, "humaneval", 2), (1, 0.7, "math", 2),
        (4, 0.0, "mixed", 4), (4, 0.7, "mixed", 4)]
    seen = [tuple(p) for c in cells for p in c.prompts]
    assert len(seen) == len(set(seen)) == modes.n_requests(cells)
    assert [p[0] for p in cells[4].prompts] == [0, 1, 0, 1]  # mixed: cycles over the sets
    with pytest.raises(SystemExit, match="only 10 prompts"):
        modes.plan(SETS, [0.0], 11, [], [], [])


def _cell(tok_s, accept, outputs, **ssd):
    return dict(decode_tok_s=tok_s, throughput_tok_s=tok_s * 2, tokens=32, wall_s=32 / (tok_s * 2), accept_len=accept,
                ttft_ms=100.0, outputs=outputs, **ssd)


def _results(ssd_outputs):
    ssd_extra = dict(hit_rate=0.9, ssd_accept_len=3.5, round_ms_per_round=900.0, verify_ms_per_round=600.0,
                     draft_wait_ms_per_round=250.0, first_wait_ms_per_round=20.0, draft_tree_ms_per_round=500.0,
                     handoff_ms_per_round=1.5, k_steps={"4": 3, "3": 1, "0": 4},
                     mode_steps={"ssd": 4, "plain": 4})
    speeds = {"ar": (2.0, 1.0), "ngram": (2.2, 1.4), "sd": (1.6, 3.0), "sync-sd": (1.2, 3.0), "ssd": (2.4, 3.4)}
    protos = {}
    for m, (v, a) in speeds.items():
        outs = ssd_outputs if m == "ssd" else [[1, 2, 3]]
        extra = ssd_extra if m == "ssd" else {}
        protos[m] = {"cells": {"1": {"0.0": {"humaneval": _cell(v, a, outs, **extra)}},
                               "4": {"0.0": {"mixed": _cell(v * 2, a, outs * 4, **extra)}}}}
    return {"pair_label": "pair", "machine": "x86_64, 2 cores", "modes": list(speeds), "sizing": "tiny",
            "labels": {"ar": "AR (plain)", "ngram": "NGRAM (SGLang)", "sd": "STANDALONE (SGLang SD)",
                       "sync-sd": "sync-SD (ours)", "ssd": "SSD (ours)"},
            "steps": {"ar": 0, "ngram": 5, "sd": 3, "sync-sd": 3, "ssd": 0}, "sets": ["humaneval"],
            "temperatures": [0.0], "protocols": {"pinned": protos}, "protocol_text": {"pinned": "pinned"},
            "errors": {"pinned": {}}}


def test_tables_show_ssd_ratios_and_round_breakdown():
    text = report.tables(_results([[1, 2, 3]]))
    assert "| AR | NGRAM 5 tok | STANDALONE N=3 | sync-SD N=3 | SSD |" in text
    # SSD per cell: K (the mean over speculated rounds: plain rounds' K 0 left out), rounds per mode,
    # tokens/s, SSD/STANDALONE, SSD/AR, SSD/sync-SD, then the round breakdown
    assert ("| 1 | 0.0 | humaneval | auto 3.8 | 4/0/4 | 2.40 | 1.50x | 1.20x | 2.00x | 3.40 | 0.90 | 900 | 600 | 250 | 20 |"
            in text)
    assert "| 4 | 0.0 | mixed | auto 3.8 | 4/0/4 | 9.60 | 1.50x | 1.20x | 2.00x |" in text  # throughput when concurrent
    assert "| 1 | 0.0 | all sets | 4.00 | 4.40 | 3.20 | 2.40 | 4.80 | 1.50x | - | 1.20x |" in text


def test_greedy_check_and_verdict():
    assert report.check_greedy(_results([[1, 2, 3]])) == []
    diffs = report.check_greedy(_results([[1, 9, 3]]))
    assert diffs == ["pinned/ssd/concurrency 1/humaneval prompt 0: differs from AR at token 1 of 3",
                     *[f"pinned/ssd/concurrency 4/mixed prompt {i}: differs from AR at token 1 of 3" for i in range(4)]]
    lines = report.verdict(_results([[1, 2, 3]]))
    assert "SSD/best AR >= 1.6x: measured 1.20x (MISSED)" in lines[0]
    assert "both drafts float32 on the same kernels, >= 1.5x: not measured" in lines[0]
    assert "T_p = draft tree / verify = 500/600 = 0.83" in lines[1]


def test_plots_written(tmp_path):
    pytest.importorskip("matplotlib")
    paths = report.plot(_results([[1, 2, 3]]), tmp_path / "compare.png")
    assert [p.name for p in paths] == ["compare.png", "compare_concurrency.png"]
    assert all(p.stat().st_size > 1000 for p in paths)


def test_equal_cores_takes_each_modes_better_configuration():
    """Run under both protocols: the headline table gives every mode its better configuration on
    the same two cores (here AR is faster on one core, STANDALONE on two), and the verdict reads it."""
    res = _results([[1, 2, 3]])
    shared = {m: {"cells": {c: {t: {s: dict(x, decode_tok_s=x["decode_tok_s"] * (1.25 if m == "sd" else 0.8),
                                            throughput_tok_s=x["throughput_tok_s"] * (1.25 if m == "sd" else 0.8))
                                    for s, x in by_s.items()} for t, by_t in by_c.items() for by_s in [by_t]}
                              for c, by_c in r["cells"].items()}}
              for m, r in res["protocols"]["pinned"].items()}
    res["protocols"]["shared"] = shared
    report.add_equal_cores(res)
    eq = res["protocols"]["equal"]
    assert eq["ar"]["cells"]["1"]["0.0"]["humaneval"]["config"] == "pinned"
    assert eq["sd"]["cells"]["1"]["0.0"]["humaneval"]["config"] == "shared"
    assert eq["sd"]["cells"]["1"]["0.0"]["humaneval"]["decode_tok_s"] == 2.0
    assert report.tables(res).index("Equal cores") < report.tables(res).index("### pinned")
    assert "batch 1, equal): SSD/best AR >= 1.6x: measured 1.20x" in report.verdict(res)[0]
    assert "default draft dtype / STANDALONE: measured 1.20x" in report.verdict(res)[0]


class _FakeRun:
    """A servers.Run stand-in: every request takes 1 s after a 0.25 s first token (x `slow`), the
    SSD counters advance by 10 steps and 8 lookups (6 hits) a cell."""

    mode, steps, draft_pid, draft_cpus, log_path = "ssd", 0, None, None, "log"

    def __init__(self, slow: float, startup_s: float = 30.0):
        self.slow, self.startup_s, self.n = slow, startup_s, 0

        class _Server:
            def ssd_stats(inner):
                z = {k: 0 for k in __import__("servers").SSD_COUNTERS}
                return z | {"steps": 10 * self.n, "lookups": 8 * self.n, "hits": 6 * self.n,
                            "k_steps": {"4": 10 * self.n}, "mode_steps": {"ssd": 10 * self.n}}
        self.server = _Server()

    def pin_draft(self):
        pass

    def generate_many(self, prompts, temp, max_new, concurrency):
        self.n += 1
        recs = [{"tokens": 9, "e2e_s": self.slow, "ttft_s": 0.25 * self.slow, "verify_ct": 3,
                 "output_ids": list(p)} for p in prompts]
        return recs, self.slow * (1 if concurrency > 1 else len(prompts))


def test_several_starts_pool_every_requests_time_not_a_mean_of_means():
    """compare.py --starts: a cell measured on a fast start (1 s a request) and a slow one (3 s)
    reports the pooled figures: 16 decode tokens over 0.75 + 2.25 s, not the mean of 10.7 and
    3.6 tokens/s; counters summed over both starts; outputs of both starts in order."""
    cells = modes.plan({"humaneval": [[1, 2], [3, 4]]}, [0.0], 1, [], [], [])
    bar = type("Bar", (), {"update": lambda self, n: None})()
    first = modes.measure(_FakeRun(1.0), cells, 9, bar)
    both = modes.measure(_FakeRun(3.0, startup_s=40.0), cells, 9, bar, first)
    one = first["cells"]["1"]["0.0"]["humaneval"]
    got = both["cells"]["1"]["0.0"]["humaneval"]
    assert one["decode_tok_s"] == pytest.approx(8 / 0.75) and one["starts"] == 1
    assert got["decode_tok_s"] == pytest.approx(16 / 3.0) and got["starts"] == 2
    assert got["tokens"] == 18 and got["outputs"] == [[1, 2], [1, 2]]
    assert got["hit_rate"] == pytest.approx(0.75) and got["rounds"] == 20
    assert got["k_steps"] == {"4": 20} and got["mode_steps"] == {"ssd": 20}
    assert both["starts_startup_s"] == [30.0, 40.0]
