"""The draft runs in its own OS process over ZeroMQ, dies with the server, and its death loses nothing."""

from __future__ import annotations

import os
import signal
import time

import psutil
import pytest

from conftest import PIN_SSD, K, SERVER_ARGS, cache_answer_rate, hf_greedy
from sglang_ssd.testing.server import CPUServer


@pytest.fixture(scope="module")
def own_server(models, log_dir):
    args = SERVER_ARGS + PIN_SSD + ["--speculative-algorithm", "SSD", "--speculative-draft-model-path",
                          str(models["draft_same"]), "--speculative-num-steps", str(K),
                          "--ssd-draft-timeout-ms", "3000", "--max-running-requests", "16"]
    srv = CPUServer(models["target"], args, log_path=str(log_dir / "process_test.log"))
    yield srv
    srv.stop()


def _descendants(pid):
    return {p.pid: p for p in psutil.Process(pid).children(recursive=True)}


def test_draft_is_a_separate_process_over_zmq(own_server):
    pid = own_server.ssd_stats()["draft_pid"]
    kids = _descendants(own_server.proc.pid)
    assert pid != own_server.proc.pid and pid != os.getpid()
    assert pid in kids
    cmd = " ".join(kids[pid].cmdline())
    assert "sglang_ssd.draft_process" in cmd and '"endpoint": "ipc://' in cmd
    # Once the draft connected, its socket file and private directory are gone from disk.
    endpoint = cmd.split('"endpoint": "ipc://', 1)[1].split('"', 1)[0]
    assert not os.path.exists(endpoint) and not os.path.exists(os.path.dirname(endpoint))


def test_draft_socket_is_born_in_a_private_directory(monkeypatch, tmp_path):
    """At spawn the ipc endpoint lives in a fresh 0700 directory; a draft that dies while loading
    is reported, and the directory is removed."""
    from sglang_ssd import draft_client
    from sglang_ssd.draft_client import DraftClient, DraftStartError

    seen = {}

    class Dead:
        returncode = 3
        pid = 12345

        def poll(self):
            return 3

    def fake_popen(cmd, *a, **kw):
        import json

        conf = json.loads(cmd[-1])
        d = conf["socket_dir"]
        seen.update(dir=d, mode=os.stat(d).st_mode & 0o777, sock=os.path.exists(os.path.join(d, "draft.sock")))
        return Dead()

    monkeypatch.setattr(draft_client.subprocess, "Popen", fake_popen)
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    import tempfile
    monkeypatch.setattr(tempfile, "tempdir", None)
    with pytest.raises(DraftStartError, match="exited with code 3"):
        DraftClient(model_path="x", k=2, fanout=[1, 1, 1], backup="fast", backup_batch_threshold=8,
                    device="cpu", dtype="float32", kv_tokens=1024, threads=1, endpoint=None,
                    timeout_s=1, start_timeout_s=5)
    assert seen["mode"] == 0o700 and seen["sock"] and seen["dir"].startswith(str(tmp_path))
    assert not os.path.exists(seen["dir"])


PROMPTS = [[5, 6, 7, 8, 9], [20, 21, 22], [100, 200, 300, 17], [7, 7, 7], [40, 41], [9, 8, 7, 6],
           [300, 301, 302], [11, 12, 13, 14, 15]]


def _concurrent(server, n_tokens, during=None):
    """8 concurrent greedy requests; `during` runs while they are in flight."""
    from concurrent.futures import ThreadPoolExecutor

    sp = {"temperature": 0, "max_new_tokens": n_tokens, "ignore_eos": True}
    with ThreadPoolExecutor(8) as ex:
        futs = [ex.submit(server.generate, p, sp) for p in PROMPTS]
        if during is not None:
            during()
        return [f.result()["output_ids"] for f in futs]


def _hits_again(server, hf_target, deadline_s=120):
    """After a restart the draft's cache hits again (and outputs stay exact)."""
    deadline = time.monotonic() + deadline_s
    while time.monotonic() < deadline:
        r = server.generate(PROMPTS[0], {"temperature": 0, "max_new_tokens": 24, "ignore_eos": True})
        assert r["output_ids"] == hf_greedy(hf_target, PROMPTS[0], 24)
        if any(h == 1 for h in r["meta_info"]["ssd_hit"]):
            return True
        time.sleep(1.0)
    return False


