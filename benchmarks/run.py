"""`make bench`: every benchmark in one run, printed as lines (ratios are measured within this run).

Usage: python -m benchmarks.run [--quick] [render prior generate shapes view ray sd mesh spz]  (sd: `make bench-sd`; sd,
mesh (`python -m benchmarks.bench_mesh --truths` for the whole table) and spz (.spz file sizes) are not default)
"""

from __future__ import annotations

import importlib
import sys
import time

SUITES = ["render", "prior", "generate", "shapes", "view", "ray"]


def main(argv: list[str]) -> None:
    quick = "--quick" in argv
    names = [a for a in argv if not a.startswith("--")] or SUITES
    for name in names:
        module = importlib.import_module(f"benchmarks.bench_{name}")
        start = time.perf_counter()
        print(f"== {name}", flush=True)
        for line in module.run(quick=quick):
            print(line, flush=True)
        print(f"   ({time.perf_counter() - start:.1f} s)", flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
