"""A fixed script of draft-side rounds over every kind of request, for device checks.

`run_script(spec, begins, rounds)` drives a Speculator (the draft process's state machine, no
worker) through Begin, then `rounds` x (speculate, lookup of an outcome the tree pre-drafted),
for greedy, sampled (top-k / top-p, Saguaro), seeded and grammar requests at once, and returns
what the draft shipped per round: (rid, hit, tokens, q' bytes). The outcome taken each round is
the first the tree cached (a deterministic hit), so two runs of the same script on the same draft
return the same record. Used by tests/test_device_defaults.py (under a meta default device) and
by bench/gpu_draft_check.py (a CUDA draft against the CPU record).

`MarkovDraft` is a draft model without a network: its logits are a fixed random table row of the
last token, on any device; it speaks both DraftModel forward conventions (flat lists, or groups).
"""

from __future__ import annotations

from typing import Optional

import torch

from sglang_ssd.wire import Begin, Outcome, Sampling


class MarkovDraft:
    def __init__(self, vocab_size: int, device, slots: int = 4096, model_path: Optional[str] = None,
                 seed: int = 0, scale: float = 3.0):
        from sglang_ssd.draft_model import SlotPool

        g = torch.Generator(device="cpu").manual_seed(seed)
        self.device = torch.device(device)
        self.table = (torch.randn(vocab_size, vocab_size, generator=g, device="cpu") * scale).to(self.device)
        self.vocab_size = vocab_size
        self.max_positions = 1 << 16
        self.pool = SlotPool(slots)
        self.model_path = model_path  # grammar.model_path_of: where the tokenizer lives
        self.forwards = 0

    def forward(self, first, *rest, logits: bool = True, **kw):
        """(tokens, positions, write, visible) or (groups, [logits]): logits [tokens, V]."""
        self.forwards += 1
        if len(first) and not isinstance(first[0], int):  # groups (draft_batch.Group)
            if rest:
                logits = bool(rest[0])
            tokens = [t for g in first for t in g.tokens]
            if not logits:
                return None
        else:
            tokens = list(first)
        idx = torch.tensor(tokens, dtype=torch.long, device=self.device)
        return self.table.index_select(0, idx)


def requests(prompt: list[int], grammar_first: Optional[int] = None, grammar: Optional[tuple] = None) -> list[Begin]:
    """One request of each kind on the same prompt (the grammar one only when given:
    (kind, spec) and a legal first token)."""
    out = [
        Begin(rid="greedy", prompt=list(prompt), pending=prompt[-1]),
        Begin(rid="sampled", prompt=list(prompt), pending=prompt[-2],
              sampling=Sampling(temperature=0.9, top_k=20, top_p=0.95, min_p=0.0)),
        Begin(rid="plain_sampled", prompt=list(prompt), pending=prompt[-3],
              sampling=Sampling(temperature=1.0)),
        Begin(rid="seeded", prompt=list(prompt), pending=prompt[-1],
              sampling=Sampling(temperature=0.8, top_k=-1, top_p=0.9, min_p=0.05, seed=1234)),
    ]
    if grammar is not None:
        kind, spec = grammar
        out.append(Begin(rid="grammar", prompt=list(prompt), pending=int(grammar_first), grammar_kind=kind,
                         grammar=spec, grammar_start=len(prompt)))
    return out


def run_script(spec, begins: list[Begin], rounds: int, seed: int = 0) -> list[tuple]:
    """[(round, rid, hit, tokens, q probs bytes, q ids bytes, q counts)] in a fixed order."""
    torch.manual_seed(seed)
    record = []
    assert not spec.begin(begins)
    live = {b.rid for b in begins}
    outcomes = [Outcome(rid=b.rid, k=-1, t_star=b.pending, committed_len=len(b.prompt)) for b in begins]
    for rnd in range(rounds + 1):
        specs, refusals, _ = spec.lookup(outcomes)
        assert not refusals, refusals
        for s in sorted(specs, key=lambda s: s.rid):
            record.append((rnd, s.rid, s.hit, list(s.tokens), bytes(s.q), bytes(s.q_ids), list(s.q_counts)))
        if rnd == rounds:
            break
        spec.speculate()
        outcomes = []
        for rid in sorted(live):
            seq = spec.seqs[rid]
            if not seq.cache:  # nothing pre-drafted (a finished grammar): the request ends
                spec.release([rid])
                continue
            (j, c), _ = next(iter(seq.cache.items()))
            outcomes.append(Outcome(rid=rid, k=j, t_star=c, committed_len=len(seq.tokens) + j + 1))
        live = {o.rid for o in outcomes}
    spec.release(sorted(live))
    return record
