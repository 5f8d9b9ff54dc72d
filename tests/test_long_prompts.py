"""bench/compare.py's context sweep (--prompt-tokens), no server: the long prompts (standard-library
source cut to the asked length with the target's tokenizer, a question after it, fresh and
deterministic per cell), the cells it plans, and the report's tables, plots and verdict on it."""

from __future__ import annotations

import copy
import sys
import sysconfig
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench"))
import compare  # noqa: E402
import long_prompts  # noqa: E402
import modes  # noqa: E402
import report  # noqa: E402

QWEN = Path.home() / ".cache" / "sglang_ssd" / "models" / "hf" / "qwen2.5-coder-0.5b-instruct"
LENGTHS = [1024, 2048, 4096, 8192]


class ChunkTokenizer:
    """One token per 4 characters (about BPE's rate on Python source), in a two-token chat template."""

    vocab: dict[str, int] = {}

    def apply_chat_template(self, messages, add_generation_prompt, tokenize):
        text = messages[0]["content"]
        pieces = ["<user>", *(text[i:i + 4] for i in range(0, len(text), 4)), "<assistant>"]
        return [self.vocab.setdefault(w, len(self.vocab)) for w in pieces]

    def decode(self, ids):
        pieces = {i: w for w, i in self.vocab.items()}
        return "".join(pieces[i] for i in ids)


@pytest.fixture(params=["chunks", "qwen"])
def tok(request):
    if request.param == "chunks":
        return ChunkTokenizer()
    if not (QWEN / "tokenizer.json").exists():
        pytest.skip(f"the Qwen tokenizer is not cached at {QWEN} (compare.py --pair qwen-coder fetches it)")
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(QWEN))


def words(text: str) -> str:
    return " ".join(text.split())


def test_prompts_are_stdlib_source_of_the_asked_length(tok):
    pools = long_prompts.pools(tok, LENGTHS)
    assert list(pools) == ["ctx1024", "ctx2048", "ctx4096", "ctx8192"]
    for n, pool in zip(LENGTHS, pools.values()):
        for i in range(2):
            assert abs(len(pool[i]) - n) <= 0.05 * n, (n, i, len(pool[i]))
    # the first 1024-token prompt: argparse.py from its first line, then a question about the code
    first = words(tok.decode(pools["ctx1024"][0]))
    argparse_py = (Path(sysconfig.get_paths()["stdlib"]) / "argparse.py").read_text()
    assert '"""Command-line parsing library' in first
    code = first.split("```python", 1)[1].split("```", 1)[0]
    assert len(code) > 2000 and words(argparse_py).startswith(words(code))
    assert "```\n\nWrite a docstring for the last function above." in tok.decode(pools["ctx1024"][0])
    # deterministic: a second build gives the same ids
    again = long_prompts.pools(tok, LENGTHS)
    assert [again["ctx8192"][1], again["ctx1024"][0]] == [pools["ctx8192"][1], pools["ctx1024"][0]]


def test_every_cell_gets_fresh_prompts_without_a_shared_prefix(tok):
    cells = modes.plan({}, [0.0, 0.7], 1, [], [0.0], [], long_prompts.pools(tok, LENGTHS), [2])
    prompts = [p for c in cells for p in c.prompts]
    assert len(prompts) == 4 * (2 + 2) == modes.n_requests(cells)
    for i, a in enumerate(prompts):
        for b in prompts[i + 1:]:
            shared = next((j for j, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))
            assert shared < 64  # the chat template's system prompt and "Here is", nothing a radix cache reuses
    questions = {q.split("{")[0] for q in long_prompts.QUESTIONS}
    asked = {next(q for q in questions if q in words(tok.decode(p))) for p in prompts}
    assert len(asked) == len(questions)  # every question asked somewhere


