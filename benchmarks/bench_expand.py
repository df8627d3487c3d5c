"""Profile of the AVX2 one-token bitmask loop by ablation (issue 17): compile and run expand_ablation.c.

Hardware counters are often unavailable in a VM (`perf stat` reports cycles "not supported" on this
project's machines), so the profile takes parts out instead: the kernel's loop with each 8-lane expand
variant, and two variants wrong on purpose (no zeroing; no expand at all), all on rows that sit in L2.
Their G weights/s show what the expand costs against the rest of the loop and against a dense row.  A
kernel whose loop runs at R weights/s hot cannot stream a weight from DRAM faster than that.

    python benchmarks/bench_expand.py --out bench-results/expand.json
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import tempfile
from pathlib import Path

from prunescope.formats import native
from prunescope.hardware.machine import machine_facts, machine_line

HERE = Path(__file__).parent


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=16, help="rows of 4096 (16: ~140 KB of values, in L2)")
    ap.add_argument("--rounds", type=int, default=200)
    ap.add_argument("--runs", type=int, default=5, help="processes; the median of their best rounds is kept")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args(argv)
    cc = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        raise SystemExit("bench_expand: no C compiler (cc or gcc) on PATH")
    with tempfile.TemporaryDirectory() as tmp:
        exe = Path(tmp) / "expand_ablation"
        subprocess.run([cc, "-O3", "-o", str(exe), str(HERE / "expand_ablation.c")], check=True)
        runs = [
            json.loads(
                subprocess.run(
                    [str(exe), str(args.rows), str(args.rounds)], check=True, capture_output=True, text=True
                ).stdout
            )  # fmt: skip
            for _ in range(args.runs)
        ]
    if "error" in runs[0]:
        print(f"# {runs[0]['error']}: nothing measured")
        return 0
    facts = machine_facts(cache="hot", isa=native.resolve_kernel())
    rates = {k: statistics.median(r["gweights_per_s"][k] for r in runs) for k in runs[0]["gweights_per_s"]}
    print(f"# {machine_line(facts)}; one core, {args.rows} rows x 4096 fp32, s = 0.5, rows in L2")
    shipped = rates["vpshufb_halves"]
    for name, rate in rates.items():
        print(f"{name:>20}: {rate:6.2f} G weights/s  ({rate / shipped:4.2f}x the shipped loop)")
    print(f"# the expand's share of the shipped loop: {1 - shipped / rates['no_expand_WRONG']:.0%}")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        payload = {"meta": {"machine": facts, "compiler": cc, "runs": runs}, "gweights_per_s": rates}
        args.out.write_text(json.dumps(payload, indent=2))
        print(f"# wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
