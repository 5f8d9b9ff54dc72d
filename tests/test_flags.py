"""SSD's command-line flags: listed by --help, validated before any model loads, clear errors."""

from __future__ import annotations

import subprocess
import sys
import time

import pytest

from sglang_ssd.cpu_serve import cpu_env


@pytest.fixture(scope="module")
def prepare(models):
    from sglang.srt.plugins import load_plugins
    from sglang.srt.server_args import prepare_server_args

    load_plugins()
    target = str(models["target"])

    def run(*extra, ssd=True, draft=target):
        argv = ["--model-path", target, "--device", "cpu"]
        if ssd:
            argv += ["--speculative-algorithm", "SSD"]
            if draft is not None:
                argv += ["--speculative-draft-model-path", draft]
        return prepare_server_args(argv + list(extra))

    return run


BAD = [
    # (extra argv, text the error must contain: the flag and the value)
    ([], "--speculative-draft-model-path"),  # missing draft path (draft=None below)
    (["--ssd-fanout-budget", "0"], "--ssd-fanout-budget='0'"),
    (["--ssd-fanout-budget", "many"], "--ssd-fanout-budget='many'"),
    (["--ssd-fanout", "1,2"], "--ssd-fanout='1,2'"),
    (["--ssd-fanout", "1,-1,1,1,1"], "--ssd-fanout='1,-1,1,1,1'"),
    (["--ssd-fanout", "0,0,0,0,0"], "--ssd-fanout='0,0,0,0,0'"),
    (["--ssd-fanout", "a,b"], "--ssd-fanout='a,b'"),
    (["--ssd-backup", "psychic"], "--ssd-backup='psychic'"),
    (["--ssd-draft-device", "tpu:0"], "--ssd-draft-device='tpu:0'"),
    (["--ssd-draft-endpoint", "http://x"], "--ssd-draft-endpoint='http://x'"),
    (["--ssd-draft-endpoint", "tcp://10.1.2.3:5555"], "--ssd-draft-endpoint='tcp://10.1.2.3:5555'"),
    (["--ssd-draft-timeout-ms", "-1"], "--ssd-draft-timeout-ms='-1'"),
    (["--ssd-draft-timeout-ms", "nan"], "--ssd-draft-timeout-ms='nan'"),
    (["--ssd-draft-start-timeout", "0"], "--ssd-draft-start-timeout='0'"),
    (["--ssd-draft-threads", "0"], "--ssd-draft-threads='0'"),
    (["--ssd-draft-kv-tokens", "10"], "--ssd-draft-kv-tokens='10'"),
    (["--ssd-draft-window", "-5"], "--ssd-draft-window='-5'"),
    (["--ssd-draft-window", "2k"], "--ssd-draft-window='2k'"),
    (["--ssd-draft-dtype", "int3"], "--ssd-draft-dtype='int3'"),
    (["--ssd-draft-dtype", "int8", "--ssd-draft-engine", "sglang"], "--ssd-draft-dtype='int8': needs --ssd-draft-engine hf"),
    (["--ssd-mode", "fastest"], "--ssd-mode='fastest'"),
    (["--ssd-draft-engine", "vllm"], "--ssd-draft-engine='vllm'"),
    (["--ssd-backup-batch-threshold", "0"], "--ssd-backup-batch-threshold='0'"),
    (["--speculative-num-steps", "0"], "--speculative-num-steps=0"),
    (["--speculative-num-steps", "99"], "--speculative-num-steps=99"),
    (["--ssd-curve-keys", "/nonexistent/keys"], "--ssd-curve-keys='/nonexistent/keys'"),  # no endpoint
    (["--ssd-draft-endpoint", "tcp://127.0.0.1:5557", "--ssd-curve-keys", "/nonexistent/keys"],
     "--ssd-curve-keys='/nonexistent/keys': missing server.key, client.key_secret"),
]


@pytest.mark.parametrize("extra,needle", BAD, ids=[n for _, n in BAD])
def test_bad_flag_is_refused_naming_flag_and_value(prepare, capsys, extra, needle):
    with pytest.raises(SystemExit) as e:
        if extra:
            prepare(*extra)
        else:
            prepare(draft=None)
    assert e.value.code != 0
    assert needle in capsys.readouterr().err


def test_nonexistent_draft_path(prepare, capsys):
    with pytest.raises(SystemExit) as e:
        prepare(draft="/nonexistent/draft-model")
    assert e.value.code != 0
    assert "--speculative-draft-model-path='/nonexistent/draft-model'" in capsys.readouterr().err


def test_good_flags_reach_the_record(prepare):
    sa = prepare("--ssd-fanout", "1,2,3,0,4", "--ssd-backup", "neural", "--ssd-draft-timeout-ms", "2500",
                 "--ssd-draft-endpoint", "tcp://127.0.0.1:7777", "--ssd-draft-window", "1024")
    cfg = sa._ssd_config
    assert cfg["draft_window"] == 1024
    assert cfg["fanout"] == [1, 2, 3, 0, 4] and cfg["backup"] == "neural"
    assert cfg["draft_timeout"] == 2.5 and cfg["draft_endpoint"] == "tcp://127.0.0.1:7777"
    # The record travels to SGLang's subprocesses by pickling; the SSD config goes with it.
    import pickle

    assert pickle.loads(pickle.dumps(sa))._ssd_config == cfg


def test_remote_endpoint_needs_opt_in(prepare):
    sa = prepare("--ssd-draft-endpoint", "tcp://10.1.2.3:5555", "--ssd-allow-remote-draft")
    assert sa._ssd_config["allow_remote_draft"] is True


def test_help_lists_ssd_flags():
    out = subprocess.run([sys.executable, "-m", "sglang.launch_server", "--help"], capture_output=True,
                         text=True, timeout=120, env=cpu_env())
    assert out.returncode == 0
    for flag in ["--ssd-fanout-budget", "--ssd-fanout", "--ssd-backup", "--ssd-draft-device",
                 "--ssd-draft-endpoint", "--ssd-draft-timeout-ms"]:
        assert flag in out.stdout


@pytest.mark.parametrize("extra,needle", [
    ([], "--speculative-draft-model-path is required"),
    (["--speculative-draft-model-path", "TARGET", "--ssd-fanout", "9"], "--ssd-fanout='9'"),
])
def test_real_cli_exits_within_seconds(models, extra, needle):
    extra = [str(models["target"]) if a == "TARGET" else a for a in extra]
    t0 = time.monotonic()
    out = subprocess.run([sys.executable, "-m", "sglang_ssd.cpu_serve", "--model-path", str(models["target"]),
                          "--speculative-algorithm", "SSD", *extra], capture_output=True, text=True,
                         timeout=120, env=cpu_env())
    assert out.returncode != 0
    assert needle in out.stderr
    assert time.monotonic() - t0 < 60
