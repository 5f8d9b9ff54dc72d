"""Grammar-constrained speculation (json_schema / regex / ebnf / structural_tag), both sides.

Target side (`chain_grammar_mask`): for a verified chain [t, x_1..x_K] the logits at position j
are masked with the request's grammar state after accepting x_1..x_j, built by advancing the
request's own grammar object over the chain and rolling it back (as SGLang's own speculative
verification does with `traverse_tree`). Acceptance then runs on the masked logits, so greedy
tokens are the non-speculative server's and sampled tokens always satisfy the grammar. The
worker never advances `req.grammar` for good: SGLang's scheduler accepts the emitted tokens
itself after the round (`advance_grammar_fsm`), truncating at termination.

Draft side (`DraftGrammars`): the draft process compiles the same constraint with xgrammar for
its own tokenizer and keeps one matcher per request (the state after the pending token), forked
per glue position and per branch, so it never proposes a token the grammar forbids. If anything
fails there the request is drafted unmasked: exactness never depends on the draft.
`SGLANG_SSD_DRAFT_GRAMMAR=0` in the draft's environment turns grammar-aware drafting off (for
measurement).
"""

from __future__ import annotations

import logging
import os
from typing import Optional

import torch

logger = logging.getLogger(__name__)

KINDS = ("json", "regex", "ebnf", "structural_tag")


# ---- target side -------------------------------------------------------------------------
def grammar_spec_of(req) -> tuple[str, str]:
    """(kind, spec) of a request's constraint for the draft, ("", "") when there is none or it
    is not one the draft can reproduce (reasoning-wrapped grammars are drafted unmasked)."""
    g = getattr(req, "grammar", None)
    if g is None or type(g).__name__ == "ReasonerGrammarObject":
        return "", ""
    sp = req.sampling_params
    if sp.json_schema is not None:
        return "json", str(sp.json_schema)
    if sp.regex is not None:
        return "regex", str(sp.regex)
    if sp.ebnf is not None and not getattr(sp, "ebnf_full_assistant", False):
        return "ebnf", str(sp.ebnf)
    if sp.structural_tag is not None:
        return "structural_tag", str(sp.structural_tag)
    return "", ""


