"""The CPU core split (sglang_ssd/cpu_cores.py): which cores the draft and the target get, how many
threads an idle-draft forward gets from the measured costs, and that a process really moves."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from sglang_ssd.cpu_cores import (EXPLORE_EVERY, CoreSplit, ThreadChoice, parse_cpu_list, split_cores)
from sglang_ssd.round_costs import RoundCosts


def test_cpu_lists_parse_and_bad_ones_are_named():
    assert parse_cpu_list("3") == (3,)
    assert parse_cpu_list("0,2-3") == (0, 2, 3)
    assert parse_cpu_list("3-3,1") == (1, 3)
    for bad in ("", "a", "3-1", "1,,2", "-2", "1-x"):
        with pytest.raises(ValueError, match=repr(bad).replace("(", r"\(")):
            parse_cpu_list(bad)


def test_the_draft_gets_the_last_cores_and_the_target_keeps_one_at_least():
    s = split_cores([1, 0], 1)
    assert (s.all, s.target, s.draft, s.active) == ((0, 1), (0,), (1,), True)
    s = split_cores(range(8), 2)
    assert (s.target, s.draft) == ((0, 1, 2, 3, 4, 5), (6, 7))
    s = split_cores([4, 5, 6], 16)  # more draft threads than cores: all but one
    assert (s.target, s.draft) == ((4,), (5, 6))
    one = split_cores([3], 1)
    assert not one.active and one.target == one.all == (3,) and "1 core" in one.reason
    off = split_cores([0, 1], 1, enabled=False)
    assert not off.active and off.target == (0, 1) and "off" in off.describe()


def test_explicit_draft_cores_are_checked_against_the_servers():
    s = split_cores([0, 1, 2, 3], 1, explicit=(1, 2))
    assert (s.target, s.draft) == ((0, 3), (1, 2))
    with pytest.raises(ValueError, match=r"--ssd-draft-cpus=5.*\[5\].*\[0, 1\]"):
        split_cores([0, 1], 1, explicit=(5,))
    with pytest.raises(ValueError, match=r"--ssd-draft-cpus=0,1: leaves the target no core"):
        split_cores([0, 1], 1, explicit=(0, 1))


def _choice(cores=(0, 1)):
    split = split_cores(cores, 1)
    costs = RoundCosts(speculating=len(split.target))
    return ThreadChoice(costs, split), costs


def test_an_idle_draft_forward_measures_both_counts_then_keeps_the_faster():
    choice, costs = _choice()
    seq = []
    for _ in range(4):  # unmeasured counts first: all cores twice, then the target's own once
        t, _ = choice.threads(1, 1)
        seq.append(t)
        costs.observe(1, 1, 0.08 if t == 2 else 0.06, t)  # one thread is faster here (as on an AVX2 box)
    assert seq == [2, 2, 1, 1]  # the fourth from the measurements
    picks = [choice.threads(1, 1) for _ in range(2 * EXPLORE_EVERY)]  # forwards 5 to 2052 at this point
    explored = [i + 5 for i, p in enumerate(picks) if p == (2, True)]
    # the slower (within CLEARLY of the faster) re-measured at doubling intervals, then every EXPLORE_EVERY
    assert explored == [8, 16, 32, 64, 128, 256, 512, EXPLORE_EVERY, 2 * EXPLORE_EVERY]
    assert all(p == (1, False) for p in picks if p != (2, True))
    for _ in range(5):
        costs.observe(1, 1, 0.10, 2)  # both cores clearly slower (1.67x): timed every EXPLORE_EVERY only
    choice._seen.clear()
    picks = [choice.threads(1, 1) for _ in range(EXPLORE_EVERY)]
    assert [i + 1 for i, p in enumerate(picks) if p[1]] == [EXPLORE_EVERY]
    # another width and another bucket are their own questions
    assert choice.threads(1, 5)[0] == 2 and choice.threads(8, 1)[0] == 2
    for _ in range(2):
        costs.observe(8, 1, 0.5, 2)
        costs.observe(8, 1, 0.9, 1)
    assert choice.threads(8, 1)[0] == 2  # at batch 8 both cores win


def test_a_change_of_load_is_followed():
    choice, costs = _choice()
    for t, s in ((2, 0.1), (2, 0.1), (1, 0.2)):
        costs.observe(1, 1, s, t)
    assert choice.threads(1, 1)[0] == 2
    for _ in range(5):  # both cores got slow (another process took one): the median moves
        costs.observe(1, 1, 0.4, 2)
    assert choice.threads(1, 1)[0] == 1


def test_costs_by_thread_count_feed_the_step_and_keep_the_verify_to_the_speculating_count():
    costs = RoundCosts(speculating=1)
    costs.observe(1, 5, 0.30)  # an SSD verify, speculating count
    costs.observe(1, 5, 0.18, 2)  # a sync verify on both cores
    costs.observe(1, 1, 0.20, 1)
    costs.observe(1, 1, 0.12, 2)
    assert costs.verify(1, 4) == pytest.approx(0.30)  # what the draft's tree must hide behind
    assert costs.step(1) == pytest.approx(0.12)  # a plain round runs at the faster count
    assert costs.samples(1, 1, 2) == 1 and costs.samples(1, 1, 3) == 0
    assert set(costs.table()) == {"threads1", "threads2"}
    assert RoundCosts().table() == {}


def test_one_thread_count_keeps_the_flat_table():
    costs = RoundCosts()
    costs.observe(2, 5, 0.25)
    assert costs.table() == {"bs2-3": {5: 250.0}}


@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="needs 2 cores")
def test_process_threads_move_every_thread_and_torchs_count():
    """In a child: after use(1, first core) every thread of the process may run only there and
    torch computes on one thread; after use(2, both) on both, and a matmul runs there."""
    cores = sorted(os.sched_getaffinity(0))[:2]
    code = f"""
