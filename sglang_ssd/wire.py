"""Typed messages between the SSD worker (target side) and the draft process.

msgpack via msgspec: every message is decoded against its declared type and anything else is
refused with a WireError naming what was wrong. Nothing on this wire is ever unpickled.
Flow per round: worker -> draft `Step` (the outcome of the last verification per request),
draft -> worker `StepReply` (the next speculation per request, and whether the cache hit).
"""

from __future__ import annotations

from typing import Optional, Union

import msgspec


PROTOCOL_VERSION = 1


class WireError(ValueError):
    """A message that does not decode to one of the declared types."""


class Sampling(msgspec.Struct, frozen=True):
    """A sampled request's parameters, so the draft proposes from the same processed q."""

    temperature: float
    top_k: int = -1
    top_p: float = 1.0
    min_p: float = 0.0
    seed: Optional[int] = None


class Begin(msgspec.Struct, frozen=True):
    """A request the target just prefilled: its prompt and the first token the target emitted.

    sampling is None for greedy requests (the draft then proposes argmax and ships no q').
    """

    rid: str
    prompt: list[int]
    pending: int
    sampling: Optional[Sampling] = None


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
    round: int
    begins: list[Begin] = []
    outcomes: list[Outcome] = []
    releases: list[str] = []
    reply: bool = True


class Spec(msgspec.Struct, frozen=True):
    """The next speculation. q: for sampled requests the proposal q' the K tokens were drawn from,
    raw little-endian float32 bytes of shape [K, V]; empty for greedy requests."""

    rid: str
    hit: bool
    tokens: list[int]
    q: bytes = b""


class Refusal(msgspec.Struct, frozen=True):
    rid: str
    reason: str


class DraftTimes(msgspec.Struct, frozen=True):
    """Seconds the draft spent on the previous round's speculation and on this lookup."""

    tree_s: float = 0.0
    lookup_s: float = 0.0
    backup_s: float = 0.0


class Plan(msgspec.Struct, frozen=True):
    """The live fan-out schedule and the online estimates it came from."""

    fanout: list[int] = []
    accept_rate: float = 0.0
    power: float = 0.0


class StepReply(msgspec.Struct, tag="reply", frozen=True):
    round: int
    specs: list[Spec] = []
    refusals: list[Refusal] = []
    times: DraftTimes = DraftTimes()
    plan: Plan = Plan()


class Ready(msgspec.Struct, tag="ready", frozen=True):
    """The draft's handshake: protocol version and the identity of its vocabulary."""

    protocol: int
    pid: int
    vocab_size: int
    k: int
    fanout: list[int]
    device: str
    tokenizer_digest: Optional[str] = None


class Fatal(msgspec.Struct, tag="fatal", frozen=True):
    error: str


class Shutdown(msgspec.Struct, tag="shutdown", frozen=True):
    pass


ToDraft = Union[Step, Shutdown]
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
