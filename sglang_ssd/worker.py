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

from sglang.srt.managers.schedule_batch import ScheduleBatch
from sglang.srt.managers.tp_worker import TpModelWorker
from sglang.srt.managers.utils import GenerationBatchResult
from sglang.srt.model_executor.forward_batch_info import ForwardMode
from sglang.srt.runtime_context import get_device, get_parallel, get_spec
from sglang.srt.server_args import ServerArgs
from sglang.srt.speculative.base_spec_worker import BaseSpecWorker
from sglang.srt.speculative.ngram_info import NgramVerifyInput

from sglang_ssd import stats as ssd_stats
from sglang_ssd import target_prior, wire
from sglang_ssd.auto_k import DepthController
from sglang_ssd.backup import ngram_propose
from sglang_ssd.config import choose_depth, get_config
from sglang_ssd.cpu_cores import TargetCores, split_for_server
from sglang_ssd.draft_client import DraftClient
from sglang_ssd.draft_launch import start_draft
from sglang_ssd.fanout import resolve_fanout
from sglang_ssd.grammar import apply_chain_mask, speculated_grammar_mask
from sglang_ssd.mode_planner import ModePlanner
from sglang_ssd.qlaw import unpack as unpack_q
from sglang_ssd.request_view import DraftView, sampling_of, seeded_first_token
from sglang_ssd.round_timing import RoundTiming, TreeTimes
from sglang_ssd.target_verify import (captured_verify, decode_forward, prepare_verify, replays_graphs,
                                      sample_first_position, seeded_first_tokens, spec_logprobs)
