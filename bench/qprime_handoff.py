"""What shipping q' costs a sampled round's hand-off: the full K x V law against the compact one.

    python bench/qprime_handoff.py [--vocab 151936] [--k 4] [--batches 1,4,16]

A StepReply with one speculation per request goes from a draft-side thread to here over a real
ZeroMQ ipc socket, is decoded and its q' densified for verification: with q' as K x V float32
(what the draft shipped before, 2.4 MB per request at Qwen's vocabulary) and as the compact law
(qlaw.py: top tokens holding 0.9999 of the mass, at most 512 per row; here from a temperature-0.7
softmax over random logits of a trained model's spread). Median of --reps, milliseconds.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import threading
import time

import torch
import zmq

from sglang_ssd import qlaw, wire


def one_reply(bs: int, k: int, vocab: int, mode: str) -> bytes:
    torch.manual_seed(0)
    q = torch.softmax(torch.randn(k, vocab) * 4.0 / 0.7, -1)  # peaked like a trained model at T=0.7
    if mode == "greedy":
        spec = wire.Spec(rid="", hit=True, tokens=list(range(k)))
    elif mode == "full":
        spec = wire.Spec(rid="", hit=True, tokens=list(range(k)), q=q.numpy().tobytes())
    else:
        p, ids, counts = qlaw.compact(q).pack()
        spec = wire.Spec(rid="", hit=True, tokens=list(range(k)), q=p, q_ids=ids, q_counts=counts)
    specs = [wire.Spec(rid=f"r{i}", hit=spec.hit, tokens=spec.tokens, q=spec.q, q_ids=spec.q_ids,
                       q_counts=spec.q_counts) for i in range(bs)]
    return wire.encode(wire.StepReply(round=1, specs=specs))


def measure(bs: int, k: int, vocab: int, mode: str, reps: int) -> tuple[float, int]:
    raw = one_reply(bs, k, vocab, mode)
    d = tempfile.mkdtemp(prefix="ssd-qprime-")
    ctx = zmq.Context.instance()
    a, b = ctx.socket(zmq.PAIR), ctx.socket(zmq.PAIR)
    a.bind(f"ipc://{d}/s")
    b.connect(f"ipc://{d}/s")

    def serve():
        for _ in range(reps):
            a.recv()
            a.send(raw)

    th = threading.Thread(target=serve, daemon=True)
    th.start()
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        b.send(b"go")
        rep = wire.decode_from_draft(b.recv())
        for s in rep.specs:
            if mode == "full":
                torch.frombuffer(bytearray(s.q), dtype=torch.float32).view(k, -1).clone()
            elif mode == "compact":
                qlaw.unpack(s.q, s.q_ids, s.q_counts, k, vocab)
        times.append(time.perf_counter() - t0)
    th.join(timeout=10)
    a.close(0)
    b.close(0)
    return statistics.median(times) * 1e3, len(raw)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--vocab", type=int, default=151936)
    ap.add_argument("--k", type=int, default=4)
    ap.add_argument("--batches", default="1,4,16")
    ap.add_argument("--reps", type=int, default=20)
    args = ap.parse_args()
    print(f"## q' hand-off, K={args.k}, V={args.vocab}, ipc, median of {args.reps}\n")
    print("| batch | greedy ms | full q' ms (bytes) | compact q' ms (bytes) |\n|---|---|---|---|")
    for bs in [int(x) for x in args.batches.split(",")]:
        g, _ = measure(bs, args.k, args.vocab, "greedy", args.reps)
        f, fb = measure(bs, args.k, args.vocab, "full", args.reps)
        c, cb = measure(bs, args.k, args.vocab, "compact", args.reps)
        print(f"| {bs} | {g:.2f} | {f:.2f} ({fb / 1e6:.1f} MB) | {c:.2f} ({cb / 1e3:.1f} KB) |", flush=True)


if __name__ == "__main__":
    main()
