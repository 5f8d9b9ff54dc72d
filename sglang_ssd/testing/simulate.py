"""In-process SSD rounds for statistical tests and sweeps: the real Speculator (draft side) and the real
verification functions, with a Hugging Face target standing in for the SGLang scheduler.

Many independent samples of the same prompt run as one batch of requests, so a test can draw
thousands of continuations in seconds and compare their law with the exact target distribution.
The target's probabilities and the verification run on the target model's device (a GPU's
Triton kernels included); what the draft ships comes from the wire on the CPU, as in the worker.
"""

from __future__ import annotations

import torch

from sglang_ssd.qlaw import unpack as unpack_q

from sglang_ssd import wire
from sglang_ssd.sampling import gumbel_choice, processed_probs
from sglang_ssd.verify import accept_sampled, accept_seeded


class TargetProbs:
    """p(. | context) exactly as SGLang would sample, memoised per context."""

    def __init__(self, model, temperature, top_k, top_p, min_p=0.0):
        self.model, self.memo = model, {}
        self.device = next(model.parameters()).device
        self.params = dict(temperature=temperature, top_k=top_k, top_p=top_p, min_p=min_p)

    def __call__(self, ctx) -> torch.Tensor:
        key = tuple(ctx)
        if key not in self.memo:
            with torch.no_grad():
                logits = self.model(torch.tensor([list(ctx)], device=self.device)).logits[0, -1:].float()
            self.memo[key] = self._process(logits)[0]
        return self.memo[key]

    def logits_rows(self, ctxs):
        """Logits-equivalent rows: log p, which processed_probs maps back to p (T=1, no cut)."""
        return torch.stack([self(c) for c in ctxs])

    def _process(self, logits):
        r = logits.shape[0]
        pr = self.params
        full = [torch.full((r,), pr[x], device=logits.device) for x in ("temperature", "top_k", "top_p", "min_p")]
        return processed_probs(logits, *full)

    def exact(self, prompt, length):
        """{sequence: probability} of the first `length` emitted tokens."""
        out = {(): 1.0}
        for _ in range(length):
            nxt = {}
            for seq, pr in out.items():
                p = self(list(prompt) + list(seq)).cpu()
                for t in torch.nonzero(p > 0).view(-1).tolist():
                    nxt[seq + (t,)] = pr * float(p[t])
            out = nxt
        return out


def sample_ssd(spec, target: TargetProbs, prompt, n, length, *, seeds=None, wrong_residual=False,
               stats=None, stop_trees=False):
    """n continuations of `length` tokens through SSD rounds; returns (sequences, hits, lookups).

    seeds: one `sampling_seed` per request (verified by the seeded rule), or None (unseeded).
    `stats`, if given, is filled with rounds, emitted tokens and the draft's backup seconds.
    stop_trees: every tree stops after its first step (as when the worker's outcome arrives
    mid-tree), so hits are answered drafted one deep and completed by the n-gram backup.
    """
    k = spec.k
    pr = target.params
    dev = target.device
    seeds = list(seeds) if seeds is not None else [None] * n
    samps = {f"s{i}": wire.Sampling(temperature=pr["temperature"], top_k=pr["top_k"], top_p=pr["top_p"],
                                    min_p=pr["min_p"], seed=sd) for i, sd in enumerate(seeds)}
    p0 = target(prompt)
    firsts = [int(torch.multinomial(p0, 1)) if sd is None else int(gumbel_choice(p0[None], sd, [len(prompt)])[0])
              for sd in seeds]
    rids = [f"s{i}" for i in range(n)]
    out = {r: [t] for r, t in zip(rids, firsts)}
    spec.begin([wire.Begin(rid=r, prompt=list(prompt), pending=t, sampling=samps[r]) for r, t in zip(rids, firsts)])
    state = {r: (-1, t) for r, t in zip(rids, firsts)}
    hits = lookups = 0
    live = list(rids)
    while live:
        outcomes = [wire.Outcome(rid=r, k=state[r][0], t_star=state[r][1],
                                 committed_len=len(prompt) + len(out[r]) - 1) for r in live]
        specs, refusals, backup_s = spec.lookup(outcomes)
        if stats is not None:
            stats["backup_s"] = stats.get("backup_s", 0.0) + backup_s
        assert not refusals, refusals
        by = {s.rid: s for s in specs}
        ctxs, drafts, qs = [], [], []
        for r in live:
            s = by[r]
            if state[r][0] >= 0:
                lookups += 1
                hits += int(s.hit)
            base = list(prompt) + out[r]
            ctxs.append([base + s.tokens[:i] for i in range(k + 1)])
            drafts.append(s.tokens)
            if s.q_counts:
                qs.append(unpack_q(s.q, s.q_ids, s.q_counts, k, p0.shape[0]))
            else:
                qs.append(torch.zeros(k, p0.shape[0], device="cpu").scatter_(
                    1, torch.tensor(s.tokens, device="cpu").view(-1, 1), 1.0))
        p_rows = torch.stack([torch.stack([target(c) for c in cs]) for cs in ctxs])  # [b, K+1, V]
        # Feed log p with neutral parameters: accept_sampled's processing then returns p itself.
        b = len(live)
        neutral = {"temperature": torch.ones(b, device=dev), "top_k": torch.full((b,), -1, device=dev),
                   "top_p": torch.ones(b, device=dev), "min_p": torch.zeros(b, device=dev)}
        u = torch.rand(b, k + 1, device="cpu").to(dev)
        q_all = torch.stack(qs).to(dev)
        d_all = torch.tensor(drafts, device=dev)
        logp = torch.where(p_rows > 0, torch.log(p_rows.clamp_min(1e-38)), torch.full_like(p_rows, -1e30))
        if samps[live[0]].seed is None:
            kk, ts = accept_sampled(logp, d_all, q_all, neutral, u[:, :k], u[:, k],
                                    torch.zeros_like(q_all) if wrong_residual else None)
        else:
            kk, ts = accept_seeded(logp, d_all, neutral, [samps[r].seed for r in live],
                                   [len(prompt) + len(out[r]) for r in live])
        nxt_live = []
        for r, d, a, t in zip(live, drafts, kk.tolist(), ts.tolist()):
            out[r] += d[:a] + [t]
            if stats is not None:
                stats["rounds"] = stats.get("rounds", 0) + 1
                stats["emitted"] = stats.get("emitted", 0) + a + 1
            state[r] = (a, t)
            if len(out[r]) < length:
                nxt_live.append(r)
        spec.release([r for r in live if r not in nxt_live])
        live = nxt_live
        spec.speculate((lambda: True) if stop_trees else None)
    return [tuple(out[r][:length]) for r in rids], hits, lookups


def chi_square(samples, exact, alpha=1e-4):
    """(statistic, critical value) pooling cells with expected count < 5 into one."""
    from scipy.stats import chi2

    n = len(samples)
    counts = {}
    for s in samples:
        counts[s] = counts.get(s, 0) + 1
    assert set(counts) <= set(exact), f"impossible sequences sampled: {set(counts) - set(exact)}"
    big = [c for c, p in exact.items() if n * p >= 5]
    stat = sum((counts.get(c, 0) - n * exact[c]) ** 2 / (n * exact[c]) for c in big)
    dof = len(big) - 1
    rest_e = n * sum(p for c, p in exact.items() if c not in big)
    if rest_e > 0:
        rest_o = sum(v for c, v in counts.items() if c not in big)
        stat += (rest_o - rest_e) ** 2 / rest_e
        dof += 1
    return stat, float(chi2.ppf(1 - alpha, max(dof, 1)))


