"""Run a stock SGLang 0.5.23 server on a CPU-only machine: ``python -m sglang_ssd.cpu_serve <launch_server args>``.

What it does, and why (CPU-only):
- ``SGLANG_USE_CPU_ENGINE=1``: SGLang picks its CPU platform only with this (``--device cpu`` alone
  is not enough).
- ``SGLANG_SSD_CPU=1``: our plugin then applies sglang_ssd.patches.cpu_engine in every SGLang
  process (torch attention for TARGET_VERIFY, ...).
- Puts patches/cpu_standin first on PYTHONPATH (inherited by the spawned scheduler/detokenizer
  processes) and on sys.path: ``import sgl_kernel`` then finds our pure-torch stand-in instead of
  the CUDA-only wheel.
- Adds CPU defaults the user did not pass: ``--device cpu``, ``--attention-backend torch_native``
  (the default CPU backend, intel_amx, needs AMX kernels the stand-in does not provide),
  ``--disable-cuda-graph``, ``--sampling-backend pytorch`` (flashinfer sampling is CUDA-only).
- Then runs ``sglang.launch_server`` as ``__main__`` in this process, so load_plugins() runs here.

dtype is left to the user: SGLang's CPU engine picks a 16-bit dtype even for float32 checkpoints,
so pass ``--dtype float32`` when outputs must match Hugging Face float32 greedy decoding.
"""

from __future__ import annotations

import os
import runpy
import sys

from sglang_ssd.patches.cpu_engine import standin_dir

# flag -> value inserted when the user passed no such flag (None: a bare switch)
CPU_DEFAULTS: dict[str, str | None] = {
    "--device": "cpu",
    "--attention-backend": "torch_native",
    "--disable-cuda-graph": None,
    "--sampling-backend": "pytorch",
}


def cpu_env(base_env: dict | None = None) -> dict:
    """Environment for spawning a CPU SGLang server (or any SGLang process) as a subprocess."""
    env = dict(os.environ if base_env is None else base_env)
    env["SGLANG_USE_CPU_ENGINE"] = "1"
    env["SGLANG_SSD_CPU"] = "1"
    parts = [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p and p != standin_dir()]
    env["PYTHONPATH"] = os.pathsep.join([standin_dir(), *parts])
    return env


def with_cpu_defaults(argv: list[str]) -> list[str]:
    """argv plus each CPU default whose flag is absent (``--flag value`` and ``--flag=value`` count)."""
    present = {a.split("=", 1)[0] for a in argv if a.startswith("--")}
    out = list(argv)
    for flag, value in CPU_DEFAULTS.items():
        if flag not in present:
            out += [flag] if value is None else [flag, value]
    return out


def _use_standin_in_process() -> None:
    real = sys.modules.get("sgl_kernel")
    if real is not None and not os.path.dirname(real.__file__ or "").startswith(standin_dir()):
        raise RuntimeError(
            "the CUDA sgl_kernel was imported before sglang_ssd.cpu_serve could put the CPU "
            f"stand-in first ({real.__file__}); run `python -m sglang_ssd.cpu_serve` directly"
        )
    if standin_dir() not in sys.path:
        sys.path.insert(0, standin_dir())


def main(argv: list[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    os.environ.update(cpu_env())
    _use_standin_in_process()
    sys.argv = ["sglang.launch_server", *with_cpu_defaults(argv)]
    runpy.run_module("sglang.launch_server", run_name="__main__", alter_sys=True)


if __name__ == "__main__":
    main()
