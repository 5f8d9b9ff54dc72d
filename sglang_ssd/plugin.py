"""Entry point run by SGLang's load_plugins() in every SGLang process (group sglang.srt.plugins).

Registers the `SSD` speculative algorithm and SSD's patches. CPU stand-ins are applied only when
sglang_ssd.cpu_serve asked for them (SGLANG_SSD_CPU=1); on a GPU machine none of them load.
"""

from __future__ import annotations

import os

_done = False


def register() -> None:
    global _done
    if _done:
        return
    _done = True
    if os.environ.get("SGLANG_SSD_CPU") == "1":
        from sglang_ssd.patches import cpu_engine

        cpu_engine.apply()
    from sglang_ssd import spec_algo
    from sglang_ssd.patches import (cli_flags, idle_release, request_validation, seeded_first_token,
                                    server_stats)

    cli_flags.apply()
    server_stats.apply()
    request_validation.apply()
    idle_release.apply()
    seeded_first_token.apply()
    spec_algo.register()
