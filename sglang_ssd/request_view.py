"""How the worker describes a scheduler request to the draft: its sampling law, its grammar and
its Begin message (one place, for a request's first round and for a resync), and which of its
tokens the draft sees (DraftView: a long prompt's middle may be left out)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from sglang_ssd import wire
from sglang_ssd.grammar import grammar_spec_of
from sglang_ssd.sampling import is_greedy
from sglang_ssd.verify import needs_plain_path


def sampling_of(req, hidden: int = 0) -> Optional[wire.Sampling]:
    """The draft-side view of a sampled request; None for greedy (and plain-path) requests.
    `hidden`: tokens before the draft's last position that it does not see (DraftView), so that
    its seeded noise is drawn at the target's positions."""
    sp = req.sampling_params
    if is_greedy(sp.temperature, sp.top_k) or needs_plain_path(req):
        return None
    return wire.Sampling(temperature=float(sp.temperature), top_k=int(sp.top_k), top_p=float(sp.top_p),
                         min_p=float(sp.min_p), seed=sp.sampling_seed, offset=int(hidden))


def grammar_of(req, hidden: int = 0) -> dict:
    """Begin's grammar fields: the constraint, for the draft's grammar-aware drafting."""
    kind, spec = grammar_spec_of(req)
    if not kind:
        return {}
    return {"grammar_kind": kind, "grammar": spec, "grammar_start": len(req.origin_input_ids) - hidden}


SINK = 4  # a long prompt's first tokens the draft keeps (StreamingLLM's attention sinks)


@dataclass(frozen=True)
class DraftView:
    """Which of a request's tokens the draft sees (--ssd-draft-window): all of them, or for a prompt
    longer than SINK + window tokens its first SINK tokens and its last `window` (then everything
    generated), at contiguous positions as StreamingLLM keeps its cache. The draft's predictions
    only set how many drafted tokens the target accepts, never which tokens are emitted, so its
    view is free to choose: its prefill and attention then cost O(window) for any prompt (a 4k
    prompt's draft prefill on one core outlasted a 32-token answer, bench/README.md). window 0:
    the whole prompt. A request's view is fixed by its prompt alone, so a resync sees the same."""

    window: int = 0

    def hidden(self, req) -> int:
        """How many prompt tokens (after the first SINK) the draft does not see."""
        if self.window <= 0:
            return 0
        return max(0, len(req.origin_input_ids) - SINK - self.window)

    def tokens(self, req, tokens: list[int], hidden: Optional[int] = None) -> list[int]:
        """The draft's view of `tokens` (a prefix of the request's prompt + output, at least its
        prompt); `hidden`: self.hidden(req), where the caller has it."""
        h = self.hidden(req) if hidden is None else hidden
        return tokens if not h else tokens[:SINK] + tokens[SINK + h:]

    def committed(self, req, seq_len: int) -> int:
        """The draft's length of a request the target holds `seq_len` tokens of."""
        return seq_len - self.hidden(req)

    def begin(self, req, tokens: list[int], pending: int) -> wire.Begin:
        """The draft learns a request: its committed tokens, the token pending verification, its law."""
        h = self.hidden(req)
        return wire.Begin(rid=req.rid, prompt=self.tokens(req, tokens, h), pending=int(pending),
                          sampling=sampling_of(req, h), **grammar_of(req, h))

    def warm(self, req, first: bool) -> wire.Warm:
        """A request about to be prefilled; `first`: the draft may pre-draft its first speculations
        (not under a grammar, whose state the Begin starts)."""
        h = self.hidden(req)
        return wire.Warm(rid=req.rid, prompt=self.tokens(req, list(req.origin_input_ids) + list(req.output_ids), h),
                         sampling=sampling_of(req, h), first=first and not grammar_of(req))


def begin_of(req, prompt: list[int], pending: int) -> wire.Begin:
    """A Begin of the whole request (DraftView without a window)."""
    return DraftView().begin(req, prompt, pending)


def warm_of(req, first: bool) -> wire.Warm:
    """A Warm of the whole request (DraftView without a window)."""
    return DraftView().warm(req, first)


def seeded_first_token(req) -> bool:
    """Whether SSD draws this request's first token itself (seeded, sampled, nothing else that
    SGLang's sampler would apply: grammar, penalties, logprobs of the sampled token)."""
    return (req.sampling_params.sampling_seed is not None and sampling_of(req) is not None
            and getattr(req, "grammar", None) is None and not req.return_logprob)

