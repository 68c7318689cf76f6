"""Every benchmark in one run, each a ratio against a baseline measured in the same run; a summary at the end.

usage: .venv/bin/python benchmarks/run_all.py [name ...]   (names: activations, alpha_sweep, collect_once, generation, threads, busy_study)
"""

from __future__ import annotations

import importlib
import os
import sys
import time
from pathlib import Path

sys.path[:0] = [str(Path(__file__).resolve().parents[1]), str(Path(__file__).resolve().parent)]

from training.threads import configure  # noqa: E402

configure()  # as the CLI does, before torch is imported (the benchmarks then choose their own thread counts)

BENCHMARKS = ("activations", "alpha_sweep", "collect_once", "generation", "threads", "busy_study")


def main(names: list[str] | None = None) -> dict[str, float]:
    """Run the named benchmarks (all by default), print each one's output, then every ratio in one table.

    Example:
        >>> ratios = main(["alpha_sweep"])
    """
    names = names or list(BENCHMARKS)
    unknown = sorted(set(names) - set(BENCHMARKS))
    if unknown:
        raise SystemExit(f"unknown benchmark(s) {unknown}; valid: {list(BENCHMARKS)}")
    ratios: dict[str, float] = {}
    for name in names:
        print(f"== {name}", flush=True)
        start = time.perf_counter()
        ratios.update(importlib.import_module(f"bench_{name}").main())
        print(f"   ({time.perf_counter() - start:.0f} s)", flush=True)
    print(f"\nall ratios (load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores while measuring):")
    width = max(map(len, ratios))
    for key, value in ratios.items():
        print(f"  {key:{width}s}  {value:6.2f}")
    return ratios


if __name__ == "__main__":
    main(sys.argv[1:])
