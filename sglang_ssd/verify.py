"""Target-side verification of a chain speculation [t, x_1..x_K]: which tokens to emit.

- Greedy requests accept while x_{i+1} == argmax p_i and emit argmax p_k at the first mismatch.
- Sampled requests use lossless rejection sampling against the proposal q' the draft really
  sampled from (kernels/rejection.py), with p formed exactly as SGLang's sampler forms it.
- Seeded sampled requests (`sampling_seed`) accept while x_{i+1} equals the seeded Gumbel-max
  sample of p_i (sglang_ssd/sampling.py) and emit that sample at the first mismatch: the greedy
  rule on perturbed scores, so their output never depends on the draft.
- Grammar-constrained requests are speculated too: the worker masks each verify position with the
  grammar state after the draft tokens before it (sglang_ssd/grammar.py), then accepts as above.
- Requests whose next token depends on more than (temperature, top-k, top-p, min-p, grammar) --
  penalties, logit bias, custom logit processors, min_new_tokens -- are served by the exact plain
  path: nothing accepted, t* from SGLang's own sampler on the first position.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from sglang_ssd.sampling import param_tensors


@dataclass
class ChainResult:
    accept_len: torch.Tensor  # [bs] int32: k + 1 (emitted tokens, including t*)
    tokens: torch.Tensor  # [bs, K+1] int32: x_1..x_k, t*, then zeros
    k: list[int]
    t_star: list[int]


def plain_path_reason(req):
    """Why emitting more than one token per round for `req` could change its output (the name
    of the parameter), or None when it can be speculated. Grammars are speculated (masked)."""
    sp = req.sampling_params
    if sp.frequency_penalty != 0.0:
        return "frequency_penalty"
    if sp.presence_penalty != 0.0:
        return "presence_penalty"
    if sp.repetition_penalty != 1.0:
        return "repetition_penalty"
    if sp.min_new_tokens > 0:
        return "min_new_tokens"
    if sp.logit_bias:
        return "logit_bias"
    if getattr(req, "custom_logit_processor", None) is not None:
        return "custom_logit_processor"
    return None


def needs_plain_path(req) -> bool:
    """True when emitting more than one token per round for `req` could change its output."""
    return plain_path_reason(req) is not None


def accept_chain(drafts: torch.Tensor, logits: torch.Tensor, plain: torch.Tensor,
                 plain_tokens: torch.Tensor) -> ChainResult:
    """drafts [bs, K+1] = [t, x_1..x_K]; logits [bs*(K+1), V]; plain [bs] bool.

    plain_tokens [bs]: SGLang's sampler's token for the first position, used where plain.
    """
    bs, n = drafts.shape
    k, t_star = _accept_target_choices(drafts[:, 1:], torch.argmax(logits.view(bs, n, -1), dim=-1))
    k = torch.where(plain, torch.zeros_like(k), k)
    t_star = torch.where(plain, plain_tokens.to(t_star.dtype), t_star)
    return emitted_tokens(drafts, k, t_star)


def _accept_target_choices(x: torch.Tensor, pred: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """k, t* when the target's token at each position is fixed (pred [b, K+1]) and x [b, K]
    are the draft tokens: accept the matching prefix, emit pred at the first mismatch."""
    match = (x == pred[:, :-1].to(x.device)).to(torch.int32)
    k = torch.cumprod(match, dim=1).sum(dim=1)
    return k, pred.gather(1, k.view(-1, 1).to(pred.device).long()).view(-1)


def accept_seeded(logits: torch.Tensor, drafts: torch.Tensor, params: dict, seeds: list[int],
                  positions: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """k, t* for seeded sampled rows. logits [b, K+1, V]; drafts [b, K]; positions [b]: the
    position of the token the first logits row samples (row i samples position + i)."""
    from sglang_ssd.sampling import gumbel_choice

    b, n, _ = logits.shape
    p = _target_probs(logits, params)
    pred = torch.stack([gumbel_choice(p[j], seeds[j], range(positions[j], positions[j] + n))
                        for j in range(b)])
    return _accept_target_choices(drafts.to(pred.device), pred)


def accept_sampled(logits: torch.Tensor, drafts: torch.Tensor, q: torch.Tensor, params: dict,
                   u_accept: torch.Tensor, u_residual: torch.Tensor, residual_q=None
                   ) -> tuple[torch.Tensor, torch.Tensor]:
    """k, t* for sampled rows. logits [b, K+1, V]; drafts [b, K]; q [b, K, V] (one-hot rows for
    deterministic proposals); params: temperature/top_k/top_p/min_p [b] tensors."""
    from sglang_ssd.kernels.dispatch import chain_accept

    return chain_accept(_target_probs(logits, params), q, drafts, u_accept, u_residual, residual_q)


def _target_probs(logits: torch.Tensor, params: dict) -> torch.Tensor:
    """p [b, K+1, V] from logits [b, K+1, V] and per-row params [b]."""
    from sglang_ssd.sampling import processed_probs

    b, n, v = logits.shape
    rep = {name: t.repeat_interleave(n) for name, t in params.items()}
    return processed_probs(logits.reshape(b * n, v), **rep).view(b, n, v)


def emitted_tokens(drafts: torch.Tensor, k: torch.Tensor, t_star: torch.Tensor) -> ChainResult:
    """Rows of x_1..x_k, t*, zeros, from drafts [bs, K+1] = [t, x_1..x_K]."""
    bs, n = drafts.shape
    ar = torch.arange(n, device=drafts.device).view(1, -1)
    shifted = torch.cat([drafts[:, 1:], torch.zeros_like(drafts[:, :1])], dim=1)
    tokens = torch.where(ar < k.view(-1, 1), shifted, torch.zeros_like(shifted))
    tokens = tokens.scatter(1, k.view(-1, 1).long(), t_star.view(-1, 1).to(tokens.dtype))
    return ChainResult(accept_len=(k + 1).to(torch.int32), tokens=tokens.to(torch.int32),
                       k=k.tolist(), t_star=t_star.tolist())


def accept_sampled_rows(reqs, seq_lens: list[int], drafts: torch.Tensor, logits: torch.Tensor, qs: list,
                        rows: list[int], res: ChainResult) -> ChainResult:
    """Lossless rejection sampling for the sampled rows (seeded ones: the Gumbel-max rule of
    verify.accept_seeded); the other rows keep `res`."""
    n = drafts.shape[1]
    k = n - 1
    v = logits.shape[-1]
    lg_all = logits.view(len(reqs), n, v)
    d_all = drafts[:, 1:].cpu()
    pos = seq_lens
    k_all = torch.tensor(res.k)
    t_all = torch.tensor(res.t_star)

    def params(idx):
        return param_tensors([reqs[i].sampling_params for i in idx], lg_all.device)

    seeded = [i for i in rows if reqs[i].sampling_params.sampling_seed is not None]
    unseeded = [i for i in rows if reqs[i].sampling_params.sampling_seed is None]
    if seeded:
        kk, ts = accept_seeded(lg_all[seeded].float(), d_all[seeded], params(seeded),
                               [reqs[i].sampling_params.sampling_seed for i in seeded],
                               [pos[i] + 1 for i in seeded])  # t sits at seq_len
        k_all[seeded], t_all[seeded] = kk.cpu().to(k_all.dtype), ts.cpu().to(t_all.dtype)
    if unseeded:
        d = d_all[unseeded]
        q = torch.stack([
            qs[i][:, :v] if qs[i] is not None else
            torch.zeros(k, v).scatter_(1, d[j].view(-1, 1), 1.0)  # deterministic proposal: one-hot
            for j, i in enumerate(unseeded)
        ])
        u = torch.rand(len(unseeded), k + 1)
        dev = lg_all.device  # on a GPU the acceptance runs there (Triton kernel, kernels/dispatch.py)
        kk, ts = accept_sampled(lg_all[unseeded].float(), d.to(dev), q.to(dev), params(unseeded),
                                u[:, :k].to(dev), u[:, k].to(dev))
        k_all[unseeded], t_all[unseeded] = kk.cpu().to(k_all.dtype), ts.cpu().to(t_all.dtype)
    return emitted_tokens(drafts.cpu(), k_all, t_all)
