"""CPU linear layers, each weight's kernel chosen by timing the candidates on this machine.

Why: which kernel multiplies a few rows fastest depends on the CPU, the dtype and the row count,
and guesses made on one CPU have failed on another. On a 2-core EPYC with avx512_bf16, float32,
Qwen2.5-1.5B's linear layers (bench/cpu_gemm.py): torch's F.linear (MKL) 303 ms for 1 row and 584
for 5; oneDNN's prepacked matmul 166 / 164 (it reads the weights once). On an AVX2-only EPYC the
same pack costs 400 / 831 (its 64-wide blocks suit AVX-512's 32 registers, not AVX2's 16), and a
bfloat16 pack cannot be made at all (oneDNN needs avx512bw/vl/dq or avx_ne_convert). So nothing
is assumed: for each weight shape and dtype the candidates this CPU can run are timed at 1, 2, 4,
8, 16, 32 and 64 rows, from memory as a forward meets them (ColdCaches), once per machine (the choice is cached per CPU model, ISA limits, torch
version, thread count and shape), and a weight gets one of two plans:

- ``keep``: the weight stays as it is; per row count the faster of torch's F.linear and the
  project's AVX2 kernel (cpu_rowdot, float32, on torch's threads);
- ``pack``: oneDNN's packed copy *replaces* the weight (the parameter keeps its shape over a
  one-element placeholder), every row count runs it. Memory is never doubled.

The plan with the lower mean log-time over the row counts wins. A layout the CPU cannot make is
never attempted (one log line says why); every dtype starts on every x86-64 CPU (at worst on
F.linear). ``SGLANG_SSD_CPU_LINEAR=torch|onednn|rowdot`` forces one path (``auto``, the default,
measures); ``SGLANG_SSD_CPU_PACKED_LINEAR=0`` is the old spelling of ``torch``.
"""

from __future__ import annotations

import json
import logging
import math
import os
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import torch
import torch.nn.functional as F

from sglang_ssd.kernels import cpu_caps, cpu_rowdot

logger = logging.getLogger(__name__)

ROWS = (1, 2, 4, 8, 16, 32, 64)  # row counts timed; a forward of r rows uses the plan of the next one up
PACK_ROWS = 16  # the batch size oneDNN's weight layout is asked for (its choice did not vary with it)
PATHS = ("torch", "rowdot", "onednn")
MEASURED = "cold"  # how plans are timed (in the cache key: plans timed otherwise are timed again)
_DTYPES = {torch.float32: "float32", torch.bfloat16: "bfloat16", torch.float16: "float16"}
_lock = threading.Lock()
_memo: dict = {}  # key -> Plan, this process
_logged: set = set()


def forced_path() -> str:
    v = os.environ.get("SGLANG_SSD_CPU_LINEAR", "auto").lower()
    if os.environ.get("SGLANG_SSD_CPU_PACKED_LINEAR", "1") == "0":
        v = "torch"
    if v not in ("auto",) + PATHS:
        raise ValueError(f"SGLANG_SSD_CPU_LINEAR={v!r}: must be auto, torch, rowdot or onednn")
    return v


def onednn_available() -> bool:
    return torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_reorder_linear_weight")


def pack_unsupported(dtype: torch.dtype) -> str:
    """Why oneDNN cannot pack this dtype here ("" when it can)."""
    if not onednn_available():
        return "torch was built without oneDNN"
    name = _DTYPES.get(dtype)
    if name is None:
        return f"{dtype} is not a dtype the packed linear takes"
    return cpu_caps.caps().pack_unsupported(name)


def eligible(weight) -> bool:
    """A plain dense 2-D CPU weight of a floating dtype this module handles."""
    return (isinstance(weight, torch.Tensor) and weight.dim() == 2 and weight.device.type == "cpu"
            and weight.dtype in _DTYPES and weight.layout == torch.strided and weight.numel() > 0)


