"""How the worker describes a scheduler request to the draft: its sampling law, its grammar and
its Begin message (one place, for a request's first round and for a resync)."""

from __future__ import annotations

from typing import Optional

from sglang_ssd import wire
from sglang_ssd.grammar import grammar_spec_of
from sglang_ssd.sampling import is_greedy
from sglang_ssd.verify import needs_plain_path


def sampling_of(req) -> Optional[wire.Sampling]:
    """The draft-side view of a sampled request; None for greedy (and plain-path) requests."""
    sp = req.sampling_params
    if is_greedy(sp.temperature, sp.top_k) or needs_plain_path(req):
        return None
    return wire.Sampling(temperature=float(sp.temperature), top_k=int(sp.top_k), top_p=float(sp.top_p),
                         min_p=float(sp.min_p), seed=sp.sampling_seed)


def grammar_of(req) -> dict:
    """Begin's grammar fields: the constraint, for the draft's grammar-aware drafting."""
    kind, spec = grammar_spec_of(req)
    if not kind:
        return {}
    return {"grammar_kind": kind, "grammar": spec, "grammar_start": len(req.origin_input_ids)}


def begin_of(req, prompt: list[int], pending: int) -> wire.Begin:
    """The draft learns a request: its committed tokens, the token pending verification, its law."""
    return wire.Begin(rid=req.rid, prompt=prompt, pending=int(pending), sampling=sampling_of(req),
                      **grammar_of(req))


def warm_of(req, first: bool) -> wire.Warm:
    """A request about to be prefilled; `first`: the draft may pre-draft its first speculations
    (not under a grammar, whose state the Begin starts)."""
    return wire.Warm(rid=req.rid, prompt=list(req.origin_input_ids) + list(req.output_ids),
                     sampling=sampling_of(req), first=first and not grammar_of(req))


def seeded_first_token(req) -> bool:
    """Whether SSD draws this request's first token itself (seeded, sampled, nothing else that
    SGLang's sampler would apply: grammar, penalties, logprobs of the sampled token)."""
    return (req.sampling_params.sampling_seed is not None and sampling_of(req) is not None
            and getattr(req, "grammar", None) is None and not req.return_logprob)

