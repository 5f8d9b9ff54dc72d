"""A draft server started as its own command ("another node" on loopback TCP, CurveZMQ), metrics,
and a live wire fuzz: a proxy between worker and draft server injecting >= 10,000 bad messages."""

from __future__ import annotations

import os
import random
import shutil
import signal
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import psutil
import pytest
import requests
import zmq

from conftest import PIN_SSD, K, SERVER_ARGS, cache_answer_rate, hf_greedy
from sglang_ssd import wire
from sglang_ssd.metrics import COUNTERS, GAUGES
from sglang_ssd.testing.server import CPUServer, free_port

PROMPTS = [[5, 6, 7, 8, 9], [40, 41, 42], [100, 7, 200, 7, 100, 7], [3, 1, 4, 1, 5, 9, 2, 6]]
N = 32


def start_draft_server(model, endpoint: str, log: Path, *extra: str) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-m", "sglang_ssd.draft_server", "--model-path", str(model),
                             "--endpoint", endpoint, *extra], stdout=open(log, "w"), stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"draft server exited {proc.returncode}: {log.read_text()[-2000:]}")
        if "draft server ready on" in log.read_text():
            return proc
        time.sleep(0.3)
    proc.kill()
    raise TimeoutError("draft server did not start")


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def greedy(srv, prompt, n=N):
    out = srv.generate(prompt, {"max_new_tokens": n, "temperature": 0, "ignore_eos": True})
    return out["output_ids"]


@pytest.fixture(scope="module")
def keys(tmp_path_factory):
    d = tmp_path_factory.mktemp("curve") / "keys"
    subprocess.run([sys.executable, "-m", "sglang_ssd.draft_server", "--make-curve-keys", str(d)], check=True)
    assert oct(os.stat(d).st_mode & 0o777) == "0o700"
    assert os.stat(d / "client.key_secret").st_mode & 0o077 == 0
    return d


@pytest.fixture(scope="module")
def remote(models, log_dir, keys):
    """Draft server on loopback TCP with CurveZMQ; the target server connects to it."""
    port = free_port()
    endpoint = f"tcp://127.0.0.1:{port}"
    ds = start_draft_server(models["draft_same"], endpoint, log_dir / "draft_server.log",
                            "--curve-keys", str(keys))
    args = SERVER_ARGS + PIN_SSD + ["--speculative-algorithm", "SSD", "--speculative-draft-model-path",
                          str(models["draft_same"]), "--speculative-num-steps", str(K),
                          "--ssd-draft-endpoint", endpoint, "--ssd-curve-keys", str(keys),
                          "--ssd-draft-timeout-ms", "3000", "--enable-metrics"]
    srv = CPUServer(models["target"], args, log_path=str(log_dir / "remote_target.log"))
    box = {"ds": ds, "endpoint": endpoint}
    yield srv, box
    srv.stop()
    stop(box["ds"])


def test_target_uses_a_draft_server_started_apart(remote, hf_target):
    srv, box = remote
    for p in PROMPTS:
        assert greedy(srv, p) == hf_greedy(hf_target, p, N)
    st = srv.ssd_stats()
    assert st["draft_pid"] == box["ds"].pid
    assert box["ds"].pid not in {c.pid for c in psutil.Process(srv.proc.pid).children(recursive=True)}
    assert cache_answer_rate(st) > 0.9 and st["draft_failures"] == 0 and st["accept_length"] > 4
    cfg = st["config"]
    assert cfg["k"] == K and cfg["draft_endpoint"] == box["endpoint"] and cfg["curve"] is True
    assert cfg["backup"] == "adaptive" and cfg["saguaro_c"] == 1.0 and len(cfg["fanout"]) == K + 1