@dataclass(frozen=True)
class Plan:
    """How one weight shape is multiplied: `kind` "keep" or "pack", the path per timed row count,
    and the timings (ms per call, per path and row count) it was chosen from."""

    kind: str
    paths: tuple  # one of PATHS per entry of ROWS
    times: dict  # path -> [ms per ROWS entry] (empty when forced)

    def path_for(self, rows: int) -> str:
        for r, p in zip(ROWS, self.paths):
            if rows <= r:
                return p
        return self.paths[-1]

    def to_json(self) -> dict:
        return {"kind": self.kind, "paths": list(self.paths), "times": self.times}

    @classmethod
    def from_json(cls, d: dict) -> "Plan":
        paths = tuple(d["paths"])
        if d["kind"] not in ("keep", "pack") or len(paths) != len(ROWS) or not set(paths) <= set(PATHS):
            raise ValueError("malformed plan")
        return cls(d["kind"], paths, {k: list(v) for k, v in d.get("times", {}).items()})


def choose(times: dict) -> Plan:
    """The plan from timings {path: [ms per ROWS entry]} (missing paths: unavailable here)."""
    keep = [min((times[p][i], p) for p in ("torch", "rowdot") if p in times) for i in range(len(ROWS))]
    kept = Plan("keep", tuple(p for _, p in keep), times)
    if "onednn" not in times:
        return kept
    log_keep = sum(math.log(max(t, 1e-6)) for t, _ in keep)
    log_pack = sum(math.log(max(t, 1e-6)) for t in times["onednn"])
    return Plan("pack", ("onednn",) * len(ROWS), times) if log_pack < log_keep else kept


def parse_cache_size(text: str) -> int:
    """sysfs cache sizes ('32768K', '2M', '512') in bytes; ValueError naming the text otherwise."""
    t = text.strip().upper().removesuffix("B")
    scale = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}.get(t[-1:], 1)
    try:
        return int(t[:-1] if scale > 1 else t) * scale
    except ValueError:
        raise ValueError(f"{text!r} is not a cache size") from None


def largest_cache_bytes(root: Path = Path("/sys/devices/system/cpu/cpu0/cache")) -> int:
    """The largest CPU cache (usually L3) in bytes, from sysfs; 32 MiB where it cannot be read."""
    best = 0
    for f in root.glob("index*/size"):
        try:
            best = max(best, parse_cache_size(f.read_text()))
        except (OSError, ValueError):
            continue
    return best or 32 << 20