import json, os, torch
from sglang_ssd.cpu_cores import ProcessThreads
torch.ones(256, 256) @ torch.ones(256, 256)  # torch's pool exists
p = ProcessThreads()
out = []
for n, cpus in ((1, ({cores[0]},)), (2, tuple({cores}))):
    p.use(n, cpus)
    torch.ones(512, 512) @ torch.ones(512, 512)
    tids = os.listdir("/proc/self/task")
    out.append([torch.get_num_threads(), sorted({{c for t in tids for c in os.sched_getaffinity(int(t))}}), len(tids)])
p.use(2, tuple({cores}))  # unchanged: nothing re-applied
out.append(p.changes)
print(json.dumps(out))
"""
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr[-2000:]
    one, two, changes = json.loads(res.stdout.strip().splitlines()[-1])
    assert one[:2] == [1, [cores[0]]]
    assert two[:2] == [2, cores]
    assert changes == 2


def test_the_flag_is_parsed_and_checked(tmp_path):
    from sglang_ssd.config import SSDConfig, SSDConfigError, config_from_namespace, validate
    import argparse

    from sglang_ssd.config import add_cli_args

    ap = argparse.ArgumentParser()
    add_cli_args(ap)
    assert config_from_namespace(ap.parse_args([])).draft_cpus == "auto"
    assert config_from_namespace(ap.parse_args(["--ssd-draft-cpus", "off"])).draft_cpus == "off"
    mine = sorted(os.sched_getaffinity(0))
    assert config_from_namespace(ap.parse_args(["--ssd-draft-cpus", f"{mine[-1]}-{mine[-1]}"])).draft_cpus == str(mine[-1])
    with pytest.raises(SystemExit):
        ap.parse_args(["--ssd-draft-cpus", "two"])
    draft = tmp_path / "draft"
    draft.mkdir()
    with pytest.raises(SSDConfigError, match=r"--ssd-draft-cpus=4096: cores \[4096\] are not among the server's cores"):
        validate(SSDConfig(draft_cpus="4096"), k=4, draft_model_path=str(draft), target_device="cpu")
    with pytest.raises(SSDConfigError, match=r"--ssd-draft-cpus='0'.*--ssd-draft-endpoint"):
        validate(SSDConfig(draft_cpus="0", draft_endpoint="tcp://127.0.0.1:5557"), k=4,
                 draft_model_path=str(draft), target_device="cpu")
    assert CoreSplit((0,), (0,)).describe().startswith("no core split")


def test_cold_forwards_do_not_decide_the_thread_count():
    """The first forwards at a new batch shape run cold (oneDNN makes its kernels): two cold
    two-thread forwards against one warm one-thread forward must not settle on one thread; the
    fastest recent forward of each count decides."""
    choice, costs = _choice()
    assert choice.threads(16, 1)[0] == 2
    costs.observe(16, 1, 1.9, 2)  # cold
    assert choice.threads(16, 1)[0] == 2
    costs.observe(16, 1, 0.35, 2)
    assert choice.threads(16, 1)[0] == 1
    costs.observe(16, 1, 0.62, 1)
    assert choice.threads(16, 1)[0] == 2


def test_a_count_first_measured_while_the_draft_worked_is_measured_again_soon():
    """16 requests' first plain steps on both cores ran while the draft prefilled their prompts on
    its core (813 and 852 ms), one-core steps then 370 ms: the 8th forward tries both cores again
    (225 ms now) and they are kept, instead of 60 steps on one core until the 64th."""
    choice, costs = _choice()
    for bs, sec in ((4, 0.155), (8, 0.188)):  # both cores' plain steps at other batch sizes: their line
        costs.observe(bs, 1, sec, 2)  # says ~0.25 s at 16 requests
    picks = []
    for _ in range(12):
        t, _ = choice.threads(16, 1)
        picks.append(t)
        costs.observe(16, 1, {2: 0.83 if len(picks) <= 2 else 0.225, 1: 0.37}[t], t)
    assert picks == [2, 2, 1, 1, 1, 1, 1, 2, 2, 2, 2, 2]


def test_a_count_its_line_puts_clearly_slower_is_not_timed():
    """32 requests on the 2-core EPYC: one-core forwards at other batch sizes put a one-core step
    at ~0.6 s, both cores measured 0.36 s: no one-core forward is timed (each cost 260 ms), not at
    first and not at the doubling intervals, only every EXPLORE_EVERY forwards."""
    choice, costs = _choice()
    for bs, w, sec in ((1, 5, 0.25), (4, 5, 0.45), (8, 5, 0.82)):  # SSD's one-core verifies
        costs.observe(bs, w, sec, 1)
    assert costs.line(1, 32) > 1.5 * 0.36
    picks = []
    for _ in range(EXPLORE_EVERY):
        t, measuring = choice.threads(32, 1)
        picks.append((t, measuring))
        costs.observe(32, 1, 0.36 if t == 2 else 0.62, t)
    assert [i + 1 for i, p in enumerate(picks) if p[0] == 1] == [EXPLORE_EVERY]


def test_a_server_splits_only_a_cpu_draft_it_spawns():
    from types import SimpleNamespace

    from sglang_ssd.config import SSDConfig
    from sglang_ssd.cpu_cores import split_for_server

    cpu = SimpleNamespace(device="cpu", tp_size=1, dp_size=1)
    mine = sorted(os.sched_getaffinity(0))
    s = split_for_server(cpu, SSDConfig())
    assert s.active == (len(mine) > 1) and s.all == tuple(mine)
    cases = [(SimpleNamespace(device="cuda", tp_size=1, dp_size=1), SSDConfig(), "not on the CPU"),
             (cpu, SSDConfig(draft_device="cuda:0"), "does not run"),
             (cpu, SSDConfig(draft_endpoint="tcp://127.0.0.1:5557"), "does not run"),
             (SimpleNamespace(device="cpu", tp_size=2, dp_size=1), SSDConfig(), "tensor or data parallel"),
             (cpu, SSDConfig(draft_cpus="off"), "off")]
    for args, cfg, why in cases:
        s = split_for_server(args, cfg)
        assert not s.active and why in s.reason and s.target == s.all


def test_target_cores_apply_the_split_per_kind_of_forward(monkeypatch):
    """SSD rounds on the target's own cores, prefills on all, plain rounds as ThreadChoice says;
    without a split nothing is touched."""
    from sglang_ssd import cpu_cores
    from sglang_ssd.cpu_cores import TargetCores

    applied = []
    monkeypatch.setattr(cpu_cores.ProcessThreads, "use", lambda self, n, cpus: applied.append((n, cpus)))
    costs = RoundCosts()
    cores = TargetCores(split_cores([0, 1, 2, 3], 1), costs)
    assert costs.speculating == 3 and applied == [(3, (0, 1, 2))]
    assert cores.use("ssd", 4, 5) == (3, False) and applied[-1] == (3, (0, 1, 2))
    assert cores.use("prefill", 4, 0) == (4, False) and applied[-1] == (4, (0, 1, 2, 3))
    assert cores.use("plain", 4, 1) == (4, False)  # all cores measured first
    assert cores.describe() == {"all": [0, 1, 2, 3], "target": [0, 1, 2], "draft": [3]}
    applied.clear()
    off = TargetCores(split_cores([0, 1], 1, enabled=False), RoundCosts())
    assert off.use("plain", 1, 1) == (None, False) and applied == [] and "off" in off.describe()
