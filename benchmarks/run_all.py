"""`make bench`: run every benchmark script, each writing its JSON into the output folder.

Benchmarks measure; they never assert speed in tests. Each script runs in its own process so one
benchmark's memory and threads cannot disturb the next.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).parent
SCRIPTS = [
    "bench_study",
    "bench_kernels",
    "bench_expand",
    "bench_decode",
    "bench_latency",
    "bench_methods",
    "bench_sweep",
    "bench_large",
]
# Speed benchmarks run with PyTorch's THP_MEM_ALLOC_ENABLE=1: every tensor of 2 MB and more (dense weights,
# sparse values, activations) on transparent huge pages.  It applies to dense and sparse alike, and removes
# the ~10 % speed differences between two copies of one weight that 4 KB pages leave (TLB misses, placement).
# Memory benchmarks keep the default, whose RSS is what a user sees.
HUGE_PAGES = {"bench_kernels", "bench_decode", "bench_latency"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, default=Path("bench-results"))
    parser.add_argument("--only", nargs="*", default=None, help="Subset of: " + ", ".join(SCRIPTS))
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    failed = []
    for name in args.only or SCRIPTS:
        script = HERE / f"{name}.py"
        if not script.exists():
            print(f"== {name}: missing, skipped")
            continue
        print(f"== {name}", flush=True)
        start = time.perf_counter()
        env = dict(os.environ)
        if name in HUGE_PAGES:
            env.setdefault("THP_MEM_ALLOC_ENABLE", "1")
        code = subprocess.call(
            [sys.executable, str(script), "--out", str(args.out / f"{name}.json")], cwd=HERE.parent, env=env
        )
        print(f"== {name}: exit {code} after {time.perf_counter() - start:.0f} s", flush=True)
        if code:
            failed.append(name)
    if failed:
        sys.exit(f"failed: {', '.join(failed)}")


if __name__ == "__main__":
    main()
