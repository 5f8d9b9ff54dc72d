"""Where the draft runs and how it is reached: device choice, per-replica endpoints, session
checks, and the adaptive backup's b* (pure functions, no server)."""

from __future__ import annotations

import pytest

from sglang_ssd import wire
from sglang_ssd.backup_policy import BackupPolicy, expected_rate, threshold
from sglang_ssd.config import SSDConfigError, choose_draft_device, endpoint_for_replica
from sglang_ssd.draft_service import check_hello


@pytest.mark.parametrize("n_gpus,base,tp,dp,rank,step,want", [
    (2, 0, 1, 1, 0, 1, "cuda:1"),     # Llama-3.1-8B + 1B on two GPUs
    (5, 0, 4, 1, 0, 1, "cuda:4"),     # 70B TP4 + the draft on the 5th GPU
    (8, 0, 4, 1, 0, 1, "cuda:4"),
    (8, 2, 2, 1, 0, 1, "cuda:4"),     # target on GPUs 2,3
    (8, 0, 2, 2, 0, 1, "cuda:4"),     # DP 2 x TP 2: replica 0's draft on GPU 4 ...
    (8, 0, 2, 2, 1, 1, "cuda:5"),     # ... replica 1's on GPU 5
    (8, 0, 2, 1, 0, 2, "cuda:4"),     # --gpu-id-step 2: target on 0 and 2
])
def test_default_draft_gpu_is_the_first_after_the_targets(n_gpus, base, tp, dp, rank, step, want):
    assert choose_draft_device(None, "cuda", n_gpus, base, tp, dp, rank, step) == want


@pytest.mark.parametrize("n_gpus,tp", [(4, 4), (2, 2), (0, 1)])
def test_no_gpu_left_for_the_draft_is_a_clear_error(n_gpus, tp):
    with pytest.raises(SSDConfigError, match=rf"--ssd-draft-device: .*this machine has {n_gpus}"):
        choose_draft_device(None, "cuda", n_gpus, 0, tp)


def test_one_gpu_machine_shares_it_with_the_target(caplog):
    """One GPU, used by the target: the draft shares cuda:0 and says so; a target on another
    base GPU of a one-GPU count (impossible placement) stays an error."""
    import logging

    with caplog.at_level(logging.INFO, logger="sglang_ssd.config"):
        assert choose_draft_device(None, "cuda", 1, 0, 1) == "cuda:0"
    assert "shares cuda:0 with the target: this machine has 1 GPU" in caplog.text
    with pytest.raises(SSDConfigError, match="this machine has 1"):
        choose_draft_device(None, "cuda", 1, 0, 1, dp_size=2)


def test_explicit_and_cpu_devices():
    assert choose_draft_device(None, "cpu", 0, 0, 1) == "cpu"
    assert choose_draft_device("cuda:0", "cuda", 1, 0, 1) == "cuda:0"  # share the target's GPU
    assert choose_draft_device("cpu", "cuda", 4, 0, 4) == "cpu"
    with pytest.raises(SSDConfigError, match=r"--ssd-draft-device='cuda:3': this machine has 2"):
        choose_draft_device("cuda:3", "cuda", 2, 0, 1)


def test_replica_endpoints():
    assert endpoint_for_replica("tcp://10.0.0.5:5557", 0) == "tcp://10.0.0.5:5557"
    assert endpoint_for_replica("tcp://10.0.0.5:5557", 3) == "tcp://10.0.0.5:5560"
    assert endpoint_for_replica("tcp://[::1]:5557", 1) == "tcp://[::1]:5558"
    assert endpoint_for_replica("ipc:///run/ssd/draft.sock", 2) == "ipc:///run/ssd/draft.sock.2"
    with pytest.raises(ValueError, match="replica 1"):
        endpoint_for_replica("tcp://h:65535", 1)


def _hello(**kw):
    base = dict(protocol=wire.PROTOCOL_VERSION, session="s", k=4, fanout=[2, 2, 2, 2, 2])
    base.update(kw)
    return wire.Hello(**base)


@pytest.mark.parametrize("kw,needle", [
    (dict(protocol=99), "protocol 99"), (dict(k=0, fanout=[1]), "k=0"),
    (dict(fanout=[1, 1]), "fanout=[1, 1]"), (dict(backup="magic"), "backup='magic'"),
    (dict(saguaro_c=0.0), "saguaro_c=0.0"), (dict(backup_batch_threshold=0), "backup_batch_threshold=0"),
    (dict(fanout=[500, 1, 1, 1, 1]), "fanout=[500"), (dict(fanout_budget=0), "fanout_budget=0"),
])
def test_a_bad_session_is_refused_naming_the_value(kw, needle):
    assert needle in check_hello(_hello(**kw), vocab_size=477)


