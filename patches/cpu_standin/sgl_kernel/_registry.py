"""Registers pure-torch kernels under ``torch.ops.sgl_kernel`` (torch.library).

SGLang 0.5.23's CPU engine calls some kernels through ``torch.ops.sgl_kernel.<name>`` and
others through the Python wrappers of the ``sgl_kernel`` package, which forward to the same
torch ops. The stand-in keeps that shape: each op is defined once per process here, and the
wrappers in this package call ``torch.ops.sgl_kernel.<name>`` like the real wheel does.

The stand-in can be imported under two names (``sgl_kernel`` at run time and
``sglang_ssd.patches.cpu_standin.sgl_kernel`` in tests), so definition is idempotent.
"""

from __future__ import annotations

import functools
import os
from typing import Callable

import torch

_LIB = torch.library.Library("sgl_kernel", "FRAGMENT")


def has_op(name: str) -> bool:
    """True when ``torch.ops.sgl_kernel.<name>`` already exists in this process."""
    try:
        getattr(torch.ops.sgl_kernel, name)
        return True
    except (AttributeError, RuntimeError):
        return False


def define(schema: str, fn: Callable) -> None:
    """Define ``sgl_kernel::<schema>`` with ``fn`` as its CPU kernel, unless already defined."""
    name = schema.split("(", 1)[0]
    if has_op(name):
        return
    _LIB.define(schema)
    _LIB.impl(name, _traced(name, fn) if os.environ.get(TRACE_ENV) else fn, "CPU")


TRACE_ENV = "SGLANG_SSD_STANDIN_TRACE"


def _traced(name: str, fn: Callable) -> Callable:
    """Debug aid: with $SGLANG_SSD_STANDIN_TRACE=<file>, append "<pid> <op>" on each op's first call
    in a process, to see which stand-in ops a server run reached."""
    seen = []

    @functools.wraps(fn)
    def wrapper(*args):
        if not seen:
            seen.append(True)
            with open(os.environ[TRACE_ENV], "a") as f:
                f.write(f"{os.getpid()} {name}\n")
        return fn(*args)

    return wrapper
