"""Typed messages between the SSD worker (target side) and the draft process.

msgpack via msgspec: every message is decoded against its declared type and anything else is
refused with a WireError naming what was wrong. Nothing on this wire is ever unpickled.
Flow per round: worker -> draft `Step` (the outcome of the last verification per request),
draft -> worker `StepReply` (the next speculation per request, and whether the cache hit).
"""

from __future__ import annotations

from typing import Optional, Union

import msgspec


PROTOCOL_VERSION = 6  # 2: compact q' (Spec.q_ids, q_counts); 3: Step.predraft (sync rounds); 4: Spec.partial;
# 5: Step.warm carries Warm (first speculations pre-drafted during the target's prefill); 6: Refusal.retry
# Larger messages are dropped by ZeroMQ before they are read (ZMQ_MAXMSGSIZE): a Step carries
# prompts and outcomes, so 256 MiB is far beyond any real one.
MAX_TO_DRAFT_BYTES = 256 << 20


MAX_Q_TOKENS = 512  # entries per row of a compact q' (qlaw.py)


def max_reply_bytes(k: int, vocab_size: int, max_requests: int) -> int:
    """Room for a StepReply carrying a compact q' (id + probability per entry) for every request,
    twice over."""
    return 2 * k * min(vocab_size, MAX_Q_TOKENS) * 8 * max(1, max_requests) + (16 << 20)


class WireError(ValueError):
    """A message that does not decode to one of the declared types."""


class Sampling(msgspec.Struct, frozen=True):
    """A sampled request's parameters, so the draft proposes from the same processed q."""

    temperature: float
    top_k: int = -1
    top_p: float = 1.0
    min_p: float = 0.0
    seed: Optional[int] = None
    offset: int = 0  # prompt tokens the draft does not see (request_view.DraftView): its position n is
    # the target's n + offset, where a seeded request's noise is drawn


class Warm(msgspec.Struct, frozen=True):
    """A request the target is about to prefill. `first`: the draft may pre-draft the speculations
    after its likeliest first tokens (first_drafts.py); False for a grammar-constrained request or
    outside SSD rounds."""

    rid: str
    prompt: list[int]
    sampling: Optional[Sampling] = None
    first: bool = False


class Begin(msgspec.Struct, frozen=True):
    """A request the target just prefilled: its prompt and the first token the target emitted.

    sampling is None for greedy requests (the draft then proposes argmax and ships no q').
    """

    rid: str
    prompt: list[int]
    pending: int
    sampling: Optional[Sampling] = None
    # The request's grammar constraint (grammar-aware drafting): kind "json" / "regex" / "ebnf" /
    # "structural_tag" ("" = none), its spec string, and where the generated tokens (the grammar's
    # input, followed by `pending`) start in `prompt`.
    grammar_kind: str = ""
    grammar: str = ""
    grammar_start: int = 0


class Outcome(msgspec.Struct, frozen=True):
    """Result of verifying a request's last speculation: k drafts accepted, then token t_star.

    k == -1 asks for the first speculation after Begin. committed_len is the target's committed
    KV length after the round, which the draft checks against its own state.
    """

    rid: str
    k: int
    t_star: int
    committed_len: int


class Step(msgspec.Struct, tag="step", frozen=True):
    """One round (or, with reply False, news the draft acts on without answering). verify_s: the target's measured verify time per round (seconds, 0 = not known yet), which
    the adaptive backup weighs against the neural backup's own latency. depth: K for this round's
    answers and the tree pre-drafted after it, at most the session's K (0 = unchanged; a session
    starts at its K); the worker's automatic K (auto_k.py) changes it."""

    round: int
    begins: list[Begin] = []
    outcomes: list[Outcome] = []
    releases: list[str] = []
    reply: bool = True
    verify_s: float = 0.0
    depth: int = 0
    # Requests the target is about to prefill: the draft computes their prompts' KV into its
    # prefix cache meanwhile, so the Begin that follows finds it there, and pre-drafts their first
    # speculations (best effort; bad ones are skipped).
    warm: list[Warm] = []
    # False: answer, then build no tree (a sync round: the next round's speculations are drafted
    # when it comes, from the true context).
    predraft: bool = True


class Spec(msgspec.Struct, frozen=True):
    """The next speculation. For sampled requests the compact law q' the K tokens were drawn from
    (qlaw.py): row i holds q_counts[i] entries, token ids in q_ids (little-endian int32) and their
    probabilities in q (float32), rows one after another; all empty for greedy requests.
    partial > 0: a hit answered before its tree was done; only tokens[:partial] were drafted by
    the model, the rest by the n-gram backup (partial_tree.py)."""

    rid: str
    hit: bool
    tokens: list[int]
    q: bytes = b""
    q_ids: bytes = b""
    q_counts: list[int] = []
    partial: int = 0


