"""The mode planner through a real server: a draft that never agrees gives way to plain rounds."""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests

from conftest import K, SERVER_ARGS, hf_greedy, hf_seeded

EVERY = 8  # rounds per mode decision in this server (SGLANG_SSD_MODE_EVERY)
PROMPTS = [[5, 6, 7, 8, 9], [20, 21, 22], [100, 200, 300, 17], [7, 7, 7]]


@pytest.fixture(scope="module")
def server(models, log_dir):
    """SSD with the random draft, mode auto (the default), K fixed, metrics on."""
    from sglang_ssd.testing.server import CPUServer

    args = SERVER_ARGS + ["--speculative-algorithm", "SSD", "--speculative-draft-model-path",
                          str(models["draft_random"]), "--speculative-num-steps", str(K), "--enable-metrics"]
    srv = CPUServer(models["target"], args, log_path=str(log_dir / "ssd_modes.log"),
                    env=dict(os.environ, SGLANG_SSD_MODE_EVERY=str(EVERY)))
    yield srv
    srv.stop()


def _delta(a: dict, b: dict, mode: str) -> int:
    return b["mode_steps"].get(mode, 0) - a.get("mode_steps", {}).get(mode, 0)


def test_a_draft_that_never_agrees_settles_into_plain_rounds(server, hf_target):
    """Alone (batch 1) for 240 tokens: plain rounds from at most three decisions on (SSD measured,
    then plain, predicted faster from the measured verify, measured and kept); the output is the
    target's own; the draft was paused, and brought back in sync for the probe of SSD."""
    seeded = {"temperature": 1.0, "top_p": 0.9, "max_new_tokens": 40, "ignore_eos": True, "sampling_seed": 11}
    first = server.generate(PROMPTS[2], seeded)["output_ids"]  # while this bucket still speculates
    before = server.ssd_stats()
    out = server.generate(PROMPTS[0], {"temperature": 0, "max_new_tokens": 240, "ignore_eos": True})
    st = server.ssd_stats()
    assert out["output_ids"] == hf_greedy(hf_target, PROMPTS[0], 240)
    row = st["modes"]["bs1-1"]
    assert row["mode"] == "plain" and row["switches"] >= 1
    plain, spec = _delta(before, st, "plain"), _delta(before, st, "ssd") + _delta(before, st, "sync")
    assert plain > 0
    assert len(out["meta_info"]["ssd_accepted"]) <= plain + spec <= 239  # this request's decode steps
    # at most 3 decisions before the first plain round, then probes of EVERY rounds
    assert spec <= 3 * EVERY + row["probes"] * EVERY
    assert plain >= 240 - 3 * EVERY - row["probes"] * EVERY
    assert row["measured"]["plain"]["tok_per_s"] > row["measured"]["ssd"]["tok_per_s"]
    assert st["pauses"] >= 1
    # A seeded sampled request served by plain rounds draws exactly what it drew while speculated
    # (a probe of SSD, 4 judged rounds after the switch's own, unjudged one, may fall inside it: the
    # random draft shares the seeded noise and is accepted now and then there).
    again = server.generate(PROMPTS[2], seeded)
    assert again["output_ids"] == first == hf_seeded(hf_target, PROMPTS[2], 40, seeded)
    rounds = again["meta_info"]["ssd_accepted"]
    probe = EVERY // 2 + 1
    assert sum(k > 0 for k in rounds) <= probe
    assert server.ssd_stats()["mode_steps"]["plain"] >= st["mode_steps"]["plain"] + len(rounds) - probe


def test_probes_resync_the_paused_draft_exactly(server, hf_target):
    """Long enough for SSD's probe after a pause: the draft is brought back in sync (the resync's
    wait in the statistics) and outputs stay exact, alone and four at a time."""
    n = 40 * EVERY
    out = server.generate(PROMPTS[1], {"temperature": 0, "max_new_tokens": n, "ignore_eos": True})
    assert out["output_ids"] == hf_greedy(hf_target, PROMPTS[1], n)
    st = server.ssd_stats()
    assert st["modes"]["bs1-1"]["probes"] >= 2 and st["resyncs"] >= 1
    assert st["resync_ms_per_request"] is not None and st["resync_ms_per_request"] > 0
    sp = {"temperature": 0, "max_new_tokens": 64, "ignore_eos": True}
    with ThreadPoolExecutor(4) as ex:
        outs = list(ex.map(lambda p: server.generate(p, sp)["output_ids"], PROMPTS))
    assert outs == [hf_greedy(hf_target, p, 64) for p in PROMPTS]


