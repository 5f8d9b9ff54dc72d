"""Long prompts for compare.py's context sweep (--prompt-tokens): real source code, the Python
standard library's own modules, cut at a line boundary so that the chat-templated prompt
(prompt_sets.encode with the target's tokenizer) is within TOLERANCE of the asked length, then a
question about the code.

Prompt i of length slot s (of `slots` lengths) is source window g = i * slots + s: module
MODULES[g % len(MODULES)] from line (g // len(MODULES)) * STRIDE on, so no two prompts of a run (any
length, any cell) start with the same code, and a server's prefix cache has nothing to reuse beyond
the chat template's system prompt and the header's first words; its question is
QUESTIONS[(i + s) % len(QUESTIONS)]. Deterministic: the same tokenizer and Python give the same
prompts on every run.
"""

from __future__ import annotations

import re
import sysconfig
from collections.abc import Sequence
from pathlib import Path

import prompt_sets

# pure-Python modules of >= 16k tokens each (Qwen2.5's tokenizer, Python 3.11): room for an 8k
# window starting at any of the WINDOWS offsets; textwrap (~4k tokens) and the like are too short
MODULES = ("argparse", "inspect", "difflib", "subprocess", "typing", "tarfile", "pydoc", "doctest", "enum",
           "logging/__init__", "ipaddress", "mailbox", "datetime", "_pyio", "urllib/request", "unittest/mock")
WINDOWS, STRIDE = 4, 250  # source windows per module, lines between their starts
TOLERANCE = 0.05
QUESTIONS = ("Write a docstring for the last function above.",
             "Explain what the class {cls} above does.",
             "Which edge cases does the last function above not handle?",
             "Summarize what the code above does in three sentences.")
PREFIX = "ctx"  # the cell's set name: ctx1024


def set_name(n_tokens: int) -> str:
    return f"{PREFIX}{n_tokens}"


def length_of(name: str) -> int | None:
    """The asked prompt length of a context cell's set name, None for any other set."""
    return int(name[len(PREFIX):]) if name.startswith(PREFIX) and name[len(PREFIX):].isdigit() else None


def source(module: str) -> list[str]:
    path = Path(sysconfig.get_paths()["stdlib"]) / f"{module}.py"
    if not path.exists():
        raise SystemExit(f"no {path}: long prompts need this Python's standard library sources")
    return path.read_text(errors="replace").splitlines(keepends=True)


def text(module: str, start: int, lines: list[str], question: str) -> str:
    cls = re.findall(r"^class (\w+)", "".join(lines), re.M)
    if "{cls}" in question:
        question = question.format(cls=cls[-1]) if cls else QUESTIONS[0]
    part = f", from line {start + 1}" if start else ""
    return (f"Here is {module}.py from the Python standard library{part}:\n\n```python\n{''.join(lines)}```\n\n"
            f"{question}")


def build(tok, n_tokens: int, window: int, question: str) -> list[int]:
    """The prompt ids of source window `window` and `question`: the most lines whose whole prompt is
    <= n_tokens (or one line more, if that is closer), within TOLERANCE of n_tokens."""
    module, start = MODULES[window % len(MODULES)], (window // len(MODULES)) * STRIDE
    lines = source(module)[start:]

    def ids(k: int) -> list[int]:
        return prompt_sets.encode(tok, text(module, start, lines[:k], question))

    lo, hi = 1, min(len(lines), n_tokens)  # largest k with len(ids(k)) <= n_tokens: each line >= 1 token
    while lo < hi:
        mid = (lo + hi + 1) // 2
        lo, hi = (mid, hi) if len(ids(mid)) <= n_tokens else (lo, mid - 1)
    best = min((ids(k) for k in (lo, lo + 1) if k <= len(lines)), key=lambda p: abs(len(p) - n_tokens))
    if abs(len(best) - n_tokens) > TOLERANCE * n_tokens:
        raise SystemExit(f"{module}.py from line {start + 1} gives a {len(best)}-token prompt, not "
                         f"{n_tokens} +- {TOLERANCE:.0%}: ask for shorter --prompt-tokens or fewer prompts")
    return best


class Pool(Sequence):
    """The prompts of one length, built on first use: pool[i] is prompt i (modes.plan takes them in
    order, one per request, so every cell gets fresh ones)."""

    def __init__(self, tok, n_tokens: int, slot: int = 0, slots: int = 1):
        self.tok, self.n_tokens, self.slot, self.slots, self.built = tok, n_tokens, slot, slots, {}

    def __len__(self) -> int:
        return (len(MODULES) * WINDOWS - self.slot + self.slots - 1) // self.slots

    def __getitem__(self, i: int) -> list[int]:
        if not 0 <= i < len(self):
            raise IndexError(i)
        if i not in self.built:
            question = QUESTIONS[(i + self.slot) % len(QUESTIONS)]
            self.built[i] = build(self.tok, self.n_tokens, i * self.slots + self.slot, question)
        return self.built[i]


def pools(tok, lengths: list[int]) -> dict[str, Pool]:
    """{set name: Pool} for each asked length, their source windows disjoint."""
    return {set_name(n): Pool(tok, n, s, len(lengths)) for s, n in enumerate(lengths)}