class ColdCaches:
    """Reads a buffer twice the largest cache before each timed call, so a weight is timed the way
    a forward meets it: from memory. A model's layers (GBs) stream through the caches, but one
    weight timed over and over stays in L3 if it fits: the 1.5B's QKV (12.6 MB float32) and O (9.4
    MB) under a 32 MB L3 made one row look ~1.3x cheaper, relative to five, than a forward sees."""

    def __init__(self, nbytes: Optional[int] = None):
        n = nbytes if nbytes is not None else min(2 * largest_cache_bytes(), 512 << 20)
        self.buf = torch.ones(max(n // 4, 1), dtype=torch.float32)

    def __call__(self) -> None:
        self.buf.sum()


def _best_ms(fn, reps: int, before=None) -> float:
    fn()
    best = float("inf")
    for _ in range(reps):
        if before is not None:
            before()
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best * 1e3


def measure(weight: torch.Tensor, packed: Optional[torch.Tensor], paths, reps: int = 3) -> dict:
    """ms per call of each path at each of ROWS rows for this weight (x random, no bias), the
    caches emptied before each call (ColdCaches)."""
    g = torch.Generator().manual_seed(0)
    cold = ColdCaches()
    out = {p: [] for p in paths}
    for r in ROWS:
        x = torch.randn(r, weight.shape[1], generator=g).to(weight.dtype)
        for p in paths:
            out[p].append(round(_best_ms(lambda: _run(p, x, weight, packed, None), reps, cold), 4))
    return out


def _run(path: str, x2: torch.Tensor, weight, packed, bias):
    if path == "onednn":
        return torch.ops.mkldnn._linear_pointwise(x2, packed, bias, "none", [], "")
    if path == "rowdot":
        return cpu_rowdot.linear(x2, weight, bias)
    return F.linear(x2, weight, bias)


def _candidates(dtype: torch.dtype) -> list[str]:
    paths = ["torch"]
    if dtype == torch.float32 and cpu_rowdot.available():
        paths.append("rowdot")
    why = pack_unsupported(dtype)
    if not why:
        paths.append("onednn")
    else:
        _log_once(f"nopack-{dtype}", "sglang-ssd: %s linear layers do not use oneDNN packs: %s",
                  _DTYPES.get(dtype, dtype), why)
    return paths


def _log_once(key: str, msg: str, *args) -> None:
    if key not in _logged:
        _logged.add(key)
        logger.info(msg, *args)


def _cache_file() -> Path:
    return cpu_rowdot.cache_dir() / "linear_plans.json"


def _key(dtype: torch.dtype, shape) -> str:
    c = cpu_caps.caps()
    return "|".join([c.model, c.label, c.onednn_max_isa, c.aten_capability, os.environ.get("MKL_ENABLE_INSTRUCTIONS", ""),
                     f"torch{torch.__version__}", f"threads{torch.get_num_threads()}", _DTYPES[dtype],
                     f"{shape[0]}x{shape[1]}", f"rowdot{cpu_rowdot.build_tag() if 'rowdot' in _candidates(dtype) else 0}",
                     MEASURED])


def _load_cached(key: str) -> Optional[Plan]:
    try:
        return Plan.from_json(json.loads(_cache_file().read_text())[key])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _store(key: str, plan: Plan) -> None:
    f = _cache_file()
    try:
        f.parent.mkdir(parents=True, exist_ok=True)
        try:
            data = json.loads(f.read_text())
        except (OSError, ValueError):
            data = {}
        data[key] = plan.to_json()
        tmp = f.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps(data, indent=1, sort_keys=True))
        os.replace(tmp, f)
    except OSError as e:  # a read-only home: the choice is remade next time
        _log_once("cache-write", "sglang-ssd: cannot cache the linear kernel choice in %s: %s", f, e)


def plan_for(weight: torch.Tensor) -> Plan:
    """This weight shape's plan: forced, remembered, cached on disk, or measured now."""
    forced = forced_path()
    dtype = weight.dtype
    if forced != "auto":
        if forced == "onednn" and pack_unsupported(dtype):
            _candidates(dtype)  # logs why the pack cannot be made here
            forced = "torch"
        if forced == "rowdot" and "rowdot" not in _candidates(dtype):
            forced = "torch"
        return Plan("pack" if forced == "onednn" else "keep", (forced,) * len(ROWS), {})
    key = _key(dtype, weight.shape)
    with _lock:
        plan = _memo.get(key) or _load_cached(key)
        if plan is None:
            paths = _candidates(dtype)
            if paths == ["torch"]:  # nothing to choose from (recorded all the same)
                plan = Plan("keep", ("torch",) * len(ROWS), {"torch": []})
            else:
                packed = _pack(weight) if "onednn" in paths else None
                plan = choose(measure(weight, packed, paths))
                del packed
            _store(key, plan)
            logger.info("sglang-ssd: %s linear %dx%d: %s plan %s (ms at rows %s: %s)", _DTYPES[dtype],
                        weight.shape[0], weight.shape[1], plan.kind, "/".join(plan.paths), ROWS,
                        {p: t for p, t in plan.times.items()})
        _memo[key] = plan
    return plan


def _pack(weight: torch.Tensor) -> torch.Tensor:
    return torch.ops.mkldnn._reorder_linear_weight(weight.detach().contiguous(), PACK_ROWS)


class LinearKernel:
    """One weight's measured kernel. For a ``pack`` plan the parameter's data is replaced by a
    placeholder of the same shape (one NaN, expanded: a reader that bypasses the kernel gets NaN,
    not silently wrong numbers) once the copy is made (``release``); a
    weight given new data later (a weight update assigning ``param.data``) is packed again."""

    def __init__(self, weight: torch.Tensor, plan: Optional[Plan] = None):
        self.plan = plan or plan_for(weight)
        self.shape, self.dtype = tuple(weight.shape), weight.dtype
        self.packed = _pack(weight) if self.plan.kind == "pack" else None
        self._seen = (weight.data_ptr(), weight._version)

    def release(self, param: torch.Tensor) -> int:
        """Give the original weight's memory back (pack plans only); the bytes freed."""
        if self.packed is None or param.stride() == (0, 0):
            return 0
        freed = param.numel() * param.element_size()
        param.data = torch.full((1,), float("nan"), dtype=param.dtype).expand(*param.shape)  # misuse shows
        self._seen = (param.data_ptr(), param._version)
        return freed

    def _current(self, weight: torch.Tensor) -> None:
        seen = (weight.data_ptr(), weight._version)
        if seen != self._seen:  # new data: pack it (a placeholder cannot change in place)
            if self.packed is not None:
                self.packed = _pack(weight)
            self._seen = seen

    def __call__(self, x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor] = None) -> torch.Tensor:
        if x.device.type != "cpu":
            if self.packed is not None:
                raise RuntimeError(f"linear weight {self.shape} lives in a CPU pack; got input on {x.device}")
            return F.linear(x, weight, bias)
        self._current(weight)
        rows = x.numel() // max(x.shape[-1], 1)
        path = "onednn" if self.packed is not None else self.plan.path_for(rows)  # keep plans: torch/rowdot
        if path == "rowdot" and not cpu_rowdot.supports(x, weight):
            path = "torch"
        x2 = x.reshape(rows, x.shape[-1])
        if path == "onednn":
            dt = self.dtype
            b = bias.to(dt) if bias is not None and bias.dtype != dt else bias
            out = _run(path, x2.to(dt).contiguous(), None, self.packed, b).to(x.dtype)
        else:
            out = _run(path, x2, weight, None, bias)
        return out.view(*x.shape[:-1], out.shape[-1])


