"""CPU-only changes to SGLang 0.5.23, applied in every SGLang process when SGLANG_SSD_CPU=1.

sglang_ssd.plugin.register() calls :func:`apply` when the environment variable SGLANG_SSD_CPU is
"1" (sglang_ssd.cpu_serve sets it); SGLang's HookRegistry.apply_hooks() then patches after all
plugins ran. Nothing here is needed, or applied, on GPU.

Changed SGLang functions (version 0.5.23):
- ``sglang.srt.layers.attention.torch_native_backend.TorchNativeAttnBackend.forward_extend``
  (AROUND, sglang_ssd.patches.torch_verify_attention): adds ForwardMode.TARGET_VERIFY (tree or
  chain mask over prefix + verify tokens) so speculative verification runs on CPU with the
  torch_native backend; other modes call the original.
- ``sglang.srt.speculative.draft_utils.DraftBackendFactory._create_backend`` (AROUND,
  sglang_ssd.patches.torch_draft_attention): torch_native draft-decode (multi-step) and
  draft-extend backends, so EAGLE-family workers (STANDALONE) build their draft on CPU.
- ``UnquantizedLinearMethod.process_weights_after_loading`` / ``.apply`` and
  ``LogitsProcessor._compute_lm_head`` (sglang_ssd.patches.cpu_packed_linear): linear layers of
  two rows or more (verify, prefill) through oneDNN's prepacked weights, the cost of one row.

Not a hook but part of the CPU setup: :func:`standin_dir` is the directory holding the
pure-torch ``sgl_kernel`` stand-in (patches/cpu_standin/sgl_kernel), which must be first on
PYTHONPATH before SGLang is imported (sglang_ssd.cpu_serve arranges it).
"""

from __future__ import annotations

import os


def standin_dir() -> str:
    """Absolute path of patches/cpu_standin (the parent directory of the ``sgl_kernel`` stand-in)."""
    return os.path.join(os.path.dirname(os.path.abspath(__file__)), "cpu_standin")


def apply() -> None:
    """Register the CPU hooks with SGLang's HookRegistry (idempotent)."""
    from sglang_ssd.patches import cpu_packed_linear, torch_draft_attention, torch_verify_attention

    torch_verify_attention.apply()
    torch_draft_attention.apply()
    cpu_packed_linear.apply()
