"""How the draft picks each token of a chain, per request kind, and what it ships for it.

Greedy chains take the argmax. Sampled chains draw from q' (q Saguaro-rescaled, then cut to its
compact law, qlaw.py) and keep each row, which is shipped so the target verifies against exactly
the law drawn from. Seeded chains take the Gumbel-max choice of q with the noise the target will
use (sampling.py): deterministic, so they ship no q' and Saguaro does not apply to them.

Every tensor here is made on its logits' device (a CUDA draft's logits stay on the GPU until the
compact q' rows, which are shipped, come to the CPU in qlaw.compact).
"""

from __future__ import annotations

import torch

from sglang_ssd import qlaw
from sglang_ssd.kernels.dispatch import saguaro_rescale
from sglang_ssd.sampling import gumbel_choice, gumbel_scores, param_tensors, processed_probs


def propose(chains: list, logits: torch.Tensor, step: int, fan: int, saguaro_c: float,
            q_mass: float) -> list[int]:
    """The next token of each chain (objects with .sampling, .first_pos, .qs) from its logits row;
    `fan` is the fan-out at this step's position (Saguaro's top set is fan + 1 tokens)."""
    nxt = torch.argmax(logits, dim=-1).tolist()
    rows = [i for i, c in enumerate(chains) if c.sampling is not None]
    if not rows:
        return nxt
    sub = [chains[i] for i in rows]
    q = processed_probs(logits[rows], **param_tensors([c.sampling for c in sub], logits.device))
    for j, c in enumerate(sub):
        if c.sampling.seed is not None:
            nxt[rows[j]] = int(gumbel_choice(q[j:j + 1], c.sampling.seed, [c.first_pos + step + 1 + c.sampling.offset])[0])
    free = [j for j, c in enumerate(sub) if c.sampling.seed is None]
    if not free:
        return nxt
    qf = saguaro_rescale(q[free], torch.full((len(free),), fan + 1, device=q.device), saguaro_c)
    cq = qlaw.compact(qf, q_mass)  # the law each token is drawn from, exactly as shipped
    for j, t, row in zip(free, qlaw.sample(cq, torch.rand(len(free), device="cpu")), cq.rows):
        sub[j].qs.append(row)
        nxt[rows[j]] = t
    return nxt


def seeded_scores(sampling, glue_logits: torch.Tensor, base: int) -> torch.Tensor:
    """A seeded request's glue rows as Gumbel scores (row j samples position base + j): forks
    then rank the likely target choices."""
    n = glue_logits.shape[0]
    q = processed_probs(glue_logits, **param_tensors([sampling] * n, glue_logits.device))
    base += sampling.offset  # (the target's positions)
    return gumbel_scores(q, sampling.seed, range(base, base + n)).float()