def test_plan_adds_the_context_cells():
    sets = {"humaneval": [[0, j] for j in range(10)]}
    ctx = {"ctx1024": [[1, j] for j in range(10)], "ctx2048": [[2, j] for j in range(10)]}
    cells = modes.plan(sets, [0.0, 0.7], 1, [4], [0.0], ["humaneval"], ctx, [2])
    assert [(c.concurrency, c.temp, c.set, len(c.prompts)) for c in cells] == [
        (1, 0.0, "humaneval", 1), (1, 0.7, "humaneval", 1), (4, 0.0, "humaneval", 4),
        (1, 0.0, "ctx1024", 1), (1, 0.7, "ctx1024", 1), (2, 0.0, "ctx1024", 2),
        (1, 0.0, "ctx2048", 1), (1, 0.7, "ctx2048", 1), (2, 0.0, "ctx2048", 2)]
    seen = [tuple(p) for c in cells for p in c.prompts]
    assert len(seen) == len(set(seen)) == 14
    plain = modes.plan(sets, [0.0, 0.7], 1, [4], [0.0], ["humaneval"])  # no sweep: the cells of before
    assert [(c.concurrency, c.temp, c.set, c.prompts) for c in plain] == [
        (c.concurrency, c.temp, c.set, c.prompts) for c in cells[:3]]
    assert modes.plan(sets, [0.0], 1, [], [], [], long_prompts.pools(None, []), [2]) == plain[:1]
    with pytest.raises(SystemExit, match="ctx1024 has only 10 prompts"):
        modes.plan({}, [0.0], 11, [], [], [], ctx)
    assert [len(p) for p in long_prompts.pools(None, LENGTHS).values()] == [16, 16, 16, 16]  # 64 windows
    assert long_prompts.length_of("ctx2048") == 2048 and long_prompts.length_of("humaneval") is None


def test_kv_pool_grows_only_when_asked():
    server_args = ["--dtype", "float32", "--max-total-tokens", "32768"]
    compare.grow_kv_pool(server_args, 9000)
    assert server_args[-1] == "32768"
    compare.grow_kv_pool(server_args, 4 * 8700)
    assert server_args[-1] == "34800"


# decode tokens/s and TTFT (s) per mode and prompt length, batch 1, T=0
TOK_S = {"ar": {1024: 2.0, 2048: 1.9, 4096: 1.6}, "sd": {1024: 2.5, 2048: 2.3, 4096: 2.0},
         "ssd": {1024: 3.2, 2048: 3.04, 4096: 1.76}}
TTFT_S = {"ar": {1024: 10.0, 2048: 20.0, 4096: 40.0}, "sd": {1024: 12.0, 2048: 24.0, 4096: 48.0},
          "ssd": {1024: 10.2, 2048: 22.0, 4096: 40.0}}


def _cell(tok_s, ttft_s, outputs, tokens=32):
    wall = ttft_s + tokens / tok_s
    return dict(decode_tok_s=tok_s, ttft_ms=1e3 * ttft_s, tokens=tokens, wall_s=wall, throughput_tok_s=tokens / wall,
                accept_len=1.0, outputs=outputs)


def _results(ssd_outputs=((1, 2, 3),)):
    protos = {}
    for m in TOK_S:
        outs = [list(o) for o in ssd_outputs] if m == "ssd" else [[1, 2, 3]]
        by_t = {}
        for t, slow in (("0.0", 1.0), ("0.7", 0.9)):
            by_t[t] = {f"ctx{n}": _cell(v * slow, TTFT_S[m][n], outs) for n, v in TOK_S[m].items()}
            by_t[t]["humaneval"] = dict(_cell(TOK_S[m][1024] * 2, 1.0, [[1, 2, 3]]), wall_s=8.0)  # 4.0 tok/s
        protos[m] = {"cells": {"1": by_t, "2": {"0.0": {"ctx2048": _cell(TOK_S[m][2048], TTFT_S[m][2048],
                                                                         outs * 2, tokens=64)}}}}
    return {"pair_label": "pair", "machine": "x86_64, 2 cores", "modes": list(TOK_S), "sizing": "tiny",
            "labels": {"ar": "AR (plain)", "sd": "STANDALONE (SGLang SD)", "ssd": "SSD (ours)"},
            "steps": {"ar": 0, "sd": 3, "ssd": 0}, "sets": ["humaneval"], "temperatures": [0.0, 0.7],
            "prompt_tokens": [1024, 2048, 4096], "context_concurrency": [2],
            "context_prompt_tokens": {"ctx1024": [1020, 1030], "ctx2048": [2040, 2050, 2045, 2045],
                                      "ctx4096": [4090, 4100]},
            "protocols": {"pinned": protos}, "protocol_text": {"pinned": "pinned"}, "errors": {"pinned": {}}}


