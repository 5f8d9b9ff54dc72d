"""SSD's own command-line flags (`--ssd-...`) and their validation.

The flags are added to SGLang's own parser (see plugin.py), parsed into an `SSDConfig` before any
model loads, and ride along on the ServerArgs record (`server_args._ssd_config`, which ServerArgs
pickles with its bookkeeping) so every SGLang process sees the same values.
"""

from __future__ import annotations

import argparse
import ipaddress
import logging
import os
import re
from dataclasses import asdict, dataclass, field
from typing import Optional

logger = logging.getLogger(__name__)

BACKUP_POLICIES = ("neural", "fast", "adaptive")
ROUND_MODES = ("auto", "ssd", "sync", "plain")
MAX_K = 16
DEFAULT_K = 4


class SSDConfigError(ValueError):
    """A bad flag value; the message names the flag and the value."""


@dataclass
class SSDConfig:
    fanout_budget: Optional[int] = None
    fanout: Optional[list[int]] = None
    backup: str = "adaptive"
    backup_batch_threshold: int = 8
    draft_device: Optional[str] = None
    draft_endpoint: Optional[str] = None
    allow_remote_draft: bool = False
    draft_timeout: float = 10.0  # seconds
    draft_start_timeout: float = 600.0
    draft_threads: Optional[int] = None
    draft_cpus: str = "auto"  # cpu_cores.py: auto, off, or the draft's cores ("3", "2-3")
    draft_kv_tokens: int = 65536
    draft_window: int = 0  # request_view.DraftView: 0 = the draft sees every prompt token
    draft_dtype: Optional[str] = None
    saguaro_c: float = 1.0
    draft_engine: str = "hf"
    curve_keys: Optional[str] = None
    mode: str = "auto"
    extra: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "SSDConfig":
        return cls(**d)


def _flag_error(flag: str, value, why: str) -> SSDConfigError:
    return SSDConfigError(f"{flag}={value!r}: {why}")


def _int_in(flag: str, lo: int, hi: Optional[int] = None):
    def parse(text: str) -> int:
        try:
            v = int(text)
        except (TypeError, ValueError):
            raise argparse.ArgumentTypeError(f"{flag}={text!r}: not an integer")
        if v < lo or (hi is not None and v > hi):
            rng = f">= {lo}" if hi is None else f"in [{lo}, {hi}]"
            raise argparse.ArgumentTypeError(f"{flag}={text!r}: must be {rng}")
        return v

    return parse


def _positive_float(flag: str):
    def parse(text: str) -> float:
        try:
            v = float(text)
        except (TypeError, ValueError):
            raise argparse.ArgumentTypeError(f"{flag}={text!r}: not a number")
        if not (v > 0 and v < float("inf")):
            raise argparse.ArgumentTypeError(f"{flag}={text!r}: must be a finite number > 0")
        return v

    return parse


def _saguaro_c(text: str) -> float:
    try:
        v = float(text)
    except (TypeError, ValueError):
        raise argparse.ArgumentTypeError(f"--ssd-saguaro-c={text!r}: not a number")
    if not (0.0 < v <= 1.0):
        raise argparse.ArgumentTypeError(f"--ssd-saguaro-c={text!r}: must be in (0, 1]")
    return v


def _fanout_list(text: str) -> list[int]:
    parts = [p.strip() for p in str(text).split(",")]
    try:
        vals = [int(p) for p in parts]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"--ssd-fanout={text!r}: expected comma-separated integers F_0,...,F_K"
        )
    if any(v < 0 for v in vals):
        raise argparse.ArgumentTypeError(f"--ssd-fanout={text!r}: fan-outs must be >= 0")
    if not any(v > 0 for v in vals):
        raise argparse.ArgumentTypeError(f"--ssd-fanout={text!r}: at least one fan-out must be > 0")
    return vals


def _draft_cpus(text: str) -> str:
    from sglang_ssd.cpu_cores import parse_cpu_list

    if text in ("auto", "off"):
        return text
    try:
        return ",".join(map(str, parse_cpu_list(text)))
    except ValueError as e:
        raise argparse.ArgumentTypeError(f"--ssd-draft-cpus={text!r}: {e} (or auto, off)") from None


_DEVICE_RE = re.compile(r"^(cpu|cuda(:\d+)?)$")


def _device(text: str) -> str:
    if not _DEVICE_RE.match(str(text)):
        raise argparse.ArgumentTypeError(
            f"--ssd-draft-device={text!r}: expected 'cpu', 'cuda' or 'cuda:N'"
        )
    return text