def test_mode_is_on_the_metrics_endpoint(server):
    text = requests.get(server.url + "/metrics", timeout=30).text
    modes = {}
    for line in text.splitlines():
        if line.startswith("sglang:ssd_round_mode{"):
            labels = dict(kv.split("=", 1) for kv in line.split("{", 1)[1].split("}", 1)[0].split(","))
            modes[(labels["bucket"].strip('"'), labels["mode"].strip('"'))] = float(line.rsplit(" ", 1)[1])
    now = server.ssd_stats()["modes"]["bs1-1"]["mode"]  # plain, or a probe of another mode
    assert [m for (b, m), v in modes.items() if b == "bs1-1" and v == 1.0] == [now]
    assert sum(modes[("bs1-1", m)] for m in ("ssd", "sync", "plain")) == 1.0
    assert "sglang:ssd_mode_tokens_per_second{" in text


@pytest.mark.parametrize("mode", ["plain", "sync"])
def test_a_pinned_mode_serves_every_round_exactly(models, log_dir, hf_target, servers, mode):
    """--ssd-mode plain: the draft never builds a tree; sync: it drafts each round just in time
    (no lookups counted). Both exact, alone and batched."""
    from sglang_ssd.testing.server import CPUServer

    args = SERVER_ARGS + ["--speculative-algorithm", "SSD", "--speculative-draft-model-path",
                          str(models["target"]), "--speculative-num-steps", str(K), "--ssd-mode", mode]
    with CPUServer(models["target"], args, log_path=str(log_dir / f"ssd_pinned_{mode}.log")) as srv:
        sp = {"temperature": 0, "max_new_tokens": 30, "ignore_eos": True}
        with ThreadPoolExecutor(4) as ex:
            outs = list(ex.map(lambda p: srv.generate(p, sp), PROMPTS))
        assert [o["output_ids"] for o in outs] == [hf_greedy(hf_target, p, 30) for p in PROMPTS]
        st = srv.ssd_stats()
        assert set(st["mode_steps"]) == {mode} and st["config"]["mode"] == mode
        if mode == "plain":
            assert st["draft_tree_s"] == 0 and st["spec_rounds"] == 0
            assert all(k == 0 for o in outs for k in o["meta_info"]["ssd_accepted"])
            _plain_rounds_serve_what_sglang_serves(srv, servers.get("plain"), hf_target)
        else:  # the self-draft is accepted in full, drafted at each round
            assert st["accept_length"] > K and st["lookups"] == 0 and st["draft_tree_s"] == 0


def _plain_rounds_serve_what_sglang_serves(srv, plain, hf_target):
    """Plain rounds are SGLang DECODE forwards: batched with logprobs (prompt and top) and a
    regex, every output, logprob and top-logprob id is the non-speculative server's; a
    frequency penalty's output is the penalty's own law (Hugging Face with the penalty: under
    this concurrency SGLang's plain server drifts from it, so it is not the reference there)."""
    base = {"temperature": 0, "max_new_tokens": 14, "ignore_eos": True}
    penalized = dict(base, frequency_penalty=0.7)
    cases = [
        (PROMPTS[0], base, dict(return_logprob=True, logprob_start_len=0, top_logprobs_num=3)),
        (PROMPTS[1], penalized, {}),
        (PROMPTS[2], {"temperature": 0, "max_new_tokens": 9, "regex": "(ab|cd)+x"}, {}),
        (PROMPTS[3], dict(base, max_new_tokens=20), dict(return_logprob=True)),
    ]

    def both(case):
        p, sp, extra = case
        return srv.generate(p, sp, **extra), plain.generate(p, sp, **extra)

    with ThreadPoolExecutor(4) as ex:
        pairs = list(ex.map(both, cases))
    assert pairs[1][0]["output_ids"] == hf_greedy(hf_target, PROMPTS[1], 14, frequency_penalty=0.7)
    for i, ((a, b), (_, _, extra)) in enumerate(zip(pairs, cases)):
        if i != 1:
            assert (i, a["output_ids"]) == (i, b["output_ids"])
        if extra:
            ma, mb = a["meta_info"], b["meta_info"]
            for key in ("input_token_logprobs", "output_token_logprobs"):
                assert [x[1] for x in ma[key]] == [x[1] for x in mb[key]]
                assert [x[0] for x in ma[key]] == pytest.approx([x[0] for x in mb[key]], abs=1e-4)
    top_a, top_b = pairs[0][0]["meta_info"]["output_top_logprobs"], pairs[0][1]["meta_info"]["output_top_logprobs"]
    assert [[t[1] for t in row] for row in top_a] == [[t[1] for t in row] for row in top_b]


def test_the_target_prior_is_timed_at_start_and_scaled_to_the_rounds_served(server):
    """The target's linear layers were timed at start for every thread count its forwards may run
    on (target_prior.py), at 1-32 rows; once rounds were served the prior is scaled to them."""
    server.generate(PROMPTS[1], {"temperature": 0, "max_new_tokens": 8, "ignore_eos": True})
    prior = server.ssd_stats()["target_prior"]
    assert prior and all(k.startswith("threads") for k in prior)
    for row in prior.values():
        ms = {int(n): v for n, v in row["ms"].items()}
        assert sorted(ms) == [1, 2, 4, 8, 16, 32] and all(v > 0 for v in ms.values())
    assert any(row["scale"] is not None and row["scale"] > 0 for row in prior.values())
