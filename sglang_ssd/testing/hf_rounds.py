"""Greedy SSD rounds against a Hugging Face target on any device, grammar requests included.

The draft side is the real one (Speculator: begin, lookup, speculate); the target side is a
Hugging Face model standing in for SGLang's scheduler, verifying with the worker's own rule
(verify.accept_chain) on logits masked, for a grammar request, with the grammar state after the
draft tokens before each position (grammar.glue_states, as the worker's chain_grammar_mask).
Whatever the draft proposes, the output must be the target's own greedy output (under the
grammar): `greedy_reference` is that, computed directly. Needs no SGLang, so it runs on the GPU
device machine (bench/gpu_draft_check.py) as well as here (tests/test_hf_rounds.py).
"""

from __future__ import annotations

from typing import Optional

import torch

from sglang_ssd.grammar import accept_all, fill_masks, glue_states, mask_logits
from sglang_ssd.verify import accept_chain
from sglang_ssd.wire import Begin, Outcome


def _device(model) -> torch.device:
    return next(model.parameters()).device


@torch.no_grad()
def last_logits(model, ctx: list[int], n: int) -> torch.Tensor:
    """The target's logits [n, V] (float32) after each of ctx's last n tokens."""
    out = model(torch.tensor([list(ctx)], dtype=torch.long, device=_device(model))).logits[0, -n:]
    return out.float()


def greedy_reference(model, prompt: list[int], n: int, matcher=None, vocab_size: Optional[int] = None) -> list[int]:
    """The target's greedy continuation: n tokens, or fewer when the grammar (an xgrammar
    matcher in the state after the prompt, advanced here) terminates."""
    out = []
    for _ in range(n):
        lg = last_logits(model, list(prompt) + out, 1)
        if matcher is not None:
            lg = mask_logits(lg, fill_masks([matcher], vocab_size, lg.device))
        t = int(lg[0].argmax())
        out.append(t)
        if matcher is not None and (not accept_all(matcher, [t]) or matcher.is_terminated()):
            break
    return out


def ssd_greedy(spec, model, prompts: list[list[int]], n: int, grammar: Optional[tuple] = None,
               grammars=None) -> tuple[list[list[int]], dict]:
    """Each prompt's n greedy tokens through SSD rounds; (outputs, {rounds, hits, lookups,
    emitted}). grammar: (kind, spec) for every request, compiled by `grammars`
    (grammar.DraftGrammars of the target's tokenizer) for the target side's masks."""
    k = spec.k
    v = int(model.config.vocab_size)
    rids = [f"r{i}" for i in range(len(prompts))]
    tmatch = {r: (grammars.matcher(*grammar) if grammar else None) for r in rids}
    out, stats = {}, {"rounds": 0, "hits": 0, "lookups": 0, "emitted": 0}
    begins, live = [], []
    for r, p in zip(rids, prompts):
        first = greedy_reference(model, p, 1, tmatch[r].fork() if tmatch[r] else None, v)[0]
        out[r] = [first]
        if tmatch[r] is not None:
            accept_all(tmatch[r], [first])
        begins.append(Begin(rid=r, prompt=list(p), pending=first,
                            grammar_kind=grammar[0] if grammar else "", grammar=grammar[1] if grammar else "",
                            grammar_start=len(p)))
        if n > 1 and not (tmatch[r] is not None and tmatch[r].is_terminated()):
            live.append(r)
    refusals = spec.begin(begins)
    assert not refusals, refusals
    spec.release([r for r in rids if r not in live])
    state = {r: (-1, out[r][0]) for r in rids}
    prompt_of = dict(zip(rids, prompts))
    while live:
        outcomes = [Outcome(rid=r, k=state[r][0], t_star=state[r][1],
                            committed_len=len(prompt_of[r]) + len(out[r]) - 1) for r in live]
        specs, refusals, _ = spec.lookup(outcomes)
        assert not refusals, refusals
        by = {s.rid: s for s in specs}
        nxt = []
        for r in live:
            s = by[r]
            if state[r][0] >= 0:
                stats["lookups"] += 1
                stats["hits"] += int(s.hit)
            drafts = [out[r][-1]] + list(s.tokens[:k])
            ctx = list(prompt_of[r]) + out[r] + list(s.tokens[:k])
            lg = last_logits(model, ctx, k + 1)
            if tmatch[r] is not None:
                states = glue_states(tmatch[r], list(s.tokens[:k]))
                rows = [mask_logits(lg[j:j + 1], fill_masks([st], v, lg.device)) if st is not None else lg[j:j + 1]
                        for j, st in enumerate(states)]
                lg = torch.cat(rows)
            res = accept_chain(torch.tensor([drafts], dtype=torch.long, device=lg.device), lg,
                               torch.zeros(1, dtype=torch.bool, device=lg.device),
                               torch.zeros(1, dtype=torch.long, device=lg.device))
            a, t = res.k[0], res.t_star[0]
            emitted = list(s.tokens[:a]) + [t]
            done = False
            if tmatch[r] is not None:
                kept = []
                for tok in emitted:
                    kept.append(tok)
                    if not accept_all(tmatch[r], [tok]) or tmatch[r].is_terminated():
                        done = True
                        break
                emitted = kept
            out[r] += emitted
            stats["rounds"] += 1
            stats["emitted"] += len(emitted)
            state[r] = (a, t)
            if not done and len(out[r]) < n:
                nxt.append(r)
        spec.release([r for r in live if r not in nxt])
        live = nxt
        spec.speculate()
    return [out[r][:n] for r in rids], stats