@pytest.mark.parametrize("how", ["SIGKILL", "SIGSTOP"])
def test_failed_draft_loses_no_request_and_comes_back(own_server, hf_target, how):
    want = [hf_greedy(hf_target, p, 96) for p in PROMPTS]
    before = own_server.ssd_stats()
    pid = before["draft_pid"]

    def fail():  # once the draft has served a few of these requests' rounds: they are in flight
        deadline = time.monotonic() + 60
        while own_server.ssd_stats()["spec_rounds"] < before["spec_rounds"] + 16 and time.monotonic() < deadline:
            time.sleep(0.01)
        os.kill(pid, getattr(signal, how))

    t0 = time.monotonic()
    assert _concurrent(own_server, 96, during=fail) == want
    st = own_server.ssd_stats()
    assert st["draft_failures"] > before["draft_failures"]
    # the round whose draft died or timed out asked for its speculations: a miss each, not left out
    # (the rounds after it bring the requests back in sync: no lookups); partial answers are apart
    misses = (st["lookups"] - before["lookups"]) - (st["hits"] - before["hits"])
    assert misses - (st["partial_answers"] - before["partial_answers"]) >= 1
    if how == "SIGSTOP":  # the hung draft was killed after the round timeout, not left stopped
        os.kill(pid, signal.SIGCONT) if psutil.pid_exists(pid) else None
    assert _hits_again(own_server, hf_target)
    st = own_server.ssd_stats()
    assert st["draft_restarts"] > before["draft_restarts"] and st["draft_pid"] != pid
    assert time.monotonic() - t0 < 200


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL])
def test_no_process_or_socket_left_after_server_stops(models, log_dir, tmp_path, sig):
    """SIGTERM (the server's own shutdown) or SIGKILL of the server's main process (the parent of
    its scheduler, which is the draft's parent): no process and no SSD socket file survive."""
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    args = SERVER_ARGS + ["--speculative-algorithm", "SSD", "--speculative-draft-model-path",
                          str(models["draft_random"])]
    srv = CPUServer(models["target"], args, log_path=str(log_dir / f"orphan_test_{sig.name}.log"),
                    env=dict(os.environ, TMPDIR=str(tmp)))
    try:
        srv.generate([5, 6, 7], {"temperature": 0, "max_new_tokens": 8, "ignore_eos": True})
        draft = srv.ssd_stats()["draft_pid"]
        tree = set(_descendants(srv.proc.pid)) | {srv.proc.pid}
        assert draft in tree
        srv.proc.send_signal(sig)  # a signal to the main process only, not a group kill
        srv.proc.wait(timeout=60)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and any(psutil.pid_exists(p) and
                                                  psutil.Process(p).status() != psutil.STATUS_ZOMBIE
                                                  for p in tree):
            time.sleep(0.5)
        alive = [p for p in tree if psutil.pid_exists(p) and psutil.Process(p).status() != psutil.STATUS_ZOMBIE]
        assert alive == []
        left = [str(p) for p in tmp.rglob("*") if "sglang-ssd" in str(p)]  # SSD's own files
        assert left == []
    finally:
        srv.stop()


@pytest.mark.slow
def test_tokenizer_mismatch_is_refused_at_startup(models, tmp_path, log_dir):
    from sglang_ssd.testing.tiny_models import make_model, train_tokenizer

    tok = tmp_path / "other_tok"
    train_tokenizer(tok, vocab_size=400)
    other = make_model(tmp_path / "other_draft", tok, seed=5, hidden=32, layers=1, heads=2, kv_heads=1)
    log = log_dir / "mismatch.log"
    args = SERVER_ARGS + ["--speculative-algorithm", "SSD", "--speculative-draft-model-path", str(other)]
    with pytest.raises(RuntimeError, match="exited"):
        CPUServer(models["target"], args, log_path=str(log), startup_timeout=240)
    text = log.read_text()
    assert "differs from the target's" in text and str(other) in text and str(models["target"]) in text