def test_metrics_endpoint_has_every_ssd_counter(remote):
    srv, _ = remote
    greedy(srv, PROMPTS[0])
    text = requests.get(srv.url + "/metrics", timeout=30).text
    values = {}
    for line in text.splitlines():
        if line.startswith("sglang:ssd_"):
            name, v = line.split("{", 1)[0], float(line.rsplit(" ", 1)[1])
            values[name] = values.get(name, 0.0) + v
    for name in COUNTERS:
        assert f"sglang:{name}_total" in values, name
        assert f"# HELP sglang:{name}_total " in text
    for name in GAUGES:
        assert f"sglang:{name}" in values, name
    v = values
    assert v["sglang:ssd_rounds_total"] >= v["sglang:ssd_spec_rounds_total"] > 0
    assert v["sglang:ssd_cache_hits_total"] <= v["sglang:ssd_cache_lookups_total"]
    assert v["sglang:ssd_emitted_tokens_total"] == v["sglang:ssd_accepted_tokens_total"] + v["sglang:ssd_spec_rounds_total"]
    assert 1.0 <= v["sglang:ssd_accept_length"] <= K + 1
    assert 0.9 < (v["sglang:ssd_cache_hits_total"] + v["sglang:ssd_partial_answers_total"]) / v["sglang:ssd_cache_lookups_total"] <= 1.0
    assert v["sglang:ssd_cache_hit_rate"] == pytest.approx(v["sglang:ssd_cache_hits_total"] / v["sglang:ssd_cache_lookups_total"])
    assert v["sglang:ssd_draft_wait_seconds_total"] > 0


def test_wrong_or_missing_curve_key_is_not_admitted(remote, keys, tmp_path, hf_target):
    from sglang_ssd.draft_client import DraftClient, DraftStartError

    srv, box = remote
    bad = tmp_path / "bad"
    subprocess.run([sys.executable, "-m", "sglang_ssd.draft_server", "--make-curve-keys", str(bad)], check=True)
    shutil.copy(keys / "server.key", bad / "server.key")  # knows the server, is not admitted
    with pytest.raises(DraftStartError, match="not ready within"):
        DraftClient(model_path="x", k=K, fanout=[1] * (K + 1), backup="fast", backup_batch_threshold=8,
                    device="cpu", dtype="float32", kv_tokens=1024, threads=1, endpoint=box["endpoint"],
                    curve_keys=str(bad), timeout_s=1, start_timeout_s=3)
    ctx = zmq.Context()
    plain = ctx.socket(zmq.PAIR)
    plain.setsockopt(zmq.LINGER, 0)
    plain.connect(box["endpoint"])
    plain.send(wire.encode(wire.Hello(protocol=wire.PROTOCOL_VERSION, session="intruder", k=K, fanout=[1] * (K + 1))))
    assert not plain.poll(2000)  # no CURVE, no answer
    plain.close()
    ctx.term()
    assert greedy(srv, PROMPTS[1]) == hf_greedy(hf_target, PROMPTS[1], N)


@pytest.mark.slow
def test_draft_server_death_then_return(remote, models, log_dir, hf_target, keys):
    srv, box = remote
    before = srv.ssd_stats()
    box["ds"].kill()
    box["ds"].wait()
    assert greedy(srv, PROMPTS[2]) == hf_greedy(hf_target, PROMPTS[2], N)  # served without it
    assert srv.ssd_stats()["draft_failures"] > before["draft_failures"]
    box["ds"] = start_draft_server(models["draft_same"], box["endpoint"], log_dir / "draft_server2.log",
                                   "--curve-keys", str(keys))
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        assert greedy(srv, PROMPTS[3]) == hf_greedy(hf_target, PROMPTS[3], N)
        st = srv.ssd_stats()
        if st["draft_pid"] == box["ds"].pid and st["hits"] > before["hits"] + 3:
            break
        time.sleep(1)
    else:
        pytest.fail("the worker never reconnected to the restarted draft server")
    assert st["draft_restarts"] > before["draft_restarts"]


def test_a_server_restarted_during_the_backoff_gets_no_stale_steps(models, log_dir, monkeypatch):
    """The draft server dies with a Step unanswered and is back on the same port before the
    worker's backoff ends: the worker's old socket must not reconnect by itself and hand the new
    server that stale Step (refused: "no session"); after the backoff the worker says Hello and
    the rounds run again."""
    from sglang_ssd import draft_client

    monkeypatch.setattr(draft_client, "BACKOFF_START_S", 15.0)
    endpoint = f"tcp://127.0.0.1:{free_port()}"
    first = start_draft_server(models["draft_same"], endpoint, log_dir / "backoff_draft1.log")
    client = draft_client.DraftClient(
        model_path=str(models["draft_same"]), k=K, fanout=[1] * (K + 1), backup="fast", backup_batch_threshold=8,
        device="cpu", dtype="float32", kv_tokens=1024, threads=1, endpoint=endpoint, timeout_s=1.0,
        start_timeout_s=60)
    second = None
    try:
        begin = wire.Begin(rid="a", prompt=[5, 6, 7, 8], pending=9)
        step = lambda r: client.step(wire.Step(round=r, begins=[begin],  # noqa: E731
                                               outcomes=[wire.Outcome(rid="a", k=-1, t_star=9, committed_len=4)]))
        assert step(1) is not None
        first.kill()
        first.wait()
        assert step(2) is None  # unanswered: the worker backs off for 15 s
        second = start_draft_server(models["draft_same"], endpoint, log_dir / "backoff_draft2.log")
        time.sleep(2.0)  # room for a stale socket to reconnect and deliver
        deadline, reply, r = time.monotonic() + 60, None, 3
        while reply is None and time.monotonic() < deadline:
            reply = step(r)
            r += 1
            time.sleep(0.2)
        assert reply is not None and client.generation == 2 and reply.refusals == []
        assert len(reply.specs[0].tokens) == K
        assert "step refused" not in (log_dir / "backoff_draft2.log").read_text()
    finally:
        client.close()
        for p in (first, second):
            if p is not None:
                stop(p)