def linear_ref(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor]) -> torch.Tensor:
    """The contract every path is tested against."""
    return F.linear(x, weight, bias)


def shared_storages(module: torch.nn.Module) -> set:
    """Data pointers of tensors more than one parameter holds (tied weights are never released)."""
    seen, shared = set(), set()
    for _, p in module.named_parameters(remove_duplicate=False):
        ptr = p.data_ptr()
        (shared if ptr in seen else seen).add(ptr)
    return shared


def route_linears(model: torch.nn.Module) -> int:
    """Route every torch.nn.Linear of `model` (a Hugging Face draft on CPU) through its measured
    kernel, releasing weights that a pack replaces; how many were routed."""
    shared = shared_storages(model)
    n = 0
    for mod in model.modules():
        if type(mod) is torch.nn.Linear and eligible(mod.weight):
            tied = mod.weight.data_ptr() in shared
            kernel = LinearKernel(mod.weight, keep_plan(plan_for(mod.weight)) if tied else None)
            kernel.release(mod.weight)
            mod.forward = _Forward(mod, kernel)
            n += 1
    return n


def keep_plan(plan: Plan) -> Plan:
    """A plan that keeps the weight (for weights another parameter shares)."""
    if plan.kind == "keep":
        return plan
    return choose({p: t for p, t in plan.times.items() if p != "onednn"}) if plan.times else \
        Plan("keep", ("torch",) * len(ROWS), {})


class _Forward:
    def __init__(self, mod: torch.nn.Linear, kernel: LinearKernel):
        self.mod, self.kernel = mod, kernel

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return self.kernel(x, self.mod.weight, self.mod.bias)