def _allowed(bitmask_row: torch.Tensor, token: int) -> bool:
    return bool((int(bitmask_row[token // 32]) >> (token % 32)) & 1)


def chain_grammar_mask(reqs, drafts: torch.Tensor, rows: list[int], vocab_size: int):
    """The vocab mask over every verify position of the grammar rows: (grammar, mask) or None.

    drafts [bs, K+1] (cpu) = [t, x_1..x_K]; mask row i*(K+1)+j holds request i's grammar state
    after x_1..x_j. A row past a draft token the grammar forbids (never reachable by acceptance)
    or past termination keeps the backend's unconstrained default. Every request's grammar is
    returned to the state it came in with. Raises on a grammar error (the caller then serves
    those requests by the plain path).
    """
    bs, n = drafts.shape
    handle = None
    mask = None
    d = drafts.tolist()
    for i in rows:
        g = reqs[i].grammar
        if mask is None:
            handle = g
            mask = g.allocate_vocab_mask(vocab_size=vocab_size, batch_size=bs * n, device="cpu")
        accepted = 0
        try:
            for j in range(n):
                if j > 0:
                    tok = d[i][j]
                    if not (0 <= tok < vocab_size) or not _allowed(mask[i * n + j - 1], tok):
                        break
                    g.accept_token(tok)
                    accepted += 1
                if g.is_terminated():
                    break
                g.fill_vocab_mask(mask, i * n + j)
        finally:
            if accepted:
                g.rollback(accepted)
    if mask is None:
        return None
    return handle, mask


def apply_chain_mask(logits: torch.Tensor, handle, mask: torch.Tensor) -> None:
    """Mask logits [bs*(K+1), V] in place with the backend that built `mask`."""
    vm = handle.move_vocab_mask(mask, logits.device)
    handle.apply_vocab_mask(logits=logits, vocab_mask=vm)


# ---- draft side --------------------------------------------------------------------------
def draft_grammar_enabled() -> bool:
    return os.environ.get("SGLANG_SSD_DRAFT_GRAMMAR", "1").strip().lower() not in ("0", "false", "off", "no")


def bitmask_to_bool(bitmask: torch.Tensor, vocab_size: int) -> torch.Tensor:
    """xgrammar's packed int32 bitmask [R, ceil(V/32)] -> bool [R, V] (True: allowed)."""
    bits = torch.arange(32, dtype=torch.int32, device=bitmask.device)
    return ((bitmask.unsqueeze(-1) >> bits) & 1).bool().view(bitmask.shape[0], -1)[:, :vocab_size]


def model_path_of(model) -> Optional[str]:
    """Where the draft model (hf or sglang engine) was loaded from: its tokenizer lives there."""
    sa = getattr(model, "server_args", None)
    if sa is not None:
        return getattr(sa, "tokenizer_path", None) or getattr(sa, "model_path", None)
    cfg = getattr(getattr(model, "model", None), "config", None)
    p = getattr(cfg, "_name_or_path", None)
    return p or getattr(model, "model_path", None)


class DraftGrammars:
    """Compiles constraints for the draft's vocabulary (cached) and makes matchers."""

    def __init__(self, model_path: Optional[str], vocab_size: int):
        self.model_path = model_path
        self.vocab_size = vocab_size
        self.enabled = draft_grammar_enabled() and model_path is not None
        self._compiler = None
        self._cache: dict = {}
        self.failures = 0

    def _get_compiler(self):
        if self._compiler is None:
            import xgrammar as xgr
            from transformers import AutoConfig, AutoTokenizer

            tok = AutoTokenizer.from_pretrained(self.model_path)
            stop = None
            try:
                eos = AutoConfig.from_pretrained(self.model_path).eos_token_id
                stop = [eos] if isinstance(eos, int) else (list(eos) if eos else None)
            except Exception:
                pass
            info = xgr.TokenizerInfo.from_huggingface(tok, vocab_size=self.vocab_size, stop_token_ids=stop)
            self._compiler = xgr.GrammarCompiler(info)
        return self._compiler

    def matcher(self, kind: str, spec: str):
        """A fresh matcher for the constraint, or None (disabled, unknown kind, compile error)."""
        if not self.enabled or kind not in KINDS or not spec:
            return None
        key = (kind, spec)
        if key not in self._cache:
            ctx = None
            try:
                c = self._get_compiler()
                if kind == "json":
                    ctx = (c.compile_builtin_json_grammar() if spec == "$$ANY$$"
                           else c.compile_json_schema(spec, any_whitespace=True))
                elif kind == "regex":
                    ctx = c.compile_regex(spec)
                elif kind == "ebnf":
                    ctx = c.compile_grammar(spec)
                else:
                    ctx = c.compile_structural_tag(spec)
            except Exception as e:  # the draft then drafts this request unmasked
                self.failures += 1
                logger.warning("draft could not compile %s grammar (drafting unmasked): %s", kind, e)
            self._cache[key] = ctx
        ctx = self._cache[key]
        if ctx is None:
            return None
        import xgrammar as xgr

        return xgr.GrammarMatcher(ctx)


def accept_all(matcher, tokens) -> bool:
    """Advance `matcher` over tokens; False as soon as one is refused (state then unusable)."""
    for t in tokens:
        if matcher.is_terminated() or not matcher.accept_token(int(t)):
            return False
    return True


def fill_masks(matchers: list, vocab_size: int, device) -> Optional[torch.Tensor]:
    """bool [len(matchers), V] allowed-token rows; rows of None / terminated matchers (and rows
    that would allow nothing) are all True. None when no row is constrained."""
    live = [i for i, m in enumerate(matchers) if m is not None and not m.is_terminated()]
    if not live:
        return None
    import xgrammar as xgr

    with torch.device("cpu"):  # xgrammar fills its bitmask on the CPU; `device` gets the result
        bm = xgr.allocate_token_bitmask(len(matchers), vocab_size)
    for i in live:
        matchers[i].fill_next_token_bitmask(bm, i)
    allowed = bitmask_to_bool(bm, vocab_size)
    dead = [i for i in range(len(matchers)) if i not in set(live)]
    if dead:
        allowed[dead] = True
    allowed[~allowed.any(dim=1)] = True
    return allowed.to(device)


def mask_logits(logits: torch.Tensor, allowed: Optional[torch.Tensor]) -> torch.Tensor:
    """logits [R, V'] with disallowed tokens at -inf (V' may exceed the mask's V: padding)."""
    if allowed is None:
        return logits
    v = allowed.shape[1]
    out = logits.clone()
    out[:, :v] = out[:, :v].masked_fill(~allowed, float("-inf"))
    return out


def begin_matcher(grammars: "DraftGrammars", b) -> Optional[object]:
    """A Begin's grammar state after its generated tokens and `pending`, or None (drafting
    unmasked is always exact, so any failure here only turns the masking off)."""
    if not b.grammar_kind:
        return None
    try:
        m = grammars.matcher(b.grammar_kind, b.grammar)
        start = max(0, min(int(b.grammar_start), len(b.prompt)))
        if m is not None and accept_all(m, b.prompt[start:] + [b.pending]):
            return m
    except Exception:
        pass
    return None


def glue_states(matcher, spec: list[int]) -> list:
    """Grammar state at each glue position j (after pending, x_1..x_j); None past a draft token
    the grammar forbids (the target can never accept it, so nothing there to fork)."""
    states = [matcher.fork()]
    for t in spec:
        prev = states[-1]
        nxt = None
        if prev is not None and not prev.is_terminated():
            nxt = prev.fork()
            if not nxt.accept_token(int(t)):
                nxt = None
        states.append(nxt)
    return states


def grammar_live(req) -> bool:
    g = getattr(req, "grammar", None)
    return g is not None and not getattr(g, "finished", False) and not g.is_terminated()


def speculated_grammar_mask(reqs, drafts: torch.Tensor, reasons: list, vocab: int):
    """The chain grammar mask of the speculated grammar requests: ((handle, mask) or None,
    their rows). A request whose grammar fails here is served by the plain path instead."""
    rows = [i for i, r in enumerate(reqs) if reasons[i] is None and grammar_live(r)]
    if not rows:
        return None, []
    d = drafts.cpu()
    n = d.shape[1]
    ok, gm = [], None
    for i in rows:  # one row at a time: a broken grammar only sends its own request plain
        try:
            one = chain_grammar_mask(reqs, d, [i], vocab)
        except Exception as e:
            logger.warning("SSD grammar mask failed for %s, serving it by the plain path: %s",
                           reqs[i].rid, e)
            reasons[i] = "grammar_error"
            continue
        if gm is None:
            gm = one
        else:
            gm[1][i * n:(i + 1) * n] = one[1][i * n:(i + 1) * n]
        ok.append(i)
    return gm, ok
