"""The project's own float32 linear kernel for a few rows on AVX2+FMA (cpu_rowdot.cpp).

Why: on an AVX2-only CPU oneDNN lays a packed float32 weight out in 64-wide blocks (AB16b64a, the
same as on AVX-512, where 32 registers hold several rows of 4 accumulators each). With AVX2's 16
registers a 64-wide block leaves room for one row of accumulators, so a verify of 5 rows costs ~2x
one row there (bench/cpu_gemm.py), where reading the weights once should cost the same. This
kernel works on the weight as torch stores it (no second copy) with register tiles sized for
AVX2, on torch's thread count (the weight's rows split between the threads). It is one candidate
of the measured kernel choice (cpu_linear.py), used only where it wins.

Built on first use with g++ into the kernel cache (~/.cache/sglang_ssd/kernels, or
$SGLANG_SSD_KERNEL_CACHE) and loaded with ctypes, which releases the GIL during the call. Where
there is no compiler or no AVX2+FMA, :func:`available` is False and says why in :data:`reason`.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import logging
import os
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Optional

import torch
import torch.nn.functional as F

from sglang_ssd.kernels import cpu_caps

logger = logging.getLogger(__name__)

_SRC = Path(__file__).with_name("cpu_rowdot.cpp")
_FLAGS = ["-O3", "-mavx2", "-mfma", "-fopenmp", "-shared", "-fPIC"]
_lib = None
reason = ""  # why the kernel is unavailable ("" when it is, or before the first try)


def cache_dir() -> Path:
    return Path(os.environ.get("SGLANG_SSD_KERNEL_CACHE", Path.home() / ".cache" / "sglang_ssd" / "kernels"))


@functools.lru_cache(maxsize=1)
def build_tag() -> str:
    """The kernel's source and flags, hashed: names its build, and keys the kernel choices measured
    with it (cpu_linear.py), so a changed kernel is measured again."""
    return hashlib.sha256(_SRC.read_bytes() + " ".join(_FLAGS).encode()).hexdigest()[:16]


def _build() -> Optional[ctypes.CDLL]:
    global reason
    if not cpu_caps.caps().avx2_fma:
        reason = "the CPU lacks avx2/fma"
        return None
    cxx = os.environ.get("CXX") or shutil.which("g++") or shutil.which("c++")
    if cxx is None:
        reason = "no C++ compiler (g++) on PATH"
        return None
    out = cache_dir() / f"rowdot-{build_tag()}.so"
    if not out.exists():
        out.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(suffix=".so", dir=out.parent)
        os.close(fd)
        try:
            r = subprocess.run([cxx, *_FLAGS, "-o", tmp, str(_SRC)], capture_output=True, text=True, timeout=120)
            if r.returncode != 0:  # a compiler without OpenMP: the same kernel on one thread
                serial = [f for f in _FLAGS if f != "-fopenmp"]
                r = subprocess.run([cxx, *serial, "-o", tmp, str(_SRC)], capture_output=True, text=True, timeout=120)
            if r.returncode != 0:
                reason = f"{cxx} failed: {r.stderr.strip()[-300:]}"
                return None
            os.replace(tmp, out)  # atomic: concurrent builders each write their own file
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
    lib = ctypes.CDLL(str(out))
    lib.rowdot_f32_threads.argtypes = [ctypes.c_void_p] * 3 + [ctypes.c_int] * 4
    lib.rowdot_f32_threads.restype = None
    return lib


def available() -> bool:
    """The kernel is built (on first call) and usable on this CPU."""
    global _lib, reason
    if _lib is None and not reason:
        try:
            _lib = _build()
        except (OSError, subprocess.SubprocessError) as e:
            reason = f"build failed: {e}"
        if _lib is None:
            logger.info("sglang-ssd: the AVX2 rowdot linear kernel is not used: %s", reason)
    return _lib is not None


def supports(x: torch.Tensor, weight: torch.Tensor) -> bool:
    return (x.dtype == weight.dtype == torch.float32 and x.device.type == weight.device.type == "cpu"
            and weight.dim() == 2 and weight.is_contiguous() and not x.requires_grad)


def linear(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor] = None) -> torch.Tensor:
    """F.linear's contract (float32 CPU tensors, contiguous weight [N, K]) by the AVX2 kernel."""
    if not available():
        raise RuntimeError(f"the rowdot kernel is unavailable: {reason}")
    k = x.shape[-1]
    x2 = x.reshape(-1, k).contiguous()
    n = weight.shape[0]
    out = torch.empty(x2.shape[0], n, dtype=torch.float32)
    if x2.shape[0]:
        _lib.rowdot_f32_threads(x2.data_ptr(), weight.data_ptr(), out.data_ptr(), x2.shape[0], n, k,
                                torch.get_num_threads())
    if bias is not None:
        out += bias
    return out.view(*x.shape[:-1], n)


def linear_ref(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor] = None) -> torch.Tensor:
    return F.linear(x, weight, bias)