def parse_endpoint(text: str) -> tuple[str, str, Optional[int]]:
    """("ipc", PATH, None) or ("tcp", HOST, PORT); ValueError otherwise."""
    t = str(text)
    if t.startswith("ipc://") and len(t) > len("ipc://"):
        return "ipc", t[len("ipc://"):], None
    m = re.match(r"^tcp://(\[[^\]]+\]|[^:/]+):(\d+)$", t)
    if m and 0 < int(m.group(2)) < 65536:
        return "tcp", m.group(1).strip("[]"), int(m.group(2))
    raise ValueError("expected ipc://PATH or tcp://HOST:PORT")


def endpoint_for_replica(endpoint: str, replica: int) -> str:
    """Data-parallel replica i's draft endpoint: the port + i (tcp) or PATH.i (ipc); i = 0 unchanged."""
    if replica == 0:
        return endpoint
    kind, host, port = parse_endpoint(endpoint)
    if kind == "ipc":
        return f"{endpoint}.{replica}"
    if port + replica >= 65536:
        raise ValueError(f"{endpoint}: no port for data-parallel replica {replica}")
    host = f"[{host}]" if ":" in host else host
    return f"tcp://{host}:{port + replica}"


def choose_draft_device(requested: Optional[str], target_device: str, n_gpus: int, base_gpu_id: int,
                        tp_size: int, dp_size: int = 1, dp_rank: int = 0, gpu_id_step: int = 1) -> str:
    """The draft process's device. Default: the first GPU after all of the target's (one per
    data-parallel replica); cpu for a cpu target. On a machine with one GPU, which the target
    uses, the draft shares it (logged). A clear error when the target uses several GPUs and none
    is left for the draft."""
    if requested:
        if requested.startswith("cuda:") and int(requested.split(":")[1]) >= n_gpus:
            raise SSDConfigError(f"--ssd-draft-device={requested!r}: this machine has {n_gpus} GPU(s)")
        return requested
    if target_device == "cpu":
        return "cpu"
    used = tp_size * dp_size
    gpu = base_gpu_id + used * gpu_id_step + dp_rank
    if gpu >= n_gpus and n_gpus == 1 and used == 1 and base_gpu_id == 0:
        logger.info("SSD draft shares cuda:0 with the target: this machine has 1 GPU "
                    "(--ssd-draft-device chooses another device)")
        return "cuda:0"
    if gpu >= n_gpus:
        raise SSDConfigError(
            f"--ssd-draft-device: the target uses GPUs {base_gpu_id}..{base_gpu_id + (used - 1) * gpu_id_step} "
            f"(tp {tp_size} x dp {dp_size}) and the draft needs its own, but this machine has {n_gpus}; "
            "pass --ssd-draft-device cuda:N to share one, or --ssd-draft-endpoint for a draft elsewhere")
    return f"cuda:{gpu}"


def endpoint_arg(flag: str):
    """argparse type for an endpoint flag: the text, or an error naming the flag and value."""
    def parse(text: str) -> str:
        try:
            parse_endpoint(text)
        except ValueError as e:
            raise argparse.ArgumentTypeError(f"{flag}={text!r}: {e}")
        return text

    return parse


