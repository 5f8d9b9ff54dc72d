"""What this CPU (and the ISA limits set in the environment) lets the linear kernels do.

One probe, read by the kernel choice (cpu_linear.py), the draft's dtype choice (config.py) and the
benchmarks' labels. It reads the CPU's flags from /proc/cpuinfo and the limits a user (or an
emulation of an older CPU) sets with ``ONEDNN_MAX_CPU_ISA`` and ``ATEN_CPU_CAPABILITY``, so that
an AVX-512 machine told to act as AVX2 makes the same choices an AVX2 machine makes. Tests force
either class with :func:`forced`.
"""

from __future__ import annotations

import contextlib
import functools
import os
import platform
from dataclasses import dataclass

# oneDNN ISAs from weakest to strongest (ONEDNN_MAX_CPU_ISA values, lower-cased)
_ONEDNN_ORDER = ("sse41", "avx", "avx2", "avx2_vnni", "avx2_vnni_2", "avx512_core", "avx512_core_vnni",
                 "avx512_core_bf16", "avx10_1_512", "avx512_core_fp16", "avx10_1_512_amx", "avx512_core_amx",
                 "avx10_1_512_amx_fp16", "avx512_core_amx_fp16", "all", "default")


@dataclass(frozen=True)
class CpuCaps:
    model: str  # the CPU's model name (part of the kernel-choice cache key)
    flags: frozenset
    onednn_max_isa: str  # "" when not limited
    aten_capability: str  # "" when not limited

    def has(self, *flags: str) -> bool:
        return all(f in self.flags for f in flags)

    @property
    def avx512_allowed(self) -> bool:
        """oneDNN may use AVX-512 (the CPU has it and ONEDNN_MAX_CPU_ISA does not forbid it)."""
        isa = self.onednn_max_isa
        if isa and isa in _ONEDNN_ORDER and _ONEDNN_ORDER.index(isa) < _ONEDNN_ORDER.index("avx512_core"):
            return False
        return self.has("avx512f", "avx512bw", "avx512vl", "avx512dq")

    def pack_unsupported(self, dtype_name: str) -> str:
        """Why oneDNN cannot make a packed weight of this dtype here ("" when it can). bfloat16
        needs avx512bw+vl+dq or avx_ne_convert (PyTorch's mkldnn_bf16_device_check); float16 the
        same with avx512_fp16 / amx_fp16, or avx_ne_convert."""
        if dtype_name == "float32":
            return ""
        ne_convert = self.has("avx_ne_convert") and not (self.onednn_max_isa and self.onednn_max_isa.startswith("avx2")
                                                         and self.onednn_max_isa != "avx2_vnni_2")
        if dtype_name == "bfloat16":
            if self.avx512_allowed or ne_convert:
                return ""
            return "bfloat16 packs need avx512bw/avx512vl/avx512dq or avx_ne_convert"
        if dtype_name == "float16":
            if (self.avx512_allowed and self.has("avx512_fp16")) or self.has("amx_fp16") or ne_convert:
                return ""
            return "float16 packs need avx512_fp16, amx_fp16 or avx_ne_convert"
        return f"{dtype_name} has no oneDNN packed linear here"

    @property
    def native_bf16(self) -> bool:
        """The CPU multiplies bfloat16 natively (AVX512-BF16 or AMX-BF16, not limited away)."""
        return (self.avx512_allowed and self.has("avx512_bf16")) or self.has("amx_bf16")

    @property
    def avx2_fma(self) -> bool:
        """What the project's own AVX2 kernel (cpu_rowdot) needs."""
        return self.has("avx2", "fma") and platform.machine() in ("x86_64", "AMD64")

    @property
    def label(self) -> str:
        """The class benchmarks are labelled with: avx512_bf16, avx512bw or avx2 (and "emulated"
        when an environment limit, not the CPU, decides it)."""
        raw = "avx512_bf16" if self.has("avx512_bf16") else "avx512bw" if self.has("avx512bw") else \
            "avx2" if self.has("avx2") else "pre-avx2"
        eff = "avx512_bf16" if self.native_bf16 else "avx512bw" if self.avx512_allowed else \
            "avx2" if self.has("avx2") else "pre-avx2"
        return eff if eff == raw else f"{eff} (emulated on {raw})"


def _read_cpuinfo() -> tuple[str, frozenset]:
    model, flags = platform.processor() or platform.machine(), set()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                key, _, value = line.partition(":")
                key = key.strip()
                if key == "model name" and model in ("", platform.machine(), platform.processor()):
                    model = value.strip()
                elif key in ("flags", "Features") and not flags:
                    flags = set(value.split())
    except OSError:
        pass
    return model, frozenset(flags)


@functools.lru_cache(maxsize=1)
def _probe() -> CpuCaps:
    model, flags = _read_cpuinfo()
    return CpuCaps(model=model, flags=flags,
                   onednn_max_isa=os.environ.get("ONEDNN_MAX_CPU_ISA", os.environ.get("DNNL_MAX_CPU_ISA", "")).lower(),
                   aten_capability=os.environ.get("ATEN_CPU_CAPABILITY", "").lower())


_FORCED: list = []


def caps() -> CpuCaps:
    """This process's CPU capabilities (a forced set, in tests, first)."""
    return _FORCED[-1] if _FORCED else _probe()


@contextlib.contextmanager
def forced(flags, model: str = "forced CPU", onednn_max_isa: str = ""):
    """Act as a CPU with these flags (tests of either class on any machine)."""
    _FORCED.append(CpuCaps(model=model, flags=frozenset(flags), onednn_max_isa=onednn_max_isa, aten_capability=""))
    try:
        yield _FORCED[-1]
    finally:
        _FORCED.pop()


AVX2_FLAGS = frozenset({"sse4_2", "avx", "avx2", "fma", "f16c"})
AVX512_BF16_FLAGS = AVX2_FLAGS | {"avx512f", "avx512bw", "avx512vl", "avx512dq", "avx512_bf16"}