from sglang_ssd.verify import accept_chain, accept_sampled_rows, plain_path_reason
from sglang_ssd.verify_widths import VerifyGraphs

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
        # self.k: the deepest speculation (SGLang reserves KV for it). Each round's mode and K come
        # from the planner (mode_planner.py; K moves only when --speculative-num-steps is not given).
        self.k = int(get_spec().speculative_num_steps)
        k_init, auto = choose_depth(server_args, self.k, self.cfg)
        self.planner = ModePlanner(DepthController(k_init, self.k, auto),
                                   pinned=None if self.cfg.mode == "auto" else self.cfg.mode)
        self.n = self.k + 1
        self.speculative_num_draft_tokens = self.n
        self.speculative_num_steps = self.k
        self.topk = 1
        self.tp_rank = get_parallel().tp_rank
        self.tp_group = get_parallel().tp_group
        self.stats = ssd_stats.RUNNING
        self.timing = RoundTiming(self.planner, self.stats)
        self.vocab_size = int(self.model_runner.model_config.vocab_size)
        budget = self.cfg.fanout_budget or (None if self.cfg.fanout else 3 * (k_init + 1))
        fixed = self.cfg.fanout if self.cfg.fanout is None or len(self.cfg.fanout) == self.k + 1 else \
            self.cfg.fanout + [0] * (self.k + 1 - len(self.cfg.fanout))  # K fixed below the reserve
        self.fanout = resolve_fanout(self.k, fixed, budget, self.vocab_size)
        self.synced: dict[str, tuple[int, int]] = {}  # rid -> outcome of its last round
        self.refused: set[str] = set()  # rids the draft refused: served without it from then on
        self._decoding = self._joining = 0  # requests in the batch new ones join: going on after the
        # last decode round, and prefilled since (ModePlanner.mode_for: whether to tell the draft)
        self.view = DraftView(self.cfg.draft_window)  # which of a request's tokens the draft sees
        self.deferred: dict[str, tuple[int, str]] = {}  # rid -> (decode round to begin it again, reason): a retryable refusal's plain rounds
        self._served = 0  # decode rounds served (the deferrals' clock: rounds without the draft send no Step)
        self.round = 0
        self._generation = 0  # draft process generation the synced states belong to
        self._last_reply_at = float("-inf")
        self._predrafted = True  # whether the last exchange let the draft pre-draft (lookups count)
        self.client: Optional[DraftClient] = None
        self.metrics = None
        self.verify_graphs: Optional[VerifyGraphs] = None  # the target's captured verify graphs (init_cuda_graphs)
        split = split_for_server(server_args, self.cfg)  # CPU: target and draft on their own cores
        if str(server_args.device) == "cpu":
            logger.info("SSD on CPU: %s", split.describe())
        self.cores = TargetCores(split, self.planner.costs)
        if str(server_args.device) == "cpu" and self.cfg.mode == "auto":
            # before the draft runs: the linear layers timed per thread count, the cost model's prior
            # (a sync verify on every core, a plain step: predicted from the first rounds)
            try:
                self.planner.costs.set_prior(target_prior.measure(self.model_runner.model, self.cores.each_count()))
            except Exception:  # a model whose layers cannot be timed so: the cost model learns from rounds alone
                logger.exception("SSD: the target's linear layers could not be timed; no prior for the cost model")
            finally:
                self.cores.restore()
        if self.tp_rank == 0:
            self.client = self._start_draft(server_args, gpu_id)
            self._generation = self.client.generation
            if getattr(server_args, "enable_metrics", False):
                from sglang_ssd.metrics import SSDMetrics

                self.metrics = SSDMetrics({"model_name": str(server_args.served_model_name
                                                             or server_args.model_path)})

    def _use_cores(self, kind: str, batch_size: int, width: int) -> tuple[Optional[int], bool]:
        """(threads, measuring) of this forward on a split CPU server (cpu_cores.TargetCores)."""
        n, measuring = self.cores.use(kind, batch_size, width)
        if n is not None:
            self.stats.record_threads(kind, n)
        return n, measuring

    # ---- draft process ---------------------------------------------------------------------
    def _start_draft(self, server_args: ServerArgs, gpu_id: int) -> DraftClient:
        cfg, depth = self.cfg, self.planner.depth
        client, endpoint = start_draft(server_args, cfg, self.k, self.fanout, self.vocab_size,
                                       cpus=self.cores.split.draft if self.cores.active else None)
        ready = client.ready
        self.stats.draft_pid = ready.pid
        self.stats.config = dict(
            k=depth.k, k_max=self.k, auto_k=depth.auto, mode=cfg.mode, saguaro_c=cfg.saguaro_c,
            backup=cfg.backup, fanout_budget=None if cfg.fanout is not None else sum(self.fanout),
            auto_budget=cfg.fanout is None and cfg.fanout_budget is None, explicit_fanout=cfg.fanout,
            draft_model=server_args.speculative_draft_model_path, draft_device=ready.device,
            draft_endpoint=endpoint or "spawned (private ipc)", draft_engine=cfg.draft_engine,
            draft_timeout_ms=cfg.draft_timeout * 1e3, curve=bool(cfg.curve_keys),
            cores=self.cores.describe())
        self.stats.fanout = list(ready.fanout)
        logger.info("SSD draft process %d ready on %s (K=%s, fan-out budget %d, mode %s)", ready.pid,
                    ready.device, f"auto 1..{self.k} from {depth.k}" if depth.auto else depth.k,
                    sum(ready.fanout), cfg.mode)
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
        """Called by the scheduler once the target captured its graphs: automatic K keeps to the
        depths whose verify replays one (verify_widths.py)."""
        captured = captured_verify(self.model_runner)
        if captured is None:
            return
        self.verify_graphs = VerifyGraphs(*captured)
        depths = self.verify_graphs.depths(self.k)
        self.planner.depth.restrict(depths)
        logger.info("SSD: the target replays verify graphs of width %s for up to %d requests: K in %s; "
                    "plain rounds and other widths run eagerly (counted in verify_graphs)",
                    self.verify_graphs.widths, self.verify_graphs.batch_sizes[-1], depths)

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
        self.deferred.clear()
        self.round += 1
        self._send(wire.Step(round=self.round, releases=releases, depth=self.planner.k))  # the reply updates pool usage

    # ---- the scheduler's entry point ------------------------------------------------------
    def forward_batch_generation(self, batch: ScheduleBatch, on_publish=None, grammar_barrier=None,
                                 pp_proxy_tensors=None, **kwargs) -> GenerationBatchResult:
        if batch.forward_mode.is_decode():
            return self._decode(batch, on_publish)
        return self._prefill(batch, on_publish, pp_proxy_tensors)

    def _prefill(self, batch, on_publish, pp_proxy_tensors) -> GenerationBatchResult:
        # A paused draft (plain rounds) is told nothing; the first speculated round resyncs it. The
        # mode is the one of the batch these requests join (the last decode round's plus every
        # request prefilled since): 16 requests joining a plain batch had the draft prefill 16
        # prompts on its core while the target's plain steps wanted that core.
        self._joining += sum(getattr(r, "inflight_middle_chunks", 0) == 0  # (a prompt's last chunk; not one that
                             and (r.sampling_params.max_new_tokens or 2) > 1 for r in batch.reqs)  # ends here)
        mode = self.planner.mode_for(self._decoding + self._joining)
        talk = self.client is not None and batch.forward_mode.is_extend() and mode != "plain"
        # With a core split the target prefills on every core and tells the draft afterwards (the
        # Begins below): a prefill on the draft's cores too is worth more than the draft's head start.
        split = self._use_cores("prefill", len(batch.reqs), 0)[0] is not None
        if talk and not split:  # the draft prefills these prompts and drafts their first speculations meanwhile
            warm = [self.view.warm(r, mode == "ssd") for r in batch.reqs if r.rid not in self.synced]
            if warm:
                self.round += 1
                self._send(wire.Step(round=self.round, warm=warm, reply=False, depth=self.planner.k,
                                     predraft=mode == "ssd"))
        seeded = [i for i, r in enumerate(batch.reqs) if seeded_first_token(r)]
        batch._ssd_seeded_rows = seeded  # patches/seeded_first_token.py keeps their logits
        result = self.target_worker.forward_batch_generation(batch, pp_proxy_tensors=pp_proxy_tensors)
        bs = len(batch.reqs)
        predict = result.next_token_ids
        first_logits = getattr(batch, "_ssd_first_logits", None)
        batch._ssd_seeded_rows = batch._ssd_first_logits = None
        if seeded and first_logits is not None and batch.forward_mode.is_extend():
            predict = seeded_first_tokens(batch, seeded, first_logits, predict)
            result.next_token_ids = predict
        if bs and talk:
            begins = []
            for req, t in zip(batch.reqs, predict.tolist()):
                if getattr(req, "inflight_middle_chunks", 0) > 0:
                    continue
                begins.append(self.view.begin(req, list(req.origin_input_ids) + list(req.output_ids), t))
                self.synced[req.rid] = (-1, int(t))
            if begins:
                self.round += 1
                self._send(wire.Step(round=self.round, begins=begins, reply=False, depth=self.planner.k,
                                     predraft=mode == "ssd"))
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

    def _pause(self, reqs) -> None:
        """Plain rounds: the draft forgets these requests (their KV goes to its prefix cache, where
        the resync finds it) and builds no tree for them."""
        gone = [r.rid for r in reqs if r.rid in self.synced]
        if gone and self.client is not None:
            for rid in gone:
                del self.synced[rid]
            self.round += 1
            self._send(wire.Step(round=self.round, releases=gone, reply=False, depth=self.planner.k))
            self.stats.pauses += len(gone)

    def _exchange(self, batch, k: int, predraft: bool):
        """One round with the draft at depth k: drafts, proposals q' (None: deterministic), hit
        flags (None: no cache lookup) per request, the time spent waiting, and the draft's tree
        time and depth for this round's speculation. predraft False: the draft builds no tree
        after answering (sync rounds), so the next round's lookups are not counted as such."""
        reqs = batch.reqs
        cur = {r.rid for r in reqs}
        releases = [rid for rid in self.synced if rid not in cur]
        for rid in releases:
            del self.synced[rid]
        self.refused &= cur
        releases += [r for r in self.deferred if r not in cur]  # (the draft may hold its prefill)
        self.deferred = {r: v for r, v in self.deferred.items() if r in cur and v[0] > self._served}
        seq_lens = batch.seq_lens_cpu.tolist() if batch.seq_lens_cpu is not None else batch.seq_lens.tolist()
        begins, outcomes = [], []
        for req, L in zip(reqs, seq_lens):
            if req.rid in self.refused or req.rid in self.deferred:
                continue
            st = self.synced.get(req.rid)
            if st is None:  # resync: whatever the draft knew of it is stale
                releases.append(req.rid)
                begins.append(self.view.begin(req, list(req.origin_input_ids) + list(req.output_ids[:-1]),
                                       req.output_ids[-1]))
                st = (-1, int(req.output_ids[-1]))
                self.synced[req.rid] = st
            outcomes.append(wire.Outcome(rid=req.rid, k=st[0], t_star=st[1],
                                         committed_len=self.view.committed(req, int(L))))
        self.round += 1
        t0 = time.perf_counter()
        reply = self._send(wire.Step(round=self.round, begins=begins, outcomes=outcomes, releases=releases,
                                     verify_s=self.timing.verify_s, depth=k, predraft=predraft))
        wait = time.perf_counter() - t0
        specs, tree = {}, TreeTimes()
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
            self.stats.record_partial([s.partial for s in specs.values()])
            tree = TreeTimes(reply.times.tree_s, reply.times.depth, reply.plan.jit_s)
            for r in reply.refusals:
                if r.retry:  # not now (draft pool full, prefill running): plain rounds, then begin it again
                    self.stats.record_refusal(r.reason)
                    self.deferred[r.rid] = (self._served + wire.REFUSAL_RETRY_ROUNDS, r.reason.split(":")[0])
                    continue
                logger.warning("SSD draft refused request %s, serving it without the draft: %s",
                               r.rid, r.reason)
                self.stats.record_refusal(r.reason)
                self.refused.add(r.rid)
            self.stats.record_draft_times(reply.times.tree_s, reply.times.lookup_s, wait, t0 - self._last_reply_at,
                                          first=any(o.k < 0 for o in outcomes), resyncs=len(begins))
            self._last_reply_at = time.perf_counter()
            self.stats.record_plan(reply.plan)
        else:
            self.stats.draft_failures += 1
        drafts, qs, hits = [], [], []
        by_rid = {o.rid: o for o in outcomes}
        for req in reqs:
            o = by_rid.get(req.rid)
            s = specs.get(req.rid)
            # a round that asked for a pre-drafted speculation is a lookup whatever happens: a dead,
            # late or malformed answer is a miss; a hit answered from a tree stopped early is
            # "partial" (counted apart, statistics.partial_answers), not a hit
            asked = o is not None and o.k >= 0 and self._predrafted
            ok = s is not None and all(0 <= t < self.vocab_size for t in s.tokens)
            q = None
            if ok and s.q_counts:
                q = self._decode_q(s, k)
                ok = q is not None
            if ok:
                drafts.append(list(s.tokens))
                qs.append(q)
                hits.append((bool(s.hit) and not s.partial) if asked else None)
            else:  # refused, malformed or no answer: serve exactly with the fast backup
                self.synced.pop(req.rid, None)
                ctx = list(req.origin_input_ids) + list(req.output_ids)
                drafts.append(ngram_propose(ctx, k))
                qs.append(None)
                hits.append(False if asked and req.rid not in self.refused and req.rid not in self.deferred else None)
        self._predrafted = predraft
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

    def _drafts(self, batch, mode: str, k: int):
        """This round's [t, x_1..x_K] per request (rank 0's, at rank 0's K, on every TP rank), with
        q', hit flags, the draft wait and the draft's tree time; K = 0 in plain rounds."""
        bs = len(batch.reqs)
        pending = [int(r.output_ids[-1]) if r.output_ids else int(r.origin_input_ids[-1]) for r in batch.reqs]
        tree, wait = TreeTimes(), 0.0
        qs, hits = [None] * bs, [None] * bs
        if self.tp_rank == 0 and mode == "plain":
            self._pause(batch.reqs)
            drafts_l = [[] for _ in range(bs)]
        elif self.tp_rank == 0:
            drafts_l, qs, hits, wait, tree = self._exchange(batch, k, predraft=mode == "ssd")
        else:
            drafts_l = [[0] * k for _ in range(bs)]
        drafts = torch.tensor([[t] + d for t, d in zip(pending, drafts_l)], dtype=torch.int64)
        if self.tp_group is not None and self.tp_group.world_size > 1:
            # Every rank verifies rank 0's drafts at rank 0's K: [K, t, x_1..x_K, padding] per row.
            full = torch.zeros(bs, self.k + 2, dtype=torch.int64)
            full[:, 0] = k
            full[:, 1:k + 2] = drafts
            full = self._broadcast(full.to(self.device))
            k = int(full[0, 0]) if bs else k
            drafts = full[:, 1:k + 2].contiguous()
        return drafts.to(self.device), k, qs, hits, wait, tree

    def _decode(self, batch: ScheduleBatch, on_publish) -> GenerationBatchResult:
        t_round = time.perf_counter()
        bs = len(batch.reqs)
        self._served += 1
        mode, k = self.planner.plan(bs, [(r.rid, (r.sampling_params.max_new_tokens or 1 << 30) - len(r.output_ids))
                                         for r in batch.reqs] if self.tp_rank == 0 else ())
        kind = mode
        if (mode != "plain" and bs and (self.tp_group is None or self.tp_group.world_size == 1)
                and all(self.deferred.get(r.rid, (0,))[0] > self._served for r in batch.reqs)):
            # every request waits for the draft (its prefill is still running, its pool is full):
            # a verify of K+1 tokens of backup drafts bought ~1 token for 2-3 decode steps (a 2k
            # prompt: 9 such rounds of 400-800 ms); a plain step instead, on the target's own cores
            # (the draft works on its own), the draft left alone (no Step: nothing to release)
            mode, k, kind = "plain", 0, "ssd"
        if self.verify_graphs is not None:
            k = self.verify_graphs.choose(k, bs).k
            self.stats.verify_graphs = self.verify_graphs.stats.as_dict()
        drafts, k, qs, hits, wait, tree = self._drafts(batch, mode, k)
        n = k + 1
        threads, measuring = self._use_cores(kind, bs, n)

        if k == 0 and not replays_graphs(self.model_runner):
            t0 = time.perf_counter()
            result = decode_forward(self.target_worker, batch, drafts)
        else:
            prepare_verify(batch, drafts, self.device)
            t0 = time.perf_counter()
            result = self.target_worker.forward_batch_generation(batch, is_verify=True)
        if torch.cuda.is_available() and str(self.device).startswith("cuda"):
            torch.cuda.synchronize()  # the verify time is the kernels', not their launch
        took = time.perf_counter() - t0
        self.timing.verified(mode, took)
        logits_output = result.logits_output
        logits = logits_output.next_token_logits

        reasons = [plain_path_reason(r) or self.deferred.get(r.rid, (0, None))[1] for r in batch.reqs]
        gmask, grammar_rows = speculated_grammar_mask(batch.reqs, drafts, reasons,
                                                      int(batch.sampling_info.vocab_size))
        # Without drafts an unseeded sampled request is SGLang's sampler's to serve, like a plain-path one.
        laws = [sampling_of(r) for r in batch.reqs]  # once per request per round (None: greedy)
        plain_rows = [r is not None or (k == 0 and law is not None and law.seed is None)
                      for r, law in zip(reasons, laws)]
        plain = torch.tensor(plain_rows, dtype=torch.bool, device=self.device)
        plain_tokens = torch.zeros(bs, dtype=torch.int64, device=self.device)
        if bool(plain.any()):
            plain_tokens = sample_first_position(self.model_runner, batch, logits)
        if gmask is not None:  # after the plain rows' sampler, which masks by itself
            apply_chain_mask(logits, *gmask)
        res = accept_chain(drafts, logits, plain, plain_tokens)
        sampled = [i for i, law in enumerate(laws) if not plain_rows[i] and law is not None]
        if sampled:
            res = accept_sampled_rows(batch.reqs, batch.seq_lens.tolist(), drafts, logits, qs, sampled, res)
        if self.tp_group is not None and self.tp_group.world_size > 1:
            packed = self._broadcast(torch.cat([res.tokens, res.accept_len.view(-1, 1)], dim=1).to(self.device))
            res.tokens, res.accept_len = packed[:, :n].contiguous(), packed[:, n].contiguous()
            res.k = (res.accept_len - 1).tolist()
            res.t_star = [int(res.tokens[i, res.k[i]]) for i in range(bs)]

        accept_lens = res.accept_len.to(self.device)
        new_seq_lens = batch.seq_lens + accept_lens
        self._joining = 0  # the requests that go on past this round (by their length limit) are
        self._decoding = sum(len(r.output_ids) + a < (r.sampling_params.max_new_tokens or 1 << 30)
                             for r, a in zip(batch.reqs, res.accept_len.tolist()))  # the batch new ones join
        for req, kk, ts in zip(batch.reqs, res.k, res.t_star):
            if req.rid in self.synced or self.tp_rank != 0:
                self.synced[req.rid] = (kk, ts)
        unspeculated = [p or k == 0 for p in plain_rows]
        self.stats.record_round(res.k, hits, wait, unspeculated, depth=k, mode=mode)
        if self.tp_rank == 0:
            self.timing.observe(mode, k, bs, res.k, unspeculated, hits, took, time.perf_counter() - t_round, wait,
                                tree, threads, typical=not measuring, rids=[r.rid for r in batch.reqs])
        if self.metrics is not None:
            self.metrics.publish(self.stats)
        self.stats.round_s += time.perf_counter() - t_round
        self.stats.record_reasons(reasons, grammar_rows, res.k)
        logits_output.customized_info = {
            "ssd_accepted": list(res.k),
            "ssd_hit": [(-1 if h is None else int(h)) for h in hits],
        }
        if batch.return_logprob:
            spec_logprobs(batch, logits_output, res, self.device)
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