# ---- live fuzz ------------------------------------------------------------------------------
class FuzzProxy(threading.Thread):
    """Forwards worker <-> draft and, before every forwarded message, injects a burst of
    malformed, truncated, bit-flipped, oversized-field and replayed (stale) messages at the
    receiving end. Counts what it injected per direction."""

    BURST = 300

    def __init__(self, front: str, back: str, seed: int = 0):
        super().__init__(daemon=True)
        self.ctx = zmq.Context()
        self.front = self.ctx.socket(zmq.PAIR)  # the worker connects here
        self.front.setsockopt(zmq.LINGER, 0)
        self.front.bind(front)
        self.back = self.ctx.socket(zmq.PAIR)  # to the draft server
        self.back.setsockopt(zmq.LINGER, 0)
        self.back.connect(back)
        self.rng = random.Random(seed)
        self.injected = {"to_draft": 0, "to_worker": 0}
        self.history = {"to_draft": [], "to_worker": []}
        self.quota = 0
        self.running = True

    def _garbage(self, real: bytes, past: list[bytes]) -> bytes:
        r = self.rng
        kind = r.randrange(6)
        if kind == 0:
            return bytes(r.randrange(256) for _ in range(r.randrange(0, 64)))
        if kind == 1:
            return real[: r.randrange(len(real))] if real else b"\x00"
        if kind == 2:
            b = bytearray(real)
            for _ in range(r.randrange(1, 4)):
                i = r.randrange(len(b))
                b[i] ^= 1 << r.randrange(8)
            return bytes(b)
        if kind == 3 and past:
            return r.choice(past)  # a replay: stale round
        if kind == 4:
            return wire.encode({"type": "step", "round": r.randrange(-5, 3), "outcomes": [
                {"rid": "x" * r.randrange(1, 5000), "k": r.randrange(-3, 99), "t_star": -1, "committed_len": 0}]})
        return wire.encode({"type": r.choice(["reply", "ready", "step", "nope"]), "round": "NaN"})

    def _burst(self, sock, direction: str, real: bytes) -> None:
        if self.injected[direction] >= self.quota:
            return
        past = self.history[direction]
        for _ in range(self.BURST):
            g = self._garbage(real, past)
            try:
                sock.send(g, zmq.NOBLOCK)
                self.injected[direction] += 1
            except zmq.Again:
                break

    def run(self) -> None:
        poller = zmq.Poller()
        poller.register(self.front, zmq.POLLIN)
        poller.register(self.back, zmq.POLLIN)
        while self.running:
            for sock, _ in poller.poll(100):
                msg = sock.recv()
                handshake = b"hello" in msg or b"ready" in msg
                if sock is self.front:
                    if handshake:  # the handshake passes clean: a forged Ready could only get
                        self.back.send(msg)  # the draft refused (digest), a Hello the session reset
                        continue
                    self._burst(self.back, "to_draft", msg)
                    self.back.send(msg)
                    self.history["to_draft"].append(msg)
                else:
                    if handshake:
                        self.front.send(msg)
                        continue
                    self._burst(self.front, "to_worker", msg)
                    self.front.send(msg)
                    self.history["to_worker"].append(msg)
                for h in self.history.values():
                    del h[:-50]

    def close(self) -> None:
        self.running = False
        self.join(5)
        self.front.close()
        self.back.close()
        self.ctx.term()


