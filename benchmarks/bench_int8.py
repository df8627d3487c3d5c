"""One-token latency of bitmask-int8 against dense int8 and int4 CPU kernels (issue 25, ask 4).

For each weight shape at sparsity s (default 0.5), one token, it times interleaved, shuffled rounds after
warm-up of:

- `bitmask_int8`: `formats.bitmask_int8.BitmaskInt8Linear` (int8 codes of the kept weights + 1 bit per
  weight + a float32 scale per row) on its best native path (or `--kernel`);
- `dense_int8` (ours): `formats.dense_int8.dense_int8_matvec` on the dense int8 codes and row scales of the
  same pruned weight, on the same native path: the C kernel that shares bitmask-int8's widen-and-FMA step,
  prefetch and threading, so the two differ by the bytes they stream;
- `int8pack`: `torch.ops.aten._weight_int8pack_mm` on the same codes and scales;
- `int4pack`: `torch.ops.aten._weight_int4pack_mm_for_cpu` with group 128 (as `quantization.linear` calls
  it), the 4-bit dense alternative,

and reports medians, the speed-up over the best dense int8 path of the run (the smaller median of
`dense_int8` and `int8pack`: torch's CPU int8pack can run far below memory bandwidth, and a slow baseline
says nothing about the byte bound), the fraction of the byte bound over dense int8 against that baseline,
1 / ((1 - s) + 1/8) (1.6x at s = 0.5; the scales are negligible), and the speed-ups over each candidate,
naming the machine (CPU, caches, threads, code paths) and, per shape, which path was the dense baseline.
Cold cache by default: every timed call reads a copy of its weights that is in no cache, by rotating over
copies totalling more than twice the last-level cache (bench_kernels.py).

Take the real figures on a quiet machine (no other jobs: they share the memory bus and the cores):

    python benchmarks/bench_int8.py --threads 2 --out bench-results/int8.json
    python benchmarks/bench_int8.py --quick            # one shape, few repeats: checks that it runs
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import statistics
import sys
import time
from functools import partial
from pathlib import Path

import torch

from prunescope.formats import dense_int8, native
from prunescope.formats.bitmask_int8 import BitmaskInt8Linear, kernel_variant
from prunescope.formats.dense_int8 import dense_int8_matvec
from prunescope.hardware.machine import llc_bytes, machine_facts, machine_line
from prunescope.hardware.timing import Candidate, Rotation, TimingPolicy, cold_copies, measure_interleaved
from prunescope.quantization import QuantizedLinear, QuantOptions, rtn_quantize

SHAPES = [(4096, 4096), (11008, 4096)]
INT4_GROUP = 128
DENSE_INT8 = ("dense_int8", "int8pack")  # the dense int8 paths; the faster one is the baseline


def byte_bound(s: float) -> float:
    """Speed-up bound of bitmask-int8 over dense int8 when bytes moved decide: 1 / ((1 - s) + 1/8)."""
    return 1 / ((1 - s) + 1 / 8)


def pruned_weight(out: int, inp: int, s: float, seed: int) -> torch.Tensor:
    """Exactly round(s * numel) zeros at uniformly random positions (unstructured pruning)."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(out, inp, generator=g)
    w.view(-1)[torch.randperm(w.numel(), generator=g)[: round(s * w.numel())]] = 0
    return w


def nbytes(*tensors: torch.Tensor) -> int:
    return sum(t.numel() * t.element_size() for t in tensors)


class Int8Pack:
    """`_weight_int8pack_mm` on one copy of the dense int8 codes and scales."""

    def __init__(self, codes: torch.Tensor, scales: torch.Tensor) -> None:
        self.codes, self.scales = codes.clone(), scales.clone()

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return torch.ops.aten._weight_int8pack_mm(x, self.codes, self.scales)

    def bytes(self) -> int:
        return nbytes(self.codes, self.scales)


class DenseInt8(Int8Pack):
    """Our C dense int8 one-token kernel on one copy of the same codes and scales, on a pinned path."""

    def __init__(self, codes: torch.Tensor, scales: torch.Tensor, kernel: str) -> None:
        super().__init__(codes, scales)
        self.kernel = kernel

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return dense_int8_matvec(self.codes, self.scales, x, None, self.kernel)


def has_dense_int8(path: str) -> bool:
    """Whether `dense_int8` runs natively on `path` (its torch path dequantizes per call: no baseline)."""
    return dense_int8.HAS_NATIVE and path != "torch"