def test_context_tables_carry_both_metrics_and_ratios():
    text = report.tables(_results())
    head = "| conc | T | prompt tokens | AR | STANDALONE N=3 | SSD | SSD/AR | SSD/STANDALONE |"
    assert text.count(head) == 2  # decode tokens/s, then TTFT
    tok_table, ttft_table = text.split("time to first token (s) against")
    assert "| 1 | 0.0 | 2048 / 2045 | 1.90 | 2.30 | 3.04 | 1.60x | 1.32x |" in tok_table
    assert "| 1 | 0.7 | 4096 / 4095 | 1.44 | 1.80 | 1.58 | 1.10x | 0.88x |" in tok_table
    assert "| 2 | 0.0 | 2048 / 2045 |" in tok_table  # the concurrent context cell: throughput
    assert "| 1 | 0.0 | 2048 / 2045 | 20.00 | 24.00 | 22.00 | 1.10x | 0.92x |" in ttft_table
    assert "| 1 | 0.0 | 1024 / 1025 | 10.00 | 12.00 | 10.20 | 1.02x | 0.85x |" in ttft_table
    # the one-at-a-time throughput row over "all sets" leaves the sweep out: HumanEval's 32 tokens / 8 s
    assert "| 1 | 0.0 | all sets | 4.00 | 4.00 | 4.00 |" in text
    plain = _results()
    for r in plain["protocols"]["pinned"].values():
        r["cells"] = {"1": {t: {"humaneval": by_s["humaneval"]} for t, by_s in r["cells"]["1"].items()}}
    plain.pop("prompt_tokens")
    assert "Long prompts" not in report.tables(plain) and len(report.verdict(plain)) == len(report.paper_verdict(plain))


def test_context_verdict_greedy_check_and_equal_cores():
    lines = report.verdict(_results())
    assert lines[0].startswith("targets (humaneval, T=0.0, batch 1, pinned)")
    assert lines[-1] == (
        "context targets (standard-library source prompts, T=0.0, batch 1, pinned): SSD/AR decode tokens/s at 2048 "
        "tokens >= 1.5x: measured 1.60x (met); at 4096 tokens >= 1.2x: measured 1.10x (MISSED); SSD/AR TTFT <= "
        "1.05x at every length: 1024: measured 1.02x (met); 2048: measured 1.10x (MISSED); 4096: measured 1.00x (met)")
    assert report.check_greedy(_results()) == []
    diffs = report.check_greedy(_results(ssd_outputs=[(1, 9, 3)]))
    assert "pinned/ssd/concurrency 1/ctx4096 prompt 0: differs from AR at token 1 of 3" in diffs
    assert "pinned/ssd/concurrency 2/ctx2048 prompt 1: differs from AR at token 1 of 3" in diffs
    res = _results()
    shared = copy.deepcopy(res["protocols"]["pinned"])
    shared["ar"]["cells"]["1"]["0.0"]["ctx2048"].update(decode_tok_s=2.0, ttft_ms=19000.0)  # AR better on 2 cores
    res["protocols"]["shared"] = shared
    report.add_equal_cores(res)
    eq = res["protocols"]["equal"]["ar"]["cells"]["1"]["0.0"]
    assert (eq["ctx2048"]["config"], eq["ctx4096"]["config"]) == ("shared", "pinned")
    assert "batch 1, equal): SSD/AR decode tokens/s at 2048 tokens >= 1.5x: measured 1.52x (met)" in \
        report.verdict(res)[-1]
    assert "2048: measured 1.16x (MISSED)" in report.verdict(res)[-1]


def test_context_plots_written(tmp_path):
    pytest.importorskip("matplotlib")
    paths = report.plot(_results(), tmp_path / "context.png")
    assert [p.name for p in paths] == ["context.png", "context_concurrency.png", "context_context.png",
                                       "context_ttft.png"]
    assert all(p.stat().st_size > 1000 for p in paths)