def add_cli_args(parser: argparse.ArgumentParser) -> None:
    """Add SSD's flags to an SGLang ServerArgs parser (listed by --help)."""
    if any(a.dest == "ssd_backup" for a in parser._actions):
        return
    g = parser.add_argument_group("SSD (speculative speculative decoding, sglang-ssd)")
    g.add_argument("--ssd-fanout-budget", type=_int_in("--ssd-fanout-budget", 1, 4096), default=None,
                   help="Branches pre-drafted per request per round (B); split over positions by "
                   "the geometric schedule. Default: sized by time each round, at most 3*(K+1) "
                   "(the tree that serves most tokens per second against the measured verify).")
    g.add_argument("--ssd-fanout", type=_fanout_list, default=None,
                   help="Explicit fan-out list F_0,...,F_K (K+1 non-negative integers); overrides "
                   "--ssd-fanout-budget.")
    g.add_argument("--ssd-backup", type=str, default="adaptive",
                   help="Backup speculator on a cache miss: neural (draft K tokens from the true "
                   "context), fast (n-gram lookup in the request's own context), adaptive (neural "
                   "while few requests missed, fast above --ssd-backup-batch-threshold).")
    g.add_argument("--ssd-backup-batch-threshold", type=_int_in("--ssd-backup-batch-threshold", 1),
                   default=8, help="Adaptive backup: batch size b* from which misses get the fast backup.")
    g.add_argument("--ssd-draft-device", type=_device, default=None,
                   help="Device of the draft process: cpu, cuda or cuda:N. Default: cpu when the "
                   "target runs on cpu, else the next GPU after the target's (the target's own GPU "
                   "on a one-GPU machine).")
    g.add_argument("--ssd-draft-endpoint", type=endpoint_arg("--ssd-draft-endpoint"), default=None,
                   help="Connect to a draft server started apart (python -m sglang_ssd.draft_server) "
                   "at ipc://PATH or tcp://HOST:PORT instead of spawning the draft process. Default: "
                   "spawn it, over an ipc:// socket in a private directory. tcp:// must be loopback "
                   "unless --ssd-allow-remote-draft. Data-parallel replica i uses PORT+i (PATH.i).")
    g.add_argument("--ssd-curve-keys", type=str, default=None, metavar="DIR",
                   help="CurveZMQ keys (made by python -m sglang_ssd.draft_server --make-curve-keys "
                   "DIR) for the connection to --ssd-draft-endpoint: encrypted, and only this key's "
                   "holder is admitted.")
    g.add_argument("--ssd-allow-remote-draft", action="store_true",
                   help="Allow a non-loopback tcp:// --ssd-draft-endpoint.")
    g.add_argument("--ssd-draft-timeout-ms", type=_positive_float("--ssd-draft-timeout-ms"),
                   default=10000.0, help="Milliseconds to wait for the draft's answer in a round; "
                   "past it the round is served without the draft, which is restarted with backoff.")
    g.add_argument("--ssd-draft-start-timeout", type=_positive_float("--ssd-draft-start-timeout"),
                   default=600.0, help="Seconds to wait for the draft process to load its model.")
    g.add_argument("--ssd-draft-threads", type=_int_in("--ssd-draft-threads", 1, 1024), default=None,
                   help="torch threads in the draft process (CPU draft). Default: 1.")
    g.add_argument("--ssd-draft-cpus", type=_draft_cpus, default="auto",
                   help="CPU cores of a CPU draft process (CPU server): auto (the last "
                   "--ssd-draft-threads cores the server may use), a list such as 3 or 2-3, or off "
                   "(no pinning: target and draft share every core). The target computes on the "
                   "other cores while the draft works and borrows the draft's cores for prefills, "
                   "plain rounds and sync verifies, with the thread count measured faster.")
    g.add_argument("--ssd-draft-kv-tokens", type=_int_in("--ssd-draft-kv-tokens", 256), default=65536,
                   help="KV slots in the draft process's pool (prefixes, glue and branch tokens).")
    g.add_argument("--ssd-draft-window", type=_int_in("--ssd-draft-window", 0), default=0,
                   help="The draft sees a prompt longer than this many tokens (+4) as its first 4 tokens "
                   "and its last this many, then what is generated: its prefill and attention stay "
                   "bounded for any prompt, at some cost in acceptance (outputs are exact either way). "
                   "0 (default): every prompt token.")
    g.add_argument("--ssd-saguaro-c", type=_saguaro_c, default=1.0,
                   help="Saguaro sampling for sampled requests: the draft scales its top (F_j+1) "
                   "tokens at position j by C in (0, 1] (1 = off); lower C raises the cache hit "
                   "rate at some cost in acceptance. Exactness does not depend on it.")
    g.add_argument("--ssd-draft-engine", type=str, default="hf",
                   help="How the draft process runs the draft: sglang (SGLang's own ModelRunner; "
                   "FlashInfer on GPU) or hf (Hugging Face model over SSD's slot KV pool; about 8x "
                   "faster than SGLang's torch_native decode loop on CPU, see bench/draft_engines.py).")
    g.add_argument("--ssd-mode", type=str, default="auto",
                   help="Kind of decode round: auto (per batch-size bucket, whichever of the others "
                   "serves most tokens per second, measured; see docs/guide.md), ssd (speculation "
                   "cache, the draft pre-drafts while the target verifies), sync (the draft drafts "
                   "just in time, no tree) or plain (no speculation; the draft is paused).")
    g.add_argument("--ssd-draft-dtype", type=str, default=None,
                   help="Draft dtype: float32, float16, bfloat16 or int8 (cpu, hf engine: dynamic int8 "
                   "linear layers). Default on cpu for a draft of >= 100M parameters: int8 (measured "
                   "2.3-3.3x faster steps than float32 at about equal greedy agreement, bench/draft_precision.py), "
                   "else bfloat16 where the CPU has native bf16, else float32; below 100M float32; "
                   "the target's --dtype on GPU.")


