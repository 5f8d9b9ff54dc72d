"""Exact command lines for the published SSD pairs, and for the CPU demo.

    python -m sglang_ssd.launch.presets                    # list them, with expected memory
    python -m sglang_ssd.launch.presets NAME               # print the command line(s), flags explained
    python -m sglang_ssd.launch.presets NAME --run [--role draft|target] [-- EXTRA SGLANG FLAGS]

A preset is data: the target and draft, the GPUs, SGLang's flags and SSD's, and why each was
chosen. Multi-node presets have two roles: the draft server (`--role draft`, on the draft's node)
and the target server (`--role target`).
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys
from dataclasses import dataclass, field

K_NOTE = ("--speculative-num-steps 4: K=4 fits the draft's tree inside one verify on these pairs "
          "(the H100 rerun of Qwen3-32B/0.6B found K=4 best; K=7 fell to 1.12x SD)")
BUDGET_NOTE = ("--ssd-fanout-budget 24: 24 pre-drafted branches per request per round, split over the "
               "K+1 positions by the geometric schedule re-planned from measured acceptance")
BACKUP_NOTE = "--ssd-backup adaptive: neural backup at small batch, n-gram above the measured b*"


@dataclass(frozen=True)
class Preset:
    name: str
    summary: str
    target: str
    draft: str
    memory: str
    target_flags: list[str]
    notes: list[str]
    draft_flags: list[str] = field(default_factory=list)  # non-empty: a separate draft server role
    env: dict = field(default_factory=dict)

    def target_command(self) -> list[str]:
        return [sys.executable, "-m", "sglang.launch_server", "--model-path", self.target,
                "--speculative-algorithm", "SSD", "--speculative-draft-model-path", self.draft,
                *self.target_flags]

    def draft_command(self) -> list[str]:
        return [sys.executable, "-m", "sglang_ssd.draft_server", "--model-path", self.draft, *self.draft_flags]


SSD_COMMON = ["--speculative-num-steps", "4", "--ssd-fanout-budget", "24", "--ssd-backup", "adaptive"]

PRESETS = {p.name: p for p in [
    Preset(
        name="llama70b-tp4",
        summary="Llama-3.1-70B-Instruct on 4 GPUs (TP4) + Llama-3.2-1B-Instruct draft on a 5th",
        target="meta-llama/Llama-3.1-70B-Instruct", draft="meta-llama/Llama-3.2-1B-Instruct",
        memory="target 141 GB bf16 weights = ~35 GB per GPU on GPUs 0-3, plus KV; draft 2.5 GB "
               "weights + ~2 GB KV pool (65536 slots) on GPU 4. Needs 5 x 80 GB GPUs.",
        target_flags=["--tp", "4", *SSD_COMMON, "--ssd-draft-device", "cuda:4",
                      "--mem-fraction-static", "0.85"],
        notes=["--tp 4: the target on GPUs 0-3; only TP rank 0 talks to the draft",
               "--ssd-draft-device cuda:4: the draft on its own GPU (also the default: the first "
               "GPU after the target's)", K_NOTE, BUDGET_NOTE, BACKUP_NOTE,
               "published (H100, batch 1, T=0): AR 54.7, SD 161.8, SSD 255.8 tok/s"],
    ),
    Preset(
        name="qwen32b-tp4",
        summary="Qwen3-32B on 4 GPUs (TP4) + Qwen3-0.6B draft on a 5th",
        target="Qwen/Qwen3-32B", draft="Qwen/Qwen3-0.6B",
        memory="target 65.5 GB bf16 = ~16.4 GB per GPU on GPUs 0-3, plus KV; draft 1.2 GB + KV on "
               "GPU 4. Fits 5 x 40 GB GPUs.",
        target_flags=["--tp", "4", *SSD_COMMON, "--ssd-draft-device", "cuda:4"],
        notes=["--tp 4: the target on GPUs 0-3", "--ssd-draft-device cuda:4: the draft's own GPU",
               K_NOTE, BUDGET_NOTE, BACKUP_NOTE,
               "published (H100, batch 1, T=0): AR 88.8, SD 136.8, SSD 203.8 tok/s"],
    ),
    Preset(
        name="llama8b-2gpu",
        summary="Llama-3.1-8B-Instruct on GPU 0 + Llama-3.2-1B-Instruct draft on GPU 1",
        target="meta-llama/Llama-3.1-8B-Instruct", draft="meta-llama/Llama-3.2-1B-Instruct",
        memory="target 16 GB bf16 + KV on GPU 0; draft 2.5 GB + ~2 GB KV on GPU 1. Fits 2 x 24 GB GPUs.",
        target_flags=[*SSD_COMMON],
        notes=["no --ssd-draft-device: the default puts the draft on cuda:1, the first GPU after "
               "the target's", K_NOTE, BUDGET_NOTE, BACKUP_NOTE],
    ),
    Preset(
        name="llama70b-two-nodes",
        summary="Llama-3.1-70B-Instruct TP4 on node A + the 1B draft served from node B over TCP",
        target="meta-llama/Llama-3.1-70B-Instruct", draft="meta-llama/Llama-3.2-1B-Instruct",
        memory="node A: 4 x 80 GB GPUs (as llama70b-tp4); node B: one GPU with >= 8 GB.",
        target_flags=["--tp", "4", *SSD_COMMON, "--ssd-draft-endpoint", "tcp://NODE_B:5557",
                      "--ssd-allow-remote-draft", "--ssd-curve-keys", "/etc/sglang-ssd/keys",
                      "--ssd-draft-timeout-ms", "2000"],
        draft_flags=["--endpoint", "tcp://0.0.0.0:5557", "--allow-remote", "--curve-keys",
                     "/etc/sglang-ssd/keys", "--device", "cuda:0"],
        notes=["keys first: python -m sglang_ssd.draft_server --make-curve-keys /etc/sglang-ssd/keys, "
               "then copy the directory to both nodes (the client secret stays with the target)",
               "--ssd-draft-endpoint tcp://NODE_B:5557: connect to the draft server (replace NODE_B); "
               "data-parallel replica i uses port 5557+i (start the draft server with --replicas N)",
               "--ssd-allow-remote-draft: required for a non-loopback address",
               "--ssd-curve-keys: CurveZMQ encryption; only the key holder is admitted",
               "--ssd-draft-timeout-ms 2000: a network hiccup costs at most 2 s before rounds are "
               "served without the draft", K_NOTE, BUDGET_NOTE],
    ),
    Preset(
        name="cpu-demo",
        summary="the CPU demo's tiny local models (random weights), no GPU, no model hub",
        target="~/.cache/sglang_ssd/tiny_models/target", draft="~/.cache/sglang_ssd/tiny_models/draft_perturbed",
        memory="~100 MB RAM for both models; the CPU server takes ~30 s to start.",
        target_flags=["--speculative-num-steps", "4", "--dtype", "float32", "--mem-fraction-static",
                      "0.25", "--max-total-tokens", "32768", "--sleep-on-idle"],
        notes=["run it with python -m sglang_ssd.cpu_serve (CPU stand-ins) or simply "
               "python -m sglang_ssd.launch.demo --tiny, which makes the models first",
               "--sleep-on-idle: an idle CPU scheduler otherwise busy-polls a core",
               "--dtype float32 and a small --mem-fraction-static: CPU defaults"],
        env={"SGLANG_SSD_CPU": "1"},
    ),
]}


def describe(p: Preset) -> str:
    lines = [f"# {p.name}: {p.summary}", f"# memory: {p.memory}"]
    if p.draft_flags:
        lines += ["# on the draft's node:", shlex.join(p.draft_command()), "# on the target's node:"]
    target = p.target_command()
    if p.name == "cpu-demo":
        target[2] = "sglang_ssd.cpu_serve"
    lines.append(shlex.join(target))
    lines += [f"#   {n}" for n in p.notes]
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m sglang_ssd.launch.presets",
                                 description=__doc__.split("\n\n")[0])
    ap.add_argument("name", nargs="?", choices=sorted(PRESETS))
    ap.add_argument("--run", action="store_true", help="start it (exec) instead of printing")
    ap.add_argument("--role", choices=["target", "draft"], default="target")
    ap.add_argument("extra", nargs=argparse.REMAINDER, help="-- then more SGLang flags")
    args = ap.parse_args(argv)
    if args.name is None:
        for p in PRESETS.values():
            print(f"{p.name:20s} {p.summary}\n{'':20s} memory: {p.memory}")
        return 0
    p = PRESETS[args.name]
    if not args.run:
        print(describe(p))
        return 0
    if args.role == "draft" and not p.draft_flags:
        ap.error(f"preset {p.name!r} has no separate draft server (the target server spawns it)")
    extra = [a for a in args.extra if a != "--"]
    cmd = (p.draft_command() if args.role == "draft" else p.target_command()) + extra
    if p.name == "cpu-demo" and args.role == "target":
        cmd[2] = "sglang_ssd.cpu_serve"
    cmd = [os.path.expanduser(c) for c in cmd]
    os.execvpe(cmd[0], cmd, dict(os.environ, **p.env))
    return 0


if __name__ == "__main__":
    sys.exit(main())