def test_request_beyond_the_drafts_context_is_served_exactly(models, tmp_path, log_dir, hf_target):
    """A draft with a 40-token context: a longer request is refused by the draft (counted with its
    reason) and served exactly without it."""
    import json
    import shutil

    short = tmp_path / "short_context_draft"
    shutil.copytree(models["target"], short)
    cfg = json.loads((short / "config.json").read_text())
    cfg["max_position_embeddings"] = 40
    (short / "config.json").write_text(json.dumps(cfg))
    args = SERVER_ARGS + PIN_SSD + ["--speculative-algorithm", "SSD", "--speculative-draft-model-path", str(short)]
    with CPUServer(models["target"], args, log_path=str(log_dir / "short_draft.log")) as srv:
        prompt = [5, 6, 7, 8, 9]
        out = srv.generate(prompt, {"temperature": 0, "max_new_tokens": 60, "ignore_eos": True})
        assert out["output_ids"] == hf_greedy(hf_target, prompt, 60)
        st = srv.ssd_stats()
        assert st["refusals"] >= 1
        assert any("maximum length" in r or "context" in r for r in st["refusal_reasons"])
        assert max(out["meta_info"]["ssd_accepted"]) > 0  # speculated until the draft's limit


def test_draft_on_sglangs_own_model_runner(models, log_dir, hf_target):
    """--ssd-draft-engine sglang: the draft process runs SGLang's ModelRunner; outputs stay exact."""
    args = SERVER_ARGS + ["--speculative-algorithm", "SSD", "--speculative-draft-model-path",
                          str(models["draft_same"]), "--ssd-draft-engine", "sglang", "--ssd-draft-kv-tokens", "8192",
                          # A fixed budget and mode: this checks the engine, not the planners (which,
                          # on a loaded machine, may rightly trade hits for a cheaper tree).
                          "--ssd-fanout-budget", "15", "--ssd-mode", "ssd"]
    with CPUServer(models["target"], args, log_path=str(log_dir / "sglang_engine.log")) as srv:
        want = [hf_greedy(hf_target, p, 24) for p in PROMPTS[:4]]
        from concurrent.futures import ThreadPoolExecutor

        sp = {"temperature": 0, "max_new_tokens": 24, "ignore_eos": True}
        with ThreadPoolExecutor(4) as ex:
            outs = list(ex.map(lambda p: srv.generate(p, sp), PROMPTS[:4]))
        assert [o["output_ids"] for o in outs] == want
        st = srv.ssd_stats()
        assert cache_answer_rate(st) > 0.9 and st["accept_length"] > K - 0.5
        cmd = " ".join(psutil.Process(st["draft_pid"]).cmdline())
        assert '"engine": "sglang"' in cmd


@pytest.mark.slow
def test_data_parallel_replicas_each_have_their_own_draft(models, log_dir, hf_target):
    """--dp 2: two schedulers, each spawning (and speculating with) its own draft process."""
    from concurrent.futures import ThreadPoolExecutor

    args = SERVER_ARGS + PIN_SSD + ["--speculative-algorithm", "SSD", "--speculative-draft-model-path",
                          str(models["draft_same"]), "--dp", "2", "--max-total-tokens", "16384"]
    env = dict(os.environ, SGLANG_CPU_OMP_THREADS_BIND="0|1")  # SGLang CPU DP: one core per rank
    with CPUServer(models["target"], args, log_path=str(log_dir / "dp2.log"), env=env) as srv:
        sp = {"temperature": 0, "max_new_tokens": 16, "ignore_eos": True}
        with ThreadPoolExecutor(4) as ex:
            outs = list(ex.map(lambda p: srv.generate(p, sp)["output_ids"], PROMPTS[:4]))
        assert outs == [hf_greedy(hf_target, p, 16) for p in PROMPTS[:4]]
        states = [s.get("ssd") or {} for s in srv.server_info()["internal_states"]]
        pids = {s.get("draft_pid") for s in states}
        assert len(states) == 2 and None not in pids and len(pids) == 2
        assert all(s["spec_rounds"] > 0 for s in states)  # both replicas served requests with SSD
        drafts = [p for p in psutil.Process(srv.proc.pid).children(recursive=True)
                  if "sglang_ssd.draft_process" in " ".join(p.cmdline())]
        assert {p.pid for p in drafts} == pids