def config_from_namespace(ns: argparse.Namespace) -> SSDConfig:
    cfg = SSDConfig(
        fanout_budget=getattr(ns, "ssd_fanout_budget", None),
        fanout=getattr(ns, "ssd_fanout", None),
        backup=getattr(ns, "ssd_backup", "adaptive"),
        backup_batch_threshold=getattr(ns, "ssd_backup_batch_threshold", 8),
        draft_device=getattr(ns, "ssd_draft_device", None),
        draft_endpoint=getattr(ns, "ssd_draft_endpoint", None),
        allow_remote_draft=bool(getattr(ns, "ssd_allow_remote_draft", False)),
        draft_timeout=getattr(ns, "ssd_draft_timeout_ms", 10000.0) / 1000.0,
        draft_start_timeout=getattr(ns, "ssd_draft_start_timeout", 600.0),
        draft_threads=getattr(ns, "ssd_draft_threads", None),
        draft_cpus=getattr(ns, "ssd_draft_cpus", "auto"),
        draft_kv_tokens=getattr(ns, "ssd_draft_kv_tokens", 65536),
        draft_window=getattr(ns, "ssd_draft_window", 0),
        draft_dtype=getattr(ns, "ssd_draft_dtype", None),
        saguaro_c=getattr(ns, "ssd_saguaro_c", 1.0),
        draft_engine=getattr(ns, "ssd_draft_engine", "hf"),
        curve_keys=getattr(ns, "ssd_curve_keys", None),
        mode=getattr(ns, "ssd_mode", "auto"),
    )
    return cfg


def validate(cfg: SSDConfig, *, k: Optional[int], draft_model_path: Optional[str],
             target_device: str) -> None:
    """Cross-flag checks that argparse cannot do. Raises SSDConfigError."""
    if not draft_model_path:
        raise SSDConfigError(
            "--speculative-draft-model-path is required with --speculative-algorithm SSD"
        )
    if not os.path.exists(draft_model_path):
        raise _flag_error("--speculative-draft-model-path", draft_model_path,
                          "no such directory (SSD loads the draft from a local path)")
    if k is not None and not (1 <= k <= MAX_K):
        raise _flag_error("--speculative-num-steps", k, f"SSD needs K in [1, {MAX_K}]")
    kk = k if k is not None else DEFAULT_K
    if cfg.backup not in BACKUP_POLICIES:
        raise _flag_error("--ssd-backup", cfg.backup, f"must be one of {', '.join(BACKUP_POLICIES)}")
    if cfg.fanout is not None and len(cfg.fanout) != kk + 1:
        raise _flag_error("--ssd-fanout", ",".join(map(str, cfg.fanout)),
                          f"needs K+1 = {kk + 1} entries (K = --speculative-num-steps = {kk})")
    if cfg.mode not in ROUND_MODES:
        raise _flag_error("--ssd-mode", cfg.mode, f"must be one of {', '.join(ROUND_MODES)}")
    if cfg.draft_engine not in ("hf", "sglang"):
        raise _flag_error("--ssd-draft-engine", cfg.draft_engine, "must be hf or sglang")
    if cfg.draft_dtype is not None and cfg.draft_dtype not in ("float32", "float16", "bfloat16", "int8"):
        raise _flag_error("--ssd-draft-dtype", cfg.draft_dtype, "must be float32, float16, bfloat16 or int8")
    if cfg.draft_dtype == "int8":
        from sglang_ssd.kernels import cpu_int8

        if cfg.draft_engine != "hf":
            raise _flag_error("--ssd-draft-dtype", "int8", "needs --ssd-draft-engine hf (the default)")
        if (cfg.draft_device or target_device).startswith("cuda"):
            raise _flag_error("--ssd-draft-dtype", "int8", "is a CPU draft's dtype (dynamic int8 linear layers)")
        if cpu_int8.unavailable():
            raise _flag_error("--ssd-draft-dtype", "int8", cpu_int8.unavailable())
    if cfg.draft_device is not None and cfg.draft_device.startswith("cuda") and target_device == "cpu":
        import torch

        if not torch.cuda.is_available():
            raise _flag_error("--ssd-draft-device", cfg.draft_device, "CUDA is not available here")
    ep = cfg.draft_endpoint
    if cfg.draft_cpus not in ("auto", "off"):
        from sglang_ssd.cpu_cores import parse_cpu_list, server_cores, split_cores

        if ep is not None or (cfg.draft_device or target_device).startswith("cuda"):
            raise _flag_error("--ssd-draft-cpus", cfg.draft_cpus,
                              "pins a CPU draft process this server spawns (not a GPU draft or "
                              "--ssd-draft-endpoint)")
        try:
            split_cores(server_cores(), 1, parse_cpu_list(cfg.draft_cpus))
        except ValueError as e:
            raise SSDConfigError(str(e)) from None
    if cfg.curve_keys is not None:
        if ep is None:
            raise _flag_error("--ssd-curve-keys", cfg.curve_keys,
                              "only applies with --ssd-draft-endpoint (a draft server started apart)")
        from sglang_ssd.curve import CurveKeyError, check_dir

        try:
            check_dir(cfg.curve_keys, "--ssd-curve-keys", "client")
        except CurveKeyError as e:
            raise SSDConfigError(str(e)) from None
    if ep is not None and ep.startswith("tcp://") and not cfg.allow_remote_draft:
        host = ep[len("tcp://"):].rsplit(":", 1)[0].strip("[]")
        if host != "localhost":
            try:
                loop = ipaddress.ip_address(host).is_loopback
            except ValueError:
                loop = False
            if not loop:
                raise _flag_error("--ssd-draft-endpoint", ep,
                                  "not a loopback address; pass --ssd-allow-remote-draft to opt in")


