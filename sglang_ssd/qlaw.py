"""The compact proposal law q' a sampled draft token is drawn from, and its wire form.

Shipping q' as K x V float32 costs 2.4 MB per request-round at K=4 on a 152k vocabulary. Any law
the draft really samples from keeps rejection sampling lossless, so the draft samples from a
compact one: each row of the (Saguaro-rescaled) q cut to its most likely tokens, at most MAX_TOKENS
of them, until they hold MASS of the probability, renormalised. Exactly that law is shipped as
(token ids, probabilities) and the target verifies against it, densified.

The rows live on the CPU whatever device q was on: they are what goes on the wire, and the
draw from them (`sample`) is a few CPU operations per row. `compact` brings the top tokens of
every row to the CPU in one copy (a CUDA q is never read element by element).
"""

from __future__ import annotations

from typing import Optional

import torch

from sglang_ssd.wire import MAX_Q_TOKENS as MAX_TOKENS

MASS = 0.9999


class CompactQ:
    """q' rows as (ids int64 [m_i], probs float32 [m_i]) pairs on the CPU, one per drafted position."""

    def __init__(self, rows: list[tuple[torch.Tensor, torch.Tensor]]):
        self.rows = rows

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, sl: slice) -> "CompactQ":
        return CompactQ(self.rows[sl])

    def dense(self, vocab: int) -> torch.Tensor:
        q = torch.zeros(len(self.rows), vocab, dtype=torch.float32, device="cpu")
        for i, (ids, probs) in enumerate(self.rows):
            q[i, ids] = probs
        return q

    def pack(self) -> tuple[bytes, bytes, list[int]]:
        """(probs as float32 bytes, ids as int32 bytes, entries per row) for wire.Spec."""
        if not self.rows:
            return b"", b"", []
        ids = torch.cat([r[0] for r in self.rows]).to(device="cpu", dtype=torch.int32)
        probs = torch.cat([r[1] for r in self.rows]).to(device="cpu", dtype=torch.float32)
        return probs.numpy().tobytes(), ids.numpy().tobytes(), [int(r[0].numel()) for r in self.rows]


def compact(q: torch.Tensor, mass: float = MASS, max_tokens: int = MAX_TOKENS) -> CompactQ:
    """Each row of q [n, V] (any device) cut to its top tokens holding `mass` (at most
    max_tokens), renormalised; the rows on the CPU."""
    m = min(max_tokens, q.shape[-1])
    qf = q.float()
    vals, ids = torch.topk(qf, m, dim=-1)
    cum = vals.cumsum(-1)
    total = qf.sum(-1, keepdim=True)
    keep = (cum - vals < mass * total).sum(-1).clamp(min=1)  # tokens until the mass is reached
    cpu = torch.device("cpu")
    vals, ids, keep = vals.to(cpu), ids.to(cpu), keep.to(cpu)  # one copy each, then CPU-only work
    rows = []
    for i in range(q.shape[0]):
        n = int(keep[i])
        v = vals[i, :n]
        v = v[v > 0] if n > 1 else v
        rows.append((ids[i, : v.numel()].clone(), (v / v.sum()).contiguous()))
    return CompactQ(rows)


def sample(cq: CompactQ, u: torch.Tensor) -> list[int]:
    """One token per row drawn from exactly the compact law, by inverse CDF with uniforms u [n]."""
    out = []
    for (ids, probs), x in zip(cq.rows, u.tolist()):
        cdf = probs.double().cumsum(0)
        point = torch.tensor([x * float(cdf[-1])], dtype=torch.float64, device=cdf.device)
        j = int(torch.searchsorted(cdf, point).clamp(max=len(ids) - 1))
        out.append(int(ids[j]))
    return out


def unpack(probs: bytes, ids: bytes, counts: list[int], k: int, vocab: int) -> Optional[torch.Tensor]:
    """Dense q' [k, vocab] from the wire, or None if the parts do not form k distributions over
    ids in [0, vocab)."""
    n = sum(counts)
    if len(counts) != k or any(c < 1 for c in counts) or len(probs) != 4 * n or len(ids) != 4 * n:
        return None
    # frombuffer is a CPU tensor whatever the default device; everything else is made beside it.
    p = torch.frombuffer(bytearray(probs), dtype=torch.float32)
    t = torch.frombuffer(bytearray(ids), dtype=torch.int32).to(torch.int64)
    if bool((t < 0).any()) or bool((t >= vocab).any()) or not bool(torch.isfinite(p).all()) or bool((p < 0).any()):
        return None
    rows = torch.repeat_interleave(torch.arange(k, device="cpu"), torch.tensor(counts, device="cpu"))
    q = torch.zeros(k, vocab, dtype=torch.float32, device="cpu")
    q.index_put_((rows, t), p, accumulate=True)
    return q
