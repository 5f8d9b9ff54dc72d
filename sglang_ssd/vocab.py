"""The identity of a tokenizer's vocabulary, compared at the handshake so that a draft whose
token ids mean something else than the target's is refused."""

from __future__ import annotations

import hashlib
import json
from typing import Optional


def tokenizer_digest(path: str) -> Optional[str]:
    """sha256 of the (token, id) pairs of the tokenizer at `path`; None if it has none."""
    try:
        from transformers import AutoTokenizer

        tok = AutoTokenizer.from_pretrained(path)
    except Exception:
        return None
    items = sorted(tok.get_vocab().items(), key=lambda kv: kv[1])
    return hashlib.sha256(json.dumps(items).encode()).hexdigest()
