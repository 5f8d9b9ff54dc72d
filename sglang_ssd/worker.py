"""The SSD worker: SGLang's speculative worker for --speculative-algorithm SSD (target side).

Each decode round: tell the draft process the outcome (k, t*) of every request's last
verification, receive the next speculation (from its cache on a hit, from the backup on a miss),
verify [t, x_1..x_K] with the target in one forward, emit x_1..x_k, t*. The draft's speculation
work for the next round overlaps with this verification because the draft process drafts right
after answering. Per-request state is keyed by request id; the scheduler owns all target KV.
Runs synchronously (no overlap schedule): req.output_ids is complete at every call.
"""

from __future__ import annotations

import logging
import time
from typing import Optional

import torch

from sglang.srt.layers.logits_processor import LogitsProcessorOutput
from sglang.srt.managers.schedule_batch import ScheduleBatch
from sglang.srt.managers.tp_worker import TpModelWorker
from sglang.srt.managers.utils import GenerationBatchResult
from sglang.srt.model_executor.forward_batch_info import ForwardMode
from sglang.srt.runtime_context import get_device, get_parallel, get_spec
from sglang.srt.server_args import ServerArgs
from sglang.srt.speculative.base_spec_worker import BaseSpecWorker
from sglang.srt.speculative.ngram_info import NgramVerifyInput
from sglang.srt.utils import is_cpu

from sglang_ssd import stats as ssd_stats
from sglang_ssd import wire
from sglang_ssd.backup import ngram_propose
from sglang_ssd.auto_k import DepthController
from sglang_ssd.config import (choose_depth, choose_draft_device, choose_draft_dtype, endpoint_for_replica,
                               get_config)
from sglang_ssd.draft_client import DraftClient, DraftStartError
from sglang_ssd.vocab import tokenizer_digest
from sglang_ssd.fanout import resolve_fanout
from sglang_ssd.qlaw import unpack as unpack_q
from sglang_ssd.sampling import gumbel_choice, is_greedy, param_tensors, processed_probs
from sglang_ssd.grammar import apply_chain_mask, grammar_spec_of, speculated_grammar_mask
from sglang_ssd.verify import accept_chain, accept_sampled_rows, needs_plain_path, plain_path_reason

logger = logging.getLogger(__name__)


