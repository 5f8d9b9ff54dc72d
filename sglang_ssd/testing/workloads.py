"""Structured-generation workloads shared by the tests and the benchmarks: constraints tight
enough that random-weight tiny models finish within a few dozen tokens."""

from __future__ import annotations

REGEX = r"(yes|no)[0-9]{3}"
SCHEMA = {
    "type": "object",
    "properties": {
        "answer": {"type": "string", "enum": ["yes", "no", "maybe"]},
        "n": {"type": "integer", "minimum": 0, "maximum": 99},
    },
    "required": ["answer", "n"],
    "additionalProperties": False,
}
EBNF = 'root ::= "color: " ("red" | "green" | "blue") "; size: " [0-9] [0-9]? ";"'