BF16_MIN_PARAMS = 100_000_000  # below this a CPU draft step is not memory-bound: float32 is as fast


def cpu_has_native_bf16() -> bool:
    """Whether this CPU multiplies bfloat16 natively (AVX512-BF16 or AMX-BF16, not limited away
    by ONEDNN_MAX_CPU_ISA: kernels/cpu_caps.py)."""
    from sglang_ssd.kernels import cpu_caps

    return cpu_caps.caps().native_bf16


def cpu_int8_available() -> bool:
    from sglang_ssd.kernels import cpu_int8

    return not cpu_int8.unavailable()


def count_params(model_path: str) -> Optional[int]:
    """Parameters in a model directory's safetensors files (read from their headers), or None."""
    import json
    import struct

    total, found = 0, False
    for name in sorted(os.listdir(model_path)) if os.path.isdir(model_path) else []:
        if not name.endswith(".safetensors"):
            continue
        found = True
        with open(os.path.join(model_path, name), "rb") as f:
            (n,) = struct.unpack("<Q", f.read(8))
            header = json.loads(f.read(n))
        for key, t in header.items():
            if key != "__metadata__":
                count = 1
                for d in t["shape"]:
                    count *= int(d)
                total += count
    return total if found else None


def choose_draft_dtype(user: Optional[str], device: str, target_dtype: str, model_path: str,
                       engine: str = "hf") -> str:
    """The draft's dtype: the user's; on a CPU, for a draft large enough for its steps to be
    memory-bound, int8 (the hf engine: a quarter of float32's bytes; Qwen2.5-Coder-0.5B's steps
    2.3-2.8x faster than float32 on an avx512_bf16 EPYC, 2.9-3.3x under emulated AVX2, agreement 0.979 vs
    0.990, bench/draft_precision.py), else bfloat16 where the CPU has it natively, else float32;
    on a GPU the target's dtype. Exactness never depends on it: the target verifies whatever is
    drafted."""
    if user:
        return user
    if device == "cpu":
        n = count_params(model_path)
        big = n is not None and n >= BF16_MIN_PARAMS
        if big and engine == "hf" and cpu_int8_available():
            return "int8"
        return "bfloat16" if big and cpu_has_native_bf16() else "float32"
    return target_dtype if target_dtype in ("float16", "bfloat16", "float32") else "bfloat16"


def choose_depth(server_args, k_max: int, cfg: SSDConfig) -> tuple[int, bool]:
    """(K of the first round, whether K is automatic). K is the user's when they gave
    --speculative-num-steps (or an explicit --ssd-fanout, which fixes K+1 positions); otherwise it
    starts at DEFAULT_K and the worker tunes it within [1, k_max] (auto_k.py)."""
    raw = getattr(server_args, "_raw_input", None)
    if raw is None:  # not resolved by SGLang's pipeline: nothing says K was left open
        return k_max, False
    user_k = raw.get("speculative_num_steps")
    if user_k is not None:
        return int(user_k), False
    if cfg.fanout is not None:
        return len(cfg.fanout) - 1, False
    return min(DEFAULT_K, k_max), True


def get_config(server_args) -> SSDConfig:
    """The SSDConfig riding on a ServerArgs record (defaults when launched without our parser)."""
    cfg = getattr(server_args, "_ssd_config", None)
    if cfg is None:
        return SSDConfig()
    if isinstance(cfg, dict):
        return SSDConfig.from_dict(cfg)
    return cfg