def test_a_good_session_passes():
    assert check_hello(_hello(), vocab_size=477) is None


# ---- adaptive backup -------------------------------------------------------------------------
def test_threshold_is_where_fast_catches_up_closed_form():
    """With p = 0.5, E_hit = E_neural = 4, E_fast = 1, verify 10 ms, neural backup 10 ms flat:
    neural(b) = b*4 / (10 + 10(1 - 0.5^b)), fast(b) = b*2.5 / 10. Neural wins at b = 1
    (4/15 > 2.5/10) and b = 2 (8/17.5 = 0.457 < 0.5: fast wins), so b* = 2."""
    b = threshold(0.5, 4.0, 4.0, 1.0, 0.010, lambda m: 0.010)
    assert b == 2
    assert expected_rate(1, 0.5, 4, 4, 0.010, 0.010) > expected_rate(1, 0.5, 4, 1, 0.010, 0.0)
    assert expected_rate(2, 0.5, 4, 4, 0.010, 0.010) < expected_rate(2, 0.5, 4, 1, 0.010, 0.0)


def test_threshold_grows_as_the_neural_backup_gets_cheaper():
    """p = 0.8, E = 4, E_fast = 1, verify 10 ms: a 4 ms backup crosses over where
    0.01 + 0.004 (1 - 0.8^b) = 4 / 340, i.e. 1 - 0.8^b = 0.44: b* = 3."""
    base = threshold(0.8, 4.0, 4.0, 1.0, 0.010, lambda m: 0.004)
    assert base == 3
    assert threshold(0.8, 4.0, 4.0, 1.0, 0.010, lambda m: 0.001) > base
    assert threshold(0.8, 4.0, 4.0, 1.0, 0.010, lambda m: 0.010) == 1  # as slow as a verify
    assert threshold(0.8, 4.0, 4.0, 4.0, 0.010, lambda m: 0.004) == 1  # fast as good: always fast


def test_policy_uses_the_flag_until_measured_then_its_own_b_star():
    pol = BackupPolicy("adaptive", prior_threshold=8, k=4)
    assert pol.choose(7) == "neural" and pol.choose(8) == "fast"
    pol.verify_s = 0.010
    for i in range(40):
        pol.observe_lookup(i % 2 == 0)  # p_hit -> 0.5
        pol.observe_tokens("hit", 5)
        pol.observe_tokens("neural", 5)
        pol.observe_tokens("fast", 1)
        pol.observe_neural(1 + i % 3, 0.004 + 0.003 * (1 + i % 3))  # t = 4 ms + 3 ms per miss
    assert abs(pol.neural_seconds(2) - 0.010) < 1e-6
    want = threshold(pol.p_hit.value, 5.0, 5.0, 1.0, 0.010, pol.neural_seconds)
    assert pol.update() == want and want != 8
    assert pol.choose(want - 1) == "neural" and pol.choose(want) == "fast"
    assert BackupPolicy("neural", 8, 4).choose(1000) == "neural"
    assert BackupPolicy("fast", 8, 4).choose(1) == "fast"


# ---- launch presets ------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["llama70b-tp4", "qwen32b-tp4", "llama8b-2gpu", "llama70b-two-nodes", "cpu-demo"])
def test_presets_are_valid_sglang_command_lines(name):
    """Every preset's target command parses with SGLang's own parser plus SSD's flags, and its
    SSD flags pass SSD's checks; a two-node preset's draft command parses too."""
    import argparse

    from sglang.srt.server_args import ServerArgs

    from sglang_ssd import config as ssd_config
    from sglang_ssd import draft_server
    from sglang_ssd.launch.presets import PRESETS, describe

    p = PRESETS[name]
    parser = argparse.ArgumentParser()
    ServerArgs.add_cli_args(parser)
    ssd_config.add_cli_args(parser)
    ns = parser.parse_args(p.target_command()[3:])
    assert ns.speculative_algorithm == "SSD" and ns.speculative_draft_model_path == p.draft
    cfg = ssd_config.config_from_namespace(ns)
    assert cfg.backup in ssd_config.BACKUP_POLICIES
    if p.draft_flags:
        dns = draft_server._parser().parse_args(p.draft_command()[3:])
        assert dns.endpoint.startswith("tcp://") and dns.curve_keys == cfg.curve_keys
        assert cfg.draft_endpoint.endswith(dns.endpoint.rsplit(":", 1)[1]) and cfg.allow_remote_draft
    text = describe(p)
    assert p.memory in text and all(n in text for n in p.notes)
