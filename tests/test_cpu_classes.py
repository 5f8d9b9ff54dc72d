"""bfloat16 and float32 servers, plain and SSD, start and answer on both CPU classes.

The AVX2-only class is emulated on any x86-64 machine with the limits an AVX2 CPU imposes
(ONEDNN_MAX_CPU_ISA=AVX2, ATEN_CPU_CAPABILITY=avx2, MKL_ENABLE_INSTRUCTIONS=AVX2): the capability
probe (kernels/cpu_caps.py) reads them, so no bfloat16 pack is attempted, as on a real AVX2 CPU
where the attempt killed every bfloat16 server at weight loading. Each server's measured kernel
choices land in its own cache file, which the test reads: the bfloat16 weights were never timed
on oneDNN, and every plan names the emulated class. Greedy float32 SSD output equals the plain
server's token for token (bfloat16's differs after near-ties: a verify of K+1 rows rounds unlike a
decode row in 16 bits; its first tokens are checked).
"""

from __future__ import annotations

import json

import pytest

from conftest import K, SERVER_ARGS

AVX2_ENV = {"ONEDNN_MAX_CPU_ISA": "AVX2", "ATEN_CPU_CAPABILITY": "avx2", "MKL_ENABLE_INSTRUCTIONS": "AVX2"}
PROMPTS = [[3, 17, 29, 41, 5], [101, 7, 88, 2, 64, 9, 13]]


def _args(dtype: str) -> list[str]:
    args = list(SERVER_ARGS)
    args[args.index("--dtype") + 1] = dtype
    return args


@pytest.mark.slow
@pytest.mark.parametrize("dtype", ["bfloat16", "float32"])
def test_avx2_class_serves_plain_and_ssd(models, log_dir, tmp_path, dtype):
    from sglang_ssd.testing.server import CPUServer

    cache = tmp_path / "kernels"
    env = dict(AVX2_ENV, SGLANG_SSD_KERNEL_CACHE=str(cache))
    sp = {"temperature": 0.0, "max_new_tokens": 12, "ignore_eos": True}
    outs = {}
    for name, extra in (("plain", []), ("ssd", ["--speculative-algorithm", "SSD", "--speculative-draft-model-path",
                                               str(models["draft_perturbed"]), "--speculative-num-steps", str(K),
                                               "--ssd-mode", "ssd"])):
        srv = CPUServer(models["target"], _args(dtype) + extra, env=env,
                        log_path=str(log_dir / f"avx2-{dtype}-{name}.log"))
        try:
            outs[name] = [srv.generate(p, sp)["output_ids"] for p in PROMPTS]
            if name == "ssd":
                stats = srv.ssd_stats()
                assert stats["spec_rounds"] > 0 and stats["draft_failures"] == 0
        finally:
            srv.stop()
    assert all(len(o) == 12 for o in outs["plain"] + outs["ssd"])
    if dtype == "float32":
        assert outs["ssd"] == outs["plain"]
    else:  # bfloat16 rounds a verify of K+1 rows differently from a decode row: near-ties may flip
        assert [o[:2] for o in outs["ssd"]] == [o[:2] for o in outs["plain"]]
    plans = json.loads((cache / "linear_plans.json").read_text())
    mine = {k: v for k, v in plans.items() if f"|{dtype}|" in k}
    assert mine, plans.keys()
    assert all("avx2 (emulated" in k or "|avx2|" in k for k in mine)
    if dtype == "bfloat16":  # never timed on oneDNN (the pack cannot be made on this class)
        assert all("onednn" not in v["times"] and v["kind"] == "keep" for v in mine.values())
