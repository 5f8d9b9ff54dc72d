"""The target's side of a round inside SGLang's batch: the TARGET_VERIFY forward over
[t, x_1..x_K] per request, SGLang's own sampler on the first position, logprobs of what was
emitted, and the seeded first token of a prefill."""

from __future__ import annotations

import torch

from sglang.srt.layers.logits_processor import LogitsProcessorOutput
from sglang.srt.model_executor.forward_batch_info import ForwardMode
from sglang.srt.speculative.ngram_info import NgramVerifyInput
from sglang.srt.utils import is_cpu

from sglang_ssd.sampling import gumbel_choice, param_tensors, processed_probs


def prepare_verify(batch, drafts: torch.Tensor, dev) -> None:
    """Turn the decode batch into a TARGET_VERIFY forward over [t, x_1..x_K] per request (K may
    be 0: a plain round, one token per request)."""
    from sglang.kernels.ops.speculative.cache_locs import assign_extend_cache_locs_func

    bs, n = drafts.shape
    seq_lens = batch.seq_lens
    positions = (seq_lens.view(-1, 1).to(torch.int64) + torch.arange(n, device=dev).view(1, -1)).flatten()
    ar = torch.arange(n, device=dev)
    retrieve_index = (torch.arange(bs, device=dev).view(-1, 1) * n + ar.view(1, -1))
    nxt = torch.where(ar < n - 1, ar + 1, torch.full_like(ar, -1)).view(1, -1).repeat(bs, 1)
    sibling = torch.full((bs, n), -1, dtype=torch.int64, device=dev)
    chain = torch.tril(torch.ones(n, n, dtype=torch.bool, device=dev))
    if is_cpu():
        mask = chain.flatten().repeat(bs)
    else:
        lens = batch.seq_lens_cpu.tolist() if batch.seq_lens_cpu is not None else seq_lens.tolist()
        mask = torch.cat([
            torch.cat([torch.ones(n, int(L), dtype=torch.bool, device=dev), chain], dim=1).flatten()
            for L in lens
        ])
    batch.forward_mode = ForwardMode.TARGET_VERIFY
    batch.input_ids = drafts.flatten()
    batch.out_cache_loc = assign_extend_cache_locs_func(
        req_pool_indices=batch.req_pool_indices,
        req_to_token=batch.req_to_token_pool.req_to_token,
        start_offset=seq_lens, end_offset=seq_lens + n, batch_size=bs,
        draft_token_num=n, device=dev,
    )
    batch.spec_info = NgramVerifyInput(
        draft_token=drafts.flatten(), custom_mask=mask, positions=positions,
        retrieve_index=retrieve_index, retrieve_next_token=nxt, retrieve_next_sibling=sibling,
        draft_token_num=n,
    )


def replays_graphs(model_runner) -> bool:
    """Whether the target replays captured decode graphs (then of TARGET_VERIFY, K+1 wide)."""
    runner = getattr(model_runner, "decode_cuda_graph_runner", None)
    return runner is not None and runner is not getattr(model_runner, "eager_runner", None)


def captured_verify(model_runner):
    """(verify widths, batch sizes) of the graphs the target replays for TARGET_VERIFY forwards,
    or None when it replays none (CPU, --disable-cuda-graph, or a runner that captured DECODE)."""
    if not replays_graphs(model_runner):
        return None
    runner = model_runner.decode_cuda_graph_runner
    width = getattr(runner, "captured_req_width", None)
    sizes = list(getattr(runner, "capture_bs", None) or [])
    if getattr(runner, "capture_forward_mode", None) != ForwardMode.TARGET_VERIFY or not width or not sizes:
        return None
    return [int(width)], [int(b) for b in sizes]


def decode_forward(target_worker, batch, tokens: torch.Tensor):
    """A plain round (K = 0) as SGLang's own DECODE forward of one token per request, not a
    one-token TARGET_VERIFY: on CPU the verify path costs 10-30% more per token (measured:
    Qwen2.5-Coder 1.5B bs1 451 vs 405 ms). Used only where no decode graph was captured: a
    captured graph is a TARGET_VERIFY of K+1 tokens and would replay for a DECODE batch.

    The KV slot of each token is the one the spec allocator reserved at seq_lens; during the
    forward seq_lens count the new token, as in SGLang's prepare_for_decode, then are restored
    (the scheduler moves them by the result's accept lengths)."""
    committed = (batch.seq_lens, batch.seq_lens_cpu, batch.seq_lens_sum, batch.orig_seq_lens)
    pool = batch.req_to_token_pool.req_to_token
    batch.out_cache_loc = pool[batch.req_pool_indices, batch.seq_lens].to(torch.int64)
    batch.forward_mode = ForwardMode.DECODE
    batch.input_ids = tokens.flatten()
    batch.spec_info = None
    batch.seq_lens = batch.seq_lens + 1
    if batch.seq_lens_cpu is not None:
        batch.seq_lens_cpu = batch.seq_lens_cpu + 1
    if batch.orig_seq_lens is not None:
        batch.orig_seq_lens = batch.orig_seq_lens + 1
    batch.seq_lens_sum = None
    try:
        return target_worker.forward_batch_generation(batch, is_verify=True)
    finally:
        batch.seq_lens, batch.seq_lens_cpu, batch.seq_lens_sum, batch.orig_seq_lens = committed


def sample_first_position(model_runner, batch, logits: torch.Tensor) -> torch.Tensor:
    """SGLang's own sampler on each request's first verify position: the plain next token."""
    bs = len(batch.reqs)
    first = logits.view(bs, logits.shape[0] // bs, -1)[:, 0, :].clone()
    out = LogitsProcessorOutput(next_token_logits=first)
    info = batch.sampling_info
    model_runner._preprocess_logits(out, info)
    return model_runner.sampler(out, info, False, [], [], batch.seq_lens).to(torch.int64)


def spec_logprobs(batch, logits_output, res, dev) -> None:
    """SGLang's logprobs of the emitted tokens (accepted drafts and t*)."""
    from sglang.srt.layers.logprob_processor import compute_spec_logprobs

    bs, n = res.tokens.shape
    ar = torch.arange(n, device=dev).view(1, -1)
    base = torch.arange(bs, device=dev).view(-1, 1) * n
    accept_len = res.accept_len.to(dev).view(-1, 1)
    accept_index = torch.where(ar < accept_len, base + ar, torch.full_like(ar + base, -1)).to(torch.int32)
    compute_spec_logprobs(batch, logits_output, res.tokens.to(dev).flatten(), accept_index=accept_index)


def seeded_first_tokens(batch, rows, logits, predict):
    """The first token of each seeded request: the Gumbel-max sample (sampling.py) of the
    distribution SGLang's sampler would use, at the position it takes."""
    sps = [batch.reqs[i].sampling_params for i in rows]
    probs = processed_probs(logits.float(), **param_tensors(sps, logits.device))
    tokens = torch.cat([
        gumbel_choice(probs[j:j + 1], sp.sampling_seed,
                      [len(batch.reqs[i].origin_input_ids) + len(batch.reqs[i].output_ids)])
        for j, (sp, i) in enumerate(zip(sps, rows))])
    predict = predict.clone()
    predict[torch.tensor(rows, device=predict.device)] = tokens.to(predict.device, predict.dtype)
    return predict