class Int4Pack:
    """`_weight_int4pack_mm_for_cpu` on one copy of the packed int4 weight and its scales/offsets."""

    def __init__(self, packed: torch.Tensor, scale_zero: torch.Tensor) -> None:
        self.packed, self.scale_zero = packed.clone(), scale_zero.clone()

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return torch.ops.aten._weight_int4pack_mm_for_cpu(x, self.packed, INT4_GROUP, self.scale_zero)

    def bytes(self) -> int:
        return nbytes(self.packed, self.scale_zero)


def candidates(w: torch.Tensor, kernel: str | None, path: str):
    """The timed modules on one copy each (`dense_int8` on `path` where it runs natively), and their
    references for a correctness check."""
    bm = BitmaskInt8Linear.from_dense(w, kernel=kernel)
    q8 = rtn_quantize(w, QuantOptions("int8"))
    codes, scales = q8.packed, q8.scales.reshape(-1).float()
    q4 = QuantizedLinear.from_dense(w, None, QuantOptions("int4", group_size=INT4_GROUP))
    packed, scale_zero = q4._int4_operands(torch.float32)
    timed = {
        "bitmask_int8": bm,
        "int8pack": Int8Pack(codes, scales),
        "int4pack": Int4Pack(packed, scale_zero),
    }
    if has_dense_int8(path):
        timed["dense_int8"] = DenseInt8(codes, scales, path)
    refs = {name: q8.dequantize(torch.float32) for name in timed}
    refs["int4pack"] = q4.to_dense().float()
    return timed, refs


def module_bytes(name: str, module) -> int:
    return sum(module.weight_bytes().values()) if name == "bitmask_int8" else module.bytes()


def stats(samples: list[float]) -> dict[str, float]:
    return {"median": statistics.median(samples), "min": min(samples), "max": max(samples), "n": len(samples)}


def summary_row(out: int, inp: int, s: float, st: dict, sizes: dict, errors: dict) -> dict:
    """One shape's figures: speed-ups of bitmask-int8 over each candidate and over the dense baseline (the
    dense int8 path of smaller median; `_min` compares the same two paths' fastest calls), the fraction of
    the byte bound that speed-up reaches, and each candidate's weight bytes per second."""
    med = {k: v["median"] for k, v in st.items()}
    mn = {k: v["min"] for k, v in st.items()}
    baseline = min((k for k in DENSE_INT8 if k in med), key=med.get)
    speedup, bound = med[baseline] / med["bitmask_int8"], byte_bound(s)
    return {
        "out": out,
        "in": inp,
        "sparsity": s,
        "n": 1,
        "times": st,
        "bytes": sizes,
        "max_rel_error": errors,
        "dense_baseline": baseline,
        "speedup_vs_dense": speedup,
        "speedup_vs_dense_min": mn[baseline] / mn["bitmask_int8"],
        "speedup_vs": {k: v / med["bitmask_int8"] for k, v in med.items() if k != "bitmask_int8"},
        "byte_bound": bound,
        "byte_bound_exact": sizes[baseline] / sizes["bitmask_int8"],
        "fraction_of_bound": speedup / bound,
        "gb_per_s": {k: sizes[k] / v / 1e9 for k, v in med.items()},
    }


