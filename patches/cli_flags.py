"""Patch: SSD's `--ssd-...` flags on SGLang's own command line.

Changes `ServerArgs.add_cli_args` (AFTER: adds the SSD argument group, so `--help` lists it) and
`ServerArgs.from_cli_args` (AFTER: parses the SSD values into an SSDConfig, validates them with
the speculative flags before any model loads, exits non-zero naming the bad flag and value, and
attaches the config to the record as `_ssd_config`, which ServerArgs pickles to every process).
sglang/srt/server_args.py, sglang 0.5.23. Why: a plugin has no other way to add CLI flags.
Not CPU-only.
"""

from __future__ import annotations

import sys

from sglang_ssd import config as ssd_config

ADD = "sglang.srt.server_args.ServerArgs.add_cli_args"
FROM = "sglang.srt.server_args.ServerArgs.from_cli_args"


def _after_add(result, parser):
    ssd_config.add_cli_args(parser)
    return result


def _after_from(server_args, cls, args):
    cfg = ssd_config.config_from_namespace(args)
    algo = getattr(args, "speculative_algorithm", None)
    if algo is not None and str(algo).upper() == "SSD":
        try:
            ssd_config.validate(
                cfg,
                k=getattr(args, "speculative_num_steps", None),
                draft_model_path=getattr(args, "speculative_draft_model_path", None),
                target_device=str(getattr(args, "device", None) or "cuda"),
            )
        except ssd_config.SSDConfigError as e:
            print(f"sglang-ssd: error: {e}", file=sys.stderr)
            sys.exit(2)
    server_args._ssd_config = cfg.to_dict()
    return server_args


def apply() -> None:
    from sglang.srt.plugins.hook_registry import HookRegistry, HookType

    HookRegistry.register(ADD, _after_add, HookType.AFTER)
    HookRegistry.register(FROM, _after_from, HookType.AFTER)