@pytest.mark.slow
def test_ten_thousand_bad_messages_on_both_ends_change_nothing(models, log_dir, hf_target, tmp_path):
    sock_dir = tmp_path / "fz"
    sock_dir.mkdir(mode=0o700)
    back, front = f"ipc://{sock_dir}/draft.sock", f"ipc://{sock_dir}/proxy.sock"
    ds = start_draft_server(models["draft_same"], back, log_dir / "fuzz_draft_server.log")
    proxy = FuzzProxy(front, back)
    proxy.quota = 5000
    proxy.start()
    srv = None
    try:
        args = SERVER_ARGS + PIN_SSD + ["--speculative-algorithm", "SSD", "--speculative-draft-model-path",
                              str(models["draft_same"]), "--speculative-num-steps", str(K),
                              "--ssd-draft-endpoint", front]
        srv = CPUServer(models["target"], args, log_path=str(log_dir / "fuzz_target.log"))
        refs = {i: hf_greedy(hf_target, p, N) for i, p in enumerate(PROMPTS)}
        batches = 0
        while min(proxy.injected.values()) < proxy.quota and batches < 12:
            with ThreadPoolExecutor(8) as pool:
                outs = list(pool.map(lambda i: greedy(srv, PROMPTS[i % 4]), range(8)))
            for i, out in enumerate(outs):
                assert out == refs[i % 4], f"request {i} of batch {batches} differs"
            batches += 1
        print("injected", proxy.injected, "in", batches, "batches of 8 concurrent requests")
        assert proxy.injected["to_draft"] >= 5000 and proxy.injected["to_worker"] >= 5000
        assert ds.poll() is None and srv.proc.poll() is None
        st = srv.ssd_stats()
        print({k: st[k] for k in ("worker_rejected_messages", "draft_rejected_messages", "spec_rounds",
                                  "hits", "refusals", "draft_failures", "round_resyncs")})
        assert st["worker_rejected_messages"] > 1000 and st["draft_rejected_messages"] > 1000
        # Speculation survives the noise: a last clean batch still hits the draft's cache.
        proxy.quota = 0
        hits = st["hits"]
        with ThreadPoolExecutor(8) as pool:
            outs = list(pool.map(lambda i: greedy(srv, PROMPTS[i % 4]), range(8)))
        assert outs == [refs[i % 4] for i in range(8)]
        assert srv.ssd_stats()["hits"] > hits
    finally:
        if srv is not None:
            srv.stop()
        proxy.close()
        stop(ds)


@pytest.mark.slow
def test_data_parallel_replicas_reach_their_own_draft_server_replica(models, log_dir, hf_target, tmp_path):
    """`draft_server --replicas 2` serves replica i on endpoint_for_replica(ENDPOINT, i); a `--dp 2`
    target connects each replica to its own, and both speculate."""
    sock_dir = tmp_path / "dp"
    sock_dir.mkdir(mode=0o700)
    endpoint = f"ipc://{sock_dir}/draft.sock"
    log = log_dir / "dp_draft_server.log"
    ds = subprocess.Popen([sys.executable, "-m", "sglang_ssd.draft_server", "--model-path", str(models["draft_same"]),
                           "--endpoint", endpoint, "--replicas", "2"], stdout=open(log, "w"), stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 120
        while log.read_text().count("draft server ready on") < 2:
            assert ds.poll() is None and time.monotonic() < deadline, log.read_text()[-2000:]
            time.sleep(0.3)
        args = SERVER_ARGS + PIN_SSD + ["--speculative-algorithm", "SSD", "--speculative-draft-model-path",
                              str(models["draft_same"]), "--dp", "2", "--max-total-tokens", "16384",
                              "--ssd-draft-endpoint", endpoint]
        env = dict(os.environ, SGLANG_CPU_OMP_THREADS_BIND="0|1")
        with CPUServer(models["target"], args, log_path=str(log_dir / "dp_remote.log"), env=env) as srv:
            with ThreadPoolExecutor(4) as pool:
                outs = list(pool.map(lambda p: greedy(srv, p), PROMPTS))
            assert outs == [hf_greedy(hf_target, p, N) for p in PROMPTS]
            states = [s.get("ssd") or {} for s in srv.server_info()["internal_states"]]
            assert sorted(s["config"]["draft_endpoint"] for s in states) == [endpoint, endpoint + ".1"]
            assert len({s["draft_pid"] for s in states}) == 2 and all(s["hits"] > 0 for s in states)
    finally:
        stop(ds)
        assert ds.wait(timeout=20) is not None