class SSDWorker(BaseSpecWorker):
    def __init__(self, server_args: ServerArgs, gpu_id: int, nccl_port: int,
                 target_worker: TpModelWorker):
        super().__init__()
        self.server_args = server_args
        self._target_worker = target_worker
        self._draft_worker = None
        self.model_runner = target_worker.model_runner
        self.device = get_device().device
        self.cfg = get_config(server_args)
        # self.k: the deepest speculation (SGLang reserves KV for it); each round's K comes from
        # self.depth, which moves only when the user did not fix --speculative-num-steps.
        self.k = int(get_spec().speculative_num_steps)
        k_init, auto = choose_depth(server_args, self.k, self.cfg)
        self.depth = DepthController(k_init, self.k, auto)
        self.n = self.k + 1
        self.speculative_num_draft_tokens = self.n
        self.speculative_num_steps = self.k
        self.topk = 1
        self.tp_rank = get_parallel().tp_rank
        self.tp_group = get_parallel().tp_group
        self.stats = ssd_stats.RUNNING
        self.vocab_size = int(self.model_runner.model_config.vocab_size)
        budget = self.cfg.fanout_budget or (None if self.cfg.fanout else 3 * (k_init + 1))
        fixed = self.cfg.fanout if self.cfg.fanout is None or len(self.cfg.fanout) == self.k + 1 else \
            self.cfg.fanout + [0] * (self.k + 1 - len(self.cfg.fanout))  # K fixed below the reserve
        self.fanout = resolve_fanout(self.k, fixed, budget, self.vocab_size)
        self.synced: dict[str, tuple[int, int]] = {}  # rid -> outcome of its last round
        self.refused: set[str] = set()  # rids the draft refused: served without it from then on
        self.round = 0
        self._generation = 0  # draft process generation the synced states belong to
        self._last_reply_at = float("-inf")
        self._table_version = -1  # auto K's table as last copied into the statistics
        self._verify_s = 0.0  # moving average of the target's verify forward (the backup policy uses it)
        self.client: Optional[DraftClient] = None
        self.metrics = None
        if self.tp_rank == 0:
            self.client = self._start_draft(server_args, gpu_id)
            self._generation = self.client.generation
            if getattr(server_args, "enable_metrics", False):
                from sglang_ssd.metrics import SSDMetrics

                self.metrics = SSDMetrics({"model_name": str(server_args.served_model_name
                                                             or server_args.model_path)})

    # ---- draft process ---------------------------------------------------------------------
    def _start_draft(self, server_args: ServerArgs, gpu_id: int) -> DraftClient:
        cfg = self.cfg
        target_device = str(server_args.device)
        dp_rank = get_parallel().dp_rank or 0
        device = choose_draft_device(
            cfg.draft_device, target_device, torch.cuda.device_count() if target_device != "cpu" else 0,
            base_gpu_id=int(getattr(server_args, "base_gpu_id", 0) or 0), tp_size=int(server_args.tp_size),
            dp_size=int(getattr(server_args, "dp_size", 1) or 1), dp_rank=dp_rank,
            gpu_id_step=int(getattr(server_args, "gpu_id_step", 1) or 1))
        endpoint = cfg.draft_endpoint and endpoint_for_replica(cfg.draft_endpoint, dp_rank)
        draft_path = server_args.speculative_draft_model_path
        dtype = choose_draft_dtype(cfg.draft_dtype, device, server_args.dtype, draft_path)
        target_tok = server_args.tokenizer_path or server_args.model_path
        mine = tokenizer_digest(target_tok)

        def check_ready(ready: wire.Ready) -> Optional[str]:
            """A draft whose vocabulary means something else is refused, naming both sides."""
            if mine and ready.tokenizer_digest:
                if mine != ready.tokenizer_digest:
                    return (f"--speculative-draft-model-path={draft_path!r}: the draft's tokenizer "
                            f"(vocabulary digest {ready.tokenizer_digest[:12]}, {ready.vocab_size} ids) "
                            f"differs from the target's {target_tok!r} ({mine[:12]}, {self.vocab_size} "
                            "ids); SSD needs a "
                            "shared vocabulary")
            elif ready.vocab_size != self.vocab_size:
                return (f"--speculative-draft-model-path={draft_path!r}: draft vocabulary size "
                        f"{ready.vocab_size} != target vocabulary size {self.vocab_size}")
            return None

        try:
            client = DraftClient(
                model_path=draft_path, k=self.k, fanout=self.fanout,
                backup=cfg.backup, backup_batch_threshold=cfg.backup_batch_threshold, device=device,
                dtype=dtype, kv_tokens=cfg.draft_kv_tokens,
                threads=cfg.draft_threads or (1 if device == "cpu" else None),
                endpoint=endpoint, curve_keys=cfg.curve_keys, timeout_s=cfg.draft_timeout,
                max_reply_bytes=wire.max_reply_bytes(self.k, self.vocab_size,
                                                     int(server_args.max_running_requests or 1024)),
                start_timeout_s=cfg.draft_start_timeout, saguaro_c=cfg.saguaro_c,
                fanout_budget=None if cfg.fanout is not None else sum(self.fanout),
                auto_budget=cfg.fanout is None and cfg.fanout_budget is None,
                check_ready=check_ready, engine=cfg.draft_engine,
            )
        except DraftStartError as e:
            raise ValueError(str(e)) from None
        ready = client.ready
        self.stats.draft_pid = ready.pid
        self.stats.config = dict(
            k=self.depth.k, k_max=self.k, auto_k=self.depth.auto, saguaro_c=cfg.saguaro_c, backup=cfg.backup,
            fanout_budget=None if cfg.fanout is not None else sum(self.fanout),
            auto_budget=cfg.fanout is None and cfg.fanout_budget is None, explicit_fanout=cfg.fanout, draft_model=draft_path, draft_device=ready.device,
            draft_endpoint=endpoint or "spawned (private ipc)", draft_engine=cfg.draft_engine,
            draft_timeout_ms=cfg.draft_timeout * 1e3, curve=bool(cfg.curve_keys))
        self.stats.fanout = list(ready.fanout)
        logger.info("SSD draft process %d ready on %s (K=%s, fan-out budget %d)", ready.pid, ready.device,
                    f"auto 1..{self.k} from {self.depth.k}" if self.depth.auto else self.depth.k,
                    sum(ready.fanout))
        return client

    @property
    def draft_worker(self):
        return None

    def alloc_memory_pool(self, memory_pool_config=None, req_to_token_pool=None,
                          token_to_kv_pool_allocator=None):
        self.req_to_token_pool, self.token_to_kv_pool_allocator = self._target_worker.get_memory_pool()

    def init_attention_backends(self):
        pass

    def init_cuda_graphs(self):
        pass

    def clear_cache_pool(self):
        pass

    def _send(self, msg: wire.Step) -> Optional[wire.StepReply]:
        if self.client is None:
            return None
        reply = self.client.step(msg)
        if self.client.generation != self._generation:  # a restarted draft knows no request
            self._generation = self.client.generation
            self.stats.draft_restarts = self.client.restarts
            self.stats.draft_pid = self.client.pid
            self.synced.clear()
        self.stats.worker_rejected_messages = self.client.rejected
        if reply is not None:
            self.stats.record_health(reply.health)
        return reply

    def on_idle(self) -> None:
        """The scheduler has nothing running: let the draft free every request it still holds
        (finished requests are otherwise released only with the next round)."""
        if self.tp_rank != 0 or not self.synced or self.client is None:
            return
        releases = list(self.synced)
        self.synced.clear()
        self.refused.clear()
        self.round += 1
        self._send(wire.Step(round=self.round, releases=releases, depth=self.depth.k))  # the reply updates pool usage

    # ---- the scheduler's entry point ------------------------------------------------------
    def forward_batch_generation(self, batch: ScheduleBatch, on_publish=None, grammar_barrier=None,
                                 pp_proxy_tensors=None, **kwargs) -> GenerationBatchResult:
        if batch.forward_mode.is_decode():
            return self._decode(batch, on_publish)
        return self._prefill(batch, on_publish, pp_proxy_tensors)

    def _prefill(self, batch, on_publish, pp_proxy_tensors) -> GenerationBatchResult:
        if self.client is not None and batch.forward_mode.is_extend():
            # The draft prefills these prompts while the target does (wire.Step.warm).
            warm = [list(r.origin_input_ids) + list(r.output_ids) for r in batch.reqs if r.rid not in self.synced]
            if warm:
                self.round += 1
                self._send(wire.Step(round=self.round, warm=warm, reply=False, depth=self.depth.k))
        seeded = [i for i, r in enumerate(batch.reqs) if _seeded_first_token(r)]
        batch._ssd_seeded_rows = seeded  # patches/seeded_first_token.py keeps their logits
        result = self.target_worker.forward_batch_generation(batch, pp_proxy_tensors=pp_proxy_tensors)
        bs = len(batch.reqs)
        predict = result.next_token_ids
        first_logits = getattr(batch, "_ssd_first_logits", None)
        batch._ssd_seeded_rows = batch._ssd_first_logits = None
        if seeded and first_logits is not None and batch.forward_mode.is_extend():
            predict = self._seeded_first_tokens(batch, seeded, first_logits, predict)
            result.next_token_ids = predict
        if bs and batch.forward_mode.is_extend():
            firsts = predict.tolist()
            begins = []
            for req, t in zip(batch.reqs, firsts):
                if getattr(req, "inflight_middle_chunks", 0) > 0:
                    continue
                prompt = list(req.origin_input_ids) + list(req.output_ids)
                begins.append(wire.Begin(rid=req.rid, prompt=prompt, pending=int(t),
                                         sampling=_sampling_of(req), **_grammar_of(req)))
                self.synced[req.rid] = (-1, int(t))
            if begins:
                self.round += 1
                self._send(wire.Step(round=self.round, begins=begins, reply=False, depth=self.depth.k))
        new_seq_lens = batch.seq_lens.clone()
        accept_tokens = torch.zeros(bs, self.n, dtype=torch.int32, device=self.device)
        if bs:
            accept_tokens[:, 0] = predict
        if on_publish is not None:
            on_publish(new_seq_lens)
        return GenerationBatchResult(
            logits_output=result.logits_output, next_token_ids=predict,
            can_run_cuda_graph=result.can_run_cuda_graph,
            accept_lens=torch.ones(bs, dtype=torch.int32, device=self.device),
            new_seq_lens=new_seq_lens,
            next_draft_input=NgramVerifyInput(draft_token_num=self.n, new_seq_lens=new_seq_lens,
                                              accept_tokens=accept_tokens.flatten(),
                                              accept_lens=torch.ones(bs, dtype=torch.int32, device=self.device)),
            speculative_num_draft_tokens=self.n,
        )

    def _seeded_first_tokens(self, batch, rows, logits, predict):
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

    def _exchange(self, batch, k: int):
        """One round with the draft at depth k: drafts, proposals q' (None: deterministic), hit
        flags (None: no cache lookup) per request, the time spent waiting, and the draft's tree
        time and depth for this round's speculation."""
        reqs = batch.reqs
        cur = {r.rid for r in reqs}
        releases = [rid for rid in self.synced if rid not in cur]
        for rid in releases:
            del self.synced[rid]
        self.refused &= cur
        seq_lens = batch.seq_lens_cpu.tolist() if batch.seq_lens_cpu is not None else batch.seq_lens.tolist()
        begins, outcomes = [], []
        for req, L in zip(reqs, seq_lens):
            if req.rid in self.refused:
                continue
            st = self.synced.get(req.rid)
            if st is None:  # resync: whatever the draft knew of it is stale
                releases.append(req.rid)
                begins.append(wire.Begin(rid=req.rid, prompt=list(req.origin_input_ids) + list(req.output_ids[:-1]),
                                         pending=int(req.output_ids[-1]), sampling=_sampling_of(req),
                                         **_grammar_of(req)))
                st = (-1, int(req.output_ids[-1]))
                self.synced[req.rid] = st
            outcomes.append(wire.Outcome(rid=req.rid, k=st[0], t_star=st[1], committed_len=int(L)))
        self.round += 1
        t0 = time.perf_counter()
        reply = self._send(wire.Step(round=self.round, begins=begins, outcomes=outcomes, releases=releases,
                                     verify_s=self._verify_s, depth=k))
        wait = time.perf_counter() - t0
        specs, tree = {}, (0.0, 0)
        if reply is not None and reply.health.out_of_order:
            # The draft saw a later round than ours (a corrupted or forged Step got through):
            # move past it and resync every request next round instead of refusing them.
            logger.warning("SSD draft refused round %d as out of order (its last: %d); resyncing",
                           self.round, reply.health.last_round)
            self.round = max(self.round, reply.health.last_round)
            self.synced.clear()
            self.stats.round_resyncs += 1
        elif reply is not None:
            specs = {s.rid: s for s in reply.specs if len(s.tokens) == k}
            tree = (reply.times.tree_s, reply.times.depth)
            for r in reply.refusals:
                logger.warning("SSD draft refused request %s, serving it without the draft: %s",
                               r.rid, r.reason)
                self.stats.record_refusal(r.reason)
                self.refused.add(r.rid)
            self.stats.record_draft_times(reply.times.tree_s, reply.times.lookup_s, wait, t0 - self._last_reply_at,
                                          first=any(o.k < 0 for o in outcomes))
            self._last_reply_at = time.perf_counter()
            self.stats.record_plan(reply.plan)
        else:
            self.stats.draft_failures += 1
        drafts, qs, hits = [], [], []
        by_rid = {o.rid: o for o in outcomes}
        for req in reqs:
            o = by_rid.get(req.rid)
            s = specs.get(req.rid)
            ok = s is not None and all(0 <= t < self.vocab_size for t in s.tokens)
            q = None
            if ok and s.q_counts:
                q = self._decode_q(s, k)
                ok = q is not None
            if ok:
                drafts.append(list(s.tokens))
                qs.append(q)
                hits.append(bool(s.hit) if o is not None and o.k >= 0 else None)
            else:  # refused, malformed or no answer: serve exactly with the fast backup
                self.synced.pop(req.rid, None)
                ctx = list(req.origin_input_ids) + list(req.output_ids)
                drafts.append(ngram_propose(ctx, k))
                qs.append(None)
                hits.append(None)
        return drafts, qs, hits, wait, tree

    def _decode_q(self, spec: wire.Spec, k: int) -> Optional[torch.Tensor]:
        """q' [K, V] from the wire, or None if it is not a law the drafted tokens came from."""
        q = unpack_q(spec.q, spec.q_ids, spec.q_counts, k, self.vocab_size)
        if q is None or not bool((q.gather(1, torch.tensor(spec.tokens).view(-1, 1)) > 0).all()):
            return None
        return q

    def _broadcast(self, t: torch.Tensor) -> torch.Tensor:
        if self.tp_group is not None and self.tp_group.world_size > 1:
            self.tp_group.broadcast(t, src=0)
        return t

    def _decode(self, batch: ScheduleBatch, on_publish) -> GenerationBatchResult:
        t_round = time.perf_counter()
        bs = len(batch.reqs)
        k = self.depth.k
        pending = [int(r.output_ids[-1]) if r.output_ids else int(r.origin_input_ids[-1]) for r in batch.reqs]
        tree = (0.0, 0)
        if self.tp_rank == 0:
            drafts_l, qs, hits, wait, tree = self._exchange(batch, k)
        else:
            drafts_l, qs, hits, wait = [[0] * k for _ in range(bs)], [None] * bs, [None] * bs, 0.0
        drafts = torch.tensor([[t] + d for t, d in zip(pending, drafts_l)], dtype=torch.int64)
        if self.tp_group is not None and self.tp_group.world_size > 1:
            # Every rank verifies rank 0's drafts at rank 0's K: [K, t, x_1..x_K, padding] per row.
            full = torch.zeros(bs, self.k + 2, dtype=torch.int64)
            full[:, 0] = k
            full[:, 1:k + 2] = drafts
            full = self._broadcast(full.to(self.device))
            k = int(full[0, 0]) if bs else k
            drafts = full[:, 1:k + 2].contiguous()
        drafts = drafts.to(self.device)
        n = k + 1

        self._prepare_verify(batch, drafts)
        t0 = time.perf_counter()
        result = self.target_worker.forward_batch_generation(batch, is_verify=True)
        if torch.cuda.is_available() and str(self.device).startswith("cuda"):
            torch.cuda.synchronize()  # the verify time is the kernels', not their launch
        took = time.perf_counter() - t0
        self._verify_s = 0.9 * self._verify_s + 0.1 * took if self._verify_s else took
        self.stats.verify_s += took
        logits_output = result.logits_output
        logits = logits_output.next_token_logits

        reasons = [plain_path_reason(r) for r in batch.reqs]
        gmask, grammar_rows = speculated_grammar_mask(batch.reqs, drafts, reasons,
                                                      int(batch.sampling_info.vocab_size))
        plain = torch.tensor([r is not None for r in reasons], dtype=torch.bool, device=self.device)
        plain_tokens = torch.zeros(bs, dtype=torch.int64, device=self.device)
        if bool(plain.any()):
            plain_tokens = self._sample_first_position(batch, logits)
        if gmask is not None:  # after the plain rows' sampler, which masks by itself
            apply_chain_mask(logits, *gmask)
        res = accept_chain(drafts, logits, plain, plain_tokens)
        sampled = [i for i, r in enumerate(batch.reqs) if not plain[i] and _sampling_of(r) is not None]
        if sampled:
            res = accept_sampled_rows(batch.reqs, batch.seq_lens.tolist(), drafts, logits, qs, sampled, res)
        if self.tp_group is not None and self.tp_group.world_size > 1:
            packed = self._broadcast(torch.cat([res.tokens, res.accept_len.view(-1, 1)], dim=1).to(self.device))
            res.tokens, res.accept_len = packed[:, :n].contiguous(), packed[:, n].contiguous()
            res.k = (res.accept_len - 1).tolist()
            res.t_star = [int(res.tokens[i, res.k[i]]) for i in range(bs)]

        accept_lens = res.accept_len.to(self.device)
        new_seq_lens = batch.seq_lens + accept_lens
        for req, kk, ts in zip(batch.reqs, res.k, res.t_star):
            if req.rid in self.synced or self.tp_rank != 0:
                self.synced[req.rid] = (kk, ts)
        self.stats.record_round(res.k, hits, wait, [bool(p) for p in plain.tolist()], depth=k)
        if self.tp_rank == 0:
            spec_ks = [kk for kk, p in zip(res.k, plain.tolist()) if not p]
            nxt = self.depth.observe(k, bs, spec_ks, took, time.perf_counter() - t_round, tree[0], tree[1])
            self.stats.live_k = nxt
            if self.depth.auto and self.depth.version != self._table_version:  # not every round
                self._table_version = self.depth.version
                self.stats.auto_k = self.depth.table()
        if self.metrics is not None:
            self.metrics.publish(self.stats)
        self.stats.round_s += time.perf_counter() - t_round
        self._record_reasons(reasons, grammar_rows, res.k)
        logits_output.customized_info = {
            "ssd_accepted": list(res.k),
            "ssd_hit": [(-1 if h is None else int(h)) for h in hits],
        }
        if batch.return_logprob:
            self._spec_logprobs(batch, logits_output, res)
        if on_publish is not None:
            on_publish(new_seq_lens)
        batch.forward_mode = ForwardMode.DECODE
        accept_tokens = res.tokens.to(self.device).flatten()
        return GenerationBatchResult(
            logits_output=logits_output, next_token_ids=accept_tokens,
            can_run_cuda_graph=result.can_run_cuda_graph, accept_lens=accept_lens,
            new_seq_lens=new_seq_lens,
            next_draft_input=NgramVerifyInput(draft_token_num=n, new_seq_lens=new_seq_lens,
                                              accept_tokens=accept_tokens, accept_lens=accept_lens),
            speculative_num_draft_tokens=n,
        )

    def _record_reasons(self, reasons, grammar_rows, ks) -> None:
        """Plain-path rounds by reason, and speculated grammar rounds, in the SSD statistics."""
        st = self.stats
        for r in reasons:
            if r is not None:
                st.plain_reasons[r] = st.plain_reasons.get(r, 0) + 1
        st.grammar_spec_rounds += len(grammar_rows)
        st.grammar_accepted += sum(ks[i] for i in grammar_rows)

    def _prepare_verify(self, batch: ScheduleBatch, drafts: torch.Tensor) -> None:
        """Turn the decode batch into a TARGET_VERIFY forward over [t, x_1..x_K] per request."""
        from sglang.kernels.ops.speculative.cache_locs import assign_extend_cache_locs_func

        bs, n = drafts.shape
        dev = self.device
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

    def _sample_first_position(self, batch: ScheduleBatch, logits: torch.Tensor) -> torch.Tensor:
        """SGLang's own sampler on each request's first verify position: the plain next token."""
        bs = len(batch.reqs)
        first = logits.view(bs, logits.shape[0] // bs, -1)[:, 0, :].clone()
        out = LogitsProcessorOutput(next_token_logits=first)
        info = batch.sampling_info
        self.model_runner._preprocess_logits(out, info)
        return self.model_runner.sampler(out, info, False, [], [], batch.seq_lens).to(torch.int64)

    def _spec_logprobs(self, batch, logits_output, res) -> None:
        from sglang.srt.layers.logprob_processor import compute_spec_logprobs

        bs, n = res.tokens.shape
        ar = torch.arange(n, device=self.device).view(1, -1)
        base = torch.arange(bs, device=self.device).view(-1, 1) * n
        accept_len = res.accept_len.to(self.device).view(-1, 1)
        accept_index = torch.where(ar < accept_len, base + ar, torch.full_like(ar + base, -1)).to(torch.int32)
        compute_spec_logprobs(batch, logits_output, res.tokens.to(self.device).flatten(), accept_index=accept_index)


def _grammar_of(req) -> dict:
    """Begin's grammar fields: the constraint, for the draft's grammar-aware drafting."""
    kind, spec = grammar_spec_of(req)
    if not kind:
        return {}
    return {"grammar_kind": kind, "grammar": spec, "grammar_start": len(req.origin_input_ids)}


def _seeded_first_token(req) -> bool:
    """Whether SSD draws this request's first token itself (seeded, sampled, nothing else that
    SGLang's sampler would apply: grammar, penalties, logprobs of the sampled token)."""
    return (req.sampling_params.sampling_seed is not None and _sampling_of(req) is not None
            and getattr(req, "grammar", None) is None and not req.return_logprob)


def _sampling_of(req) -> Optional[wire.Sampling]:
    """The draft-side view of a sampled request; None for greedy (and plain-path) requests."""
    sp = req.sampling_params
    if is_greedy(sp.temperature, sp.top_k) or needs_plain_path(req):
        return None
    return wire.Sampling(temperature=float(sp.temperature), top_k=int(sp.top_k), top_p=float(sp.top_p),
                         min_p=float(sp.min_p), seed=sp.sampling_seed)