class Refusal(msgspec.Struct, frozen=True):
    """The draft does not speculate for this request. retry: not now (its KV pool cannot hold the
    request, or its prefill is still running): the worker serves it by plain rounds and begins it
    again later; else never (the worker serves it without the draft from then on)."""

    rid: str
    reason: str
    retry: bool = False


REFUSAL_RETRY_ROUNDS = 8  # rounds the worker serves a retryable refusal plainly before it begins it again


class DraftTimes(msgspec.Struct, frozen=True):
    """Seconds the draft spent on the previous round's speculation (a tree `depth` deep) and on
    this lookup."""

    tree_s: float = 0.0
    lookup_s: float = 0.0
    backup_s: float = 0.0
    depth: int = 0


class Plan(msgspec.Struct, frozen=True):
    """The live fan-out schedule and the online estimates it came from."""

    fanout: list[int] = []
    accept_rate: float = 0.0
    power: float = 0.0
    predicted_hit: float = 0.0  # the time-sized budget's prediction for this schedule (0: fixed B)
    tree_pred_s: float = 0.0  # and the tree time it predicted
    jit_s: float = 0.0  # drafting the live requests just in time (a sync round's wait); 0: unknown


class Health(msgspec.Struct, frozen=True):
    """The draft's side of the books: KV pool usage, messages it rejected, the backup it used."""

    pool_used: int = 0  # slots held for live requests and their speculation
    pool_size: int = 0
    pool_cached: int = 0  # slots only the draft's prefix cache holds (evictable)
    prefill_computed: int = 0  # prompt tokens the draft computed since it started
    prefill_reused: int = 0  # prompt tokens it took from its prefix cache instead
    rejected: int = 0  # malformed, stale or out-of-order messages refused so far
    backup: str = ""  # "neural" / "fast": the backup that answered this round's misses
    misses: int = 0
    backup_threshold: int = 0  # the adaptive policy's live b*
    last_round: int = -1  # the latest round the draft accepted
    first_predrafted: int = 0  # Begins that found their first speculation pre-drafted (since start)
    first_missed: int = 0  # pre-drafted Begins whose first token was not among those drafted after
    out_of_order: bool = False  # this Step was refused whole: its round was not after last_round


class StepReply(msgspec.Struct, tag="reply", frozen=True):
    round: int
    specs: list[Spec] = []
    refusals: list[Refusal] = []
    times: DraftTimes = DraftTimes()
    plan: Plan = Plan()
    health: Health = Health()


class Hello(msgspec.Struct, tag="hello", frozen=True):
    """Worker -> standalone draft server: open a session with these speculation settings.

    A spawned draft process gets them on its command line instead. A new Hello ends the previous
    session (a restarted or reconnected worker) and the server answers with Ready.
    """

    protocol: int
    session: str
    k: int
    fanout: list[int]
    backup: str = "adaptive"
    backup_batch_threshold: int = 8
    saguaro_c: float = 1.0
    fanout_budget: Optional[int] = None
    # True: fanout_budget is the most branches per request; the draft sizes B each round by time
    # (tree_budget.py). False: fanout_budget is B itself (the user fixed it).
    auto_budget: bool = False


class Ready(msgspec.Struct, tag="ready", frozen=True):
    """The draft's handshake: protocol version and the identity of its vocabulary."""

    protocol: int
    pid: int
    vocab_size: int
    k: int
    fanout: list[int]
    device: str
    tokenizer_digest: Optional[str] = None
    session: str = ""  # echoes Hello.session (standalone server)


class Fatal(msgspec.Struct, tag="fatal", frozen=True):
    error: str


class Shutdown(msgspec.Struct, tag="shutdown", frozen=True):
    pass


ToDraft = Union[Step, Hello, Shutdown]
FromDraft = Union[StepReply, Ready, Fatal]

_encoder = msgspec.msgpack.Encoder()
_to_draft = msgspec.msgpack.Decoder(ToDraft)
_from_draft = msgspec.msgpack.Decoder(FromDraft)


def encode(msg) -> bytes:
    return _encoder.encode(msg)


def decode_to_draft(data: bytes):
    try:
        return _to_draft.decode(data)
    except Exception as e:  # any failure to decode untrusted bytes is a malformed message
        raise WireError(f"bad message to draft ({len(data)} bytes): {e}") from None


def decode_from_draft(data: bytes):
    try:
        return _from_draft.decode(data)
    except Exception as e:  # any failure to decode untrusted bytes is a malformed message
        raise WireError(f"bad message from draft ({len(data)} bytes): {e}") from None