def table_line(row: dict) -> str:
    ms = {k: v["median"] * 1e3 for k, v in row["times"].items()}
    dense = f"{ms['dense_int8']:8.3f}" if "dense_int8" in ms else f"{'-':>8}"
    vs = row["speedup_vs"]
    return (
        f"{row['out']:>5}x{row['in']:<5} {row['sparsity']:4.2f} | {ms['bitmask_int8']:8.3f} {dense} "
        f"{ms['int8pack']:8.3f} {ms['int4pack']:8.3f} | {row['speedup_vs_dense']:8.2f} "
        f"{row['speedup_vs_dense_min']:6.2f} {row['dense_baseline']:>10} {row['byte_bound']:5.2f} "
        f"{row['fraction_of_bound']:5.2f} | {vs['int8pack']:7.2f} {vs['int4pack']:7.2f}"
    )


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=torch.get_num_threads())
    ap.add_argument("--repeats", type=int, default=25)
    ap.add_argument("--shapes", default=",".join(f"{o}x{i}" for o, i in SHAPES), help="e.g. 4096x4096")
    ap.add_argument("--sparsity", type=float, default=0.5)
    ap.add_argument("--cache", choices=("cold", "hot"), default="cold")
    ap.add_argument(
        "--kernel",
        default=None,
        help="pin the bitmask-int8 and dense_int8 paths (avx512, avx2, scalar, torch)",
    )
    ap.add_argument("--quick", action="store_true", help="4096x4096 only, 5 repeats: a check that it runs")
    ap.add_argument("--out", type=Path, default=None, help="write the results as JSON here")
    args = ap.parse_args(argv)
    if args.quick:
        args.shapes, args.repeats = "4096x4096", min(args.repeats, 5)

    torch.set_num_threads(args.threads)
    policy = TimingPolicy.rounds(args.repeats)
    shapes = [tuple(int(v) for v in s.split("x")) for s in args.shapes.split(",")]
    s = args.sparsity
    llc = llc_bytes()
    path = native.resolve_kernel(args.kernel)
    facts = machine_facts(None, args.cache, isa=path)
    meta = {
        "torch": torch.__version__,
        "python": sys.version.split()[0],
        "machine": platform.machine(),
        "machine_facts": facts,
        "machine_line": machine_line(facts),
        "threads": args.threads,
        "bitmask_int8_path": kernel_variant(path),
        "dense_int8_path": path if has_dense_int8(path) else None,
        "dense_baseline_candidates": list(DENSE_INT8),
        "cache": args.cache,
        "repeats": args.repeats,
        "quick": args.quick,
        "timing": "interleaved rounds in shuffled order after warm-up; seconds per call",
        "load_average_start": os.getloadavg(),
        "int4_group": INT4_GROUP,
    }
    print(
        f"# {meta['machine_line']}; bitmask-int8 path {meta['bitmask_int8_path']}; "
        f"dense_int8 path {meta['dense_int8_path'] or 'none (not built, or torch)'}; "
        f"torch {torch.__version__}; "
        f"{args.repeats} repeats; {args.cache} cache (copies rotated to > 2x LLC {llc / 2**20:g} MiB); "
        f"load average {meta['load_average_start'][0]:.1f}"
    )
    if args.quick:
        print("# --quick: a check that it runs, not figures to report (take those on a quiet machine)")
    header = (
        f"{'shape':>11} {'s':>4} | {'bm-int8':>8} {'dense_i8':>8} {'int8pack':>8} {'int4pack':>8} ms | "
        f"{'vs dense':>8} {'(min)':>6} {'baseline':>10} {'bound':>5} {'frac':>5} | "
        f"{'vs i8pk':>7} {'vs i4pk':>7}"
    )
    print(header)
    print("-" * len(header))
    rows = []
    with torch.inference_mode():
        for out, inp in shapes:
            w = pruned_weight(out, inp, s, seed=0)
            x = torch.randn(1, inp, generator=torch.Generator().manual_seed(1))
            first, refs = candidates(w, args.kernel, path)
            errors = {}
            for name, module in first.items():  # each candidate computes its own quantized weight
                ref = torch.nn.functional.linear(x, refs[name])
                errors[name] = float((module(x) - ref).abs().max() / ref.abs().max())
            sizes = {name: module_bytes(name, m) for name, m in first.items()}
            calls = {}
            for name, module in first.items():
                copies = cold_copies(sizes[name], llc) if args.cache == "cold" else 1
                modules = [module] + [copy.deepcopy(module) for _ in range(copies - 1)]
                calls[name] = Rotation([partial(m, x) for m in modules])
            timings = measure_interleaved(
                {n: Candidate(c) for n, c in calls.items()}, policy, time.perf_counter
            )
            del calls
            st = {name: stats(list(t.samples)) for name, t in timings.items()}
            rows.append(summary_row(out, inp, s, st, sizes, errors))
            print(table_line(rows[-1]), flush=True)
    dense_paths = " or ".join(DENSE_INT8)
    print(f"\n# target: bitmask-int8 / best dense int8 ({dense_paths}) >= 0.8 of the byte bound (median)")
    for r in rows:
        met = "met " if r["fraction_of_bound"] >= 0.8 else "MISS"
        frac, bound, base = r["fraction_of_bound"], r["byte_bound"], r["dense_baseline"]
        print(f"{met} {r['out']}x{r['in']} s={r['sparsity']}: {frac:.2f} of {bound:.2f}x over {base}")
    meta["load_average_end"] = os.getloadavg()
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps({"meta": meta, "rows": rows}, indent=2))
        print(f"# wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
