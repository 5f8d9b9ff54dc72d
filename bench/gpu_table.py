"""The GPU check's one table, from what bench/gpu_check.sh left in its output folder.

Reads steps.tsv (each step: name, status, seconds, note), the pytest JUnit files (*.xml), the
draft check's rows (gpu_draft_check.json) and the projection (gpu_projection.json), and prints one
Markdown table: every step, every test, every draft-side check, the verify and tree-step times
with and without CUDA graphs, and AR / sync SD / SSD tokens per second at each batch (random
weights with the CPU pair's acceptance: a PROJECTION, labelled so). Usage: python bench/gpu_table.py DIR
"""

from __future__ import annotations

import json
import sys
import xml.etree.ElementTree as ET
from pathlib import Path


def _fmt(x, unit=""):
    return "n/a" if x is None else f"{x:.2f}{unit}"


def rows_from(out: Path) -> list[tuple[str, str, str, str]]:
    rows = []
    steps = out / "steps.tsv"
    if steps.exists():
        for line in steps.read_text().splitlines():
            name, status, secs, note = (line.split("\t") + ["", "", ""])[:4]
            rows.append((f"step: {name}", status, note, secs))
    for xml in sorted(out.glob("*.xml")):
        for tc in ET.parse(xml).getroot().iter("testcase"):
            sk = tc.find("skipped")
            res = "FAIL" if tc.find("failure") is not None or tc.find("error") is not None else \
                "skipped" if sk is not None else "pass"
            why = (sk.get("message") or "")[:140] if sk is not None else ""
            rows.append((f"test {Path(tc.get('classname', '').replace('.', '/')).name}::{tc.get('name')}",
                         res, why, f"{float(tc.get('time', 0)):.1f}"))
    dc = out / "gpu_draft_check.json"
    if dc.exists():
        for r in json.loads(dc.read_text())["rows"]:
            res = r["result"] if r.get("skipped") else f"{'ok' if r['ok'] else 'FAIL'}: {r['result']}"
            rows.append((r["check"], res, r.get("detail", ""), str(r.get("seconds", ""))))
    pj = out / "gpu_projection.json"
    if pj.exists():
        p = json.loads(pj.read_text())
        tag = f"{p['shapes']} random weights, {p['dtype']}, ctx {p['ctx']}"
        for r in p["rows"]:
            rows.append((f"verify K={r['k']} (K+1 tokens) batch {r['batch']}, eager / CUDA graphs",
                         f"{_fmt(r['verify_ms'])} / {_fmt(r.get('verify_graph_ms'))} ms", tag, ""))
        seen = set()
        for r in p["rows"]:
            if r["batch"] in seen:
                continue
            seen.add(r["batch"])
            rows.append((f"draft tree step (B={p['budget']} branches/request) batch {r['batch']}, eager / CUDA graphs",
                         f"{_fmt(r.get('tree_step_ms'))} / {_fmt(r.get('tree_step_graph_ms'))} ms", tag, ""))
        for sfx, label in (("", "eager"), ("_graphs", "CUDA graphs")):
            for bs in sorted({r["batch"] for r in p["rows"]}):
                mine = [r for r in p["rows"] if r["batch"] == bs and r.get("ssd_tok_s" + sfx) is not None]
                if not mine:
                    rows.append((f"AR / sync SD / SSD tok/s, batch {bs}, {label}", "n/a",
                                 "no CUDA graphs here" if sfx else "", ""))
                    continue
                best = max(mine, key=lambda r: r["ssd_tok_s" + sfx])
                rows.append((f"AR / sync SD / SSD tok/s, batch {bs}, {label} (PROJECTION)",
                             f"{best['ar_tok_s' + sfx]:.0f} / {best['sd_tok_s' + sfx]:.0f} / {best['ssd_tok_s' + sfx]:.0f}",
                             f"best K={best['k']}; acceptance and hit rate from the CPU pair "
                             f"({p['cpu_pair']['source']}), times measured; {tag}", ""))
    return rows


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    out = Path(argv[0] if argv else "/tmp/ssd-gpu-check")
    rows = rows_from(out)
    print("\n| check | result | detail | s |\n|---|---|---|---|")
    for name, res, detail, secs in rows:
        print(f"| {name} | {res} | {detail.replace('|', '/')} | {secs} |")
    failed = [r for r in rows if r[1].startswith("FAIL") or r[1] == "fail"]
    print(f"\n{len(rows)} rows, {len(failed)} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
