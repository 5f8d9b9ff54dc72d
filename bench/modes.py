"""What compare.py measures on each server: the workload's cells and how N is tuned.

A cell is (concurrency, temperature, prompt set, prompts). Batch-1 cells serve their prompts one
at a time; a concurrent cell sends all its prompts at once (throughput = tokens / wall time). The
context sweep's cells (--prompt-tokens) are cells like the others whose set is a prompt length
(long_prompts.set_name: ctx1024), so every mode measures, and the report compares, them alike. Every
cell gets its own prompts, disjoint from the others' and from the tuning prompts, so a mode that
learns from what it served (NGRAM's corpus, the prefix caches) never sees a prompt twice.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import servers

MODES = ("ar", "ngram", "sd", "sync-sd", "ssd", "ssd-f32")  # the order they run and are reported in
MIXED = "mixed"  # a concurrent cell whose prompts cycle over the sets


@dataclass
class Cell:
    concurrency: int
    temp: float
    set: str
    prompts: list[list[int]]


def plan(sets: dict[str, list[list[int]]], temps: list[float], per_set: int, levels: list[int],
         conc_temps: list[float], conc_sets: list[str], context: dict[str, Sequence[list[int]]] | None = None,
         context_levels: list[int] = ()) -> list[Cell]:
    """The cells, each with fresh prompts taken in order from `sets` (prompt ids per set); then, for
    each `context` set (long_prompts.pools: one per prompt length), `per_set` prompts one at a time
    at each of `temps` and a cell of each of `context_levels` at each of `conc_temps`."""
    pool = {**sets, **(context or {})}
    cursor = {s: 0 for s in pool}

    def take(name: str) -> list[int]:
        i = cursor[name]
        if i >= len(pool[name]):
            raise SystemExit(f"prompt set {name} has only {len(pool[name])} prompts; ask for fewer")
        cursor[name] += 1
        return pool[name][i]

    cells = [Cell(1, t, s, [take(s) for _ in range(per_set)]) for t in temps for s in sets]
    names = list(sets)
    for c in levels:
        for t in conc_temps:
            for s in conc_sets:
                prompts = [take(names[i % len(names)] if s == MIXED else s) for i in range(c)]
                cells.append(Cell(c, t, s, prompts))
    for s in context or {}:
        cells += [Cell(1, t, s, [take(s) for _ in range(per_set)]) for t in temps]
        cells += [Cell(c, t, s, [take(s) for _ in range(c)]) for c in context_levels for t in conc_temps]
    return cells


def n_requests(cells: list[Cell]) -> int:
    return sum(len(c.prompts) for c in cells)


def measure(run: servers.Run, cells: list[Cell], max_new: int, bar, earlier: dict | None = None) -> dict:
    """Serve every cell; results[concurrency][temperature][set] = servers.summarize_concurrent(...).
    `earlier`: this mode's results from earlier server starts (compare.py --starts): each cell's
    figures then pool every start's requests (tokens over time, counters summed), not a mean of
    means, and its outputs are every start's in order."""
    res = {"startup_s": run.startup_s, "steps": run.steps, "draft_pid": run.draft_pid,
           "draft_cpus_allowed": run.draft_cpus, "log": str(run.log_path), "cells": {}, "raw": {}}
    # (startup_s stays one number, the latest start's, for the report; starts_startup_s lists all)
    if earlier is not None:  # every start's start-up time, in order
        res["starts_startup_s"] = [*(earlier.get("starts_startup_s") or [earlier["startup_s"]]), run.startup_s]
    run.pin_draft()
    for cell in cells:
        before = servers.ssd_counters(run)
        recs, wall = run.generate_many(cell.prompts, cell.temp, max_new, cell.concurrency)
        bar.update(len(cell.prompts))
        after = servers.ssd_counters(run)
        run.pin_draft()  # a restarted draft gets a new PID
        key = f"{cell.concurrency}/{cell.temp}/{cell.set}"
        raw = {"recs": recs, "wall": wall, "counters": servers.counter_delta(before, after)}
        if earlier is not None:
            raw = pool_raw(earlier["raw"][key], raw)
        res["raw"][key] = raw
        summ = servers.summarize_concurrent(raw["recs"], raw["wall"], *_as_before_after(raw["counters"]))
        summ["outputs"] = [r["output_ids"] for r in raw["recs"]]
        summ["starts"] = raw.get("starts", 1)
        res["cells"].setdefault(str(cell.concurrency), {}).setdefault(str(cell.temp), {})[cell.set] = summ
    res["draft_cpus_allowed"] = run.draft_cpus
    return res


def pool_raw(a: dict, b: dict) -> dict:
    """One cell's requests from two server starts as one: requests concatenated, wall times and
    SSD counters summed."""
    return {"recs": a["recs"] + b["recs"], "wall": a["wall"] + b["wall"],
            "counters": servers.counter_sum(a["counters"], b["counters"]), "starts": a.get("starts", 1) + 1}


def _as_before_after(delta: dict) -> tuple[dict, dict]:
    """(before, after) counters whose difference is `delta` (summarize() takes the two)."""
    if not delta:
        return {}, {}
    zero = {k: 0.0 for k in servers.SSD_COUNTERS} | {"k_steps": {}, "mode_steps": {}}
    return zero, delta


def tune(start, mode: str, candidates: list[int], prompts: list[list[int]], tokens: int, bar, log):
    """The best steps (decode tokens/s, T=0, batch 1) over candidates, one server at a time.

    start(n) -> a started servers.Run. Returns (best n, {n: scores}, the best n's Run if it is still
    running (it was the last candidate tried) else None)."""
    if len(candidates) == 1:
        return candidates[0], {}, None
    scores, best, kept = {}, None, None
    for i, n in enumerate(candidates):
        try:
            run = start(n)
        except servers.ModeFailed as e:
            if best is None and i == len(candidates) - 1:
                raise
            log(f"[compare] tune {servers.LABELS[mode]} N={n}: FAILED ({str(e)[:300]})")
            continue
        try:
            recs, _ = run.generate_many(prompts, 0.0, tokens, 1)
            bar.update(len(prompts))
        except Exception:
            run.stop()
            raise
        s = servers.summarize(recs, {}, {})
        scores[n] = {"decode_tok_s": s["decode_tok_s"], "accept_len": s["accept_len"]}
        log(f"[compare] tune {servers.LABELS[mode]} N={n}: {s['decode_tok_s']:.2f} tok/s, "
            f"accept {s['accept_len']:.2f}")
        if best is None or (s["decode_tok_s"] or 0) > (scores[best]["decode_tok_s"] or 0):
            best = n
        if best == n and i == len(candidates) - 1:
            kept = run  # the winner is the server already running: measure on it
        else:
            run.stop()
    return best, scores, kept
