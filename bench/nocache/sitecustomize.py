"""Benchmark-only: "our own synchronous SD" from the SSD server (bench/compare.py mode sync-sd).

Put this directory first on PYTHONPATH and set SGLANG_SSD_BENCH_NO_CACHE=1 in a server's environment
(bench/compare.py does both): every Python process of that server then imports this file at start,
and the draft process's Speculator never pre-drafts (no speculation cache), so every lookup misses
and the neural backup (`--ssd-backup neural`) drafts K tokens from the true context after each
verification, on the critical path, exactly like ordinary speculative decoding. Outputs stay exact
(verification is unchanged). Nothing happens without the variable.
"""

import os

if os.environ.get("SGLANG_SSD_BENCH_NO_CACHE") == "1":
    try:
        from sglang_ssd import speculator as _spec

        def _no_speculation(self) -> None:
            self.last_tree_s = 0.0

        _spec.Speculator.speculate = _no_speculation
    except Exception as e:  # never break the interpreter start
        import sys

        print(f"[bench nocache] patch failed: {e!r}", file=sys.stderr)
