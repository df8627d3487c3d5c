"""Layer-level latency of the sparse formats against two dense references (issue 7).

For each weight shape (out x in), sparsity s and token count n it times, interleaved and shuffled with
warm-up: bitmask, csr16, torch CSR (int32 indices), the C dense GEMV of the same structure ("dense_c")
and torch F.linear, plus the module `auto` picks.  The C dense reference at n = 1 is the faster of its
two variants (one prefetched row at a time, or four interleaved rows), timed in the same rounds.  It
prints medians and speed-ups against both dense references next to the memory-traffic bound
4 / ((1 - s) * 4 + 1/8) of fp32 bitmask, and writes JSON.  `make bench` runs it with huge pages
(THP_MEM_ALLOC_ENABLE=1, see run_all.py).

    python benchmarks/bench_kernels.py --threads 2 --out bench-results/kernels.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
import warnings
from collections.abc import Callable
from functools import partial
from pathlib import Path

import torch
import torch.nn.functional as F

from prunescope.formats import native
from prunescope.formats.auto import choose_format
from prunescope.formats.bitmask import BitmaskLinear
from prunescope.formats.csr16 import CSR16Linear
from prunescope.latency.timing import Candidate, TimingPolicy, measure_interleaved

SHAPES = [(4096, 4096), (11008, 4096)]
SPARSITIES = [0.3, 0.5, 0.7, 0.9]
TOKENS = [1, 8, 64]
TARGETS = {0.3: ("dense_c", 1.15), 0.5: ("dense_c", 1.5)}


def traffic_bound(s: float) -> float:
    """Speed-up bound of fp32 bitmask over dense when bytes moved decide: 4 / ((1 - s) * 4 + 1/8)."""
    return 4 / ((1 - s) * 4 + 1 / 8)


def pruned_weight(out: int, inp: int, s: float, seed: int) -> torch.Tensor:
    """Exactly round(s * numel) zeros at uniformly random positions (unstructured magnitude-like pruning)."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(out, inp, generator=g)
    k = round(s * w.numel())
    w.view(-1)[torch.randperm(w.numel(), generator=g)[:k]] = 0
    return w


def torch_csr(w: torch.Tensor) -> torch.Tensor:
    with warnings.catch_warnings():  # "sparse CSR support is in beta"
        warnings.simplefilter("ignore")
        csr = w.to_sparse_csr()
        return torch.sparse_csr_tensor(
            csr.crow_indices().int(), csr.col_indices().int(), csr.values(), w.shape
        )


def make_calls(
    bm, c16, tcsr, w: torch.Tensor, x: torch.Tensor, kernel: str
) -> dict[str, Callable[[], object]]:
    xt = x.T.contiguous()  # torch CSR computes W @ x^T: give it the layout it wants, outside the timing
    dense_kernel = "avx512" if kernel == "avx512" else None
    calls = {
        "bitmask": partial(bm, x),
        "csr16": partial(c16, x),
        "torch_csr": partial(torch.matmul, tcsr, xt),
        "f_linear": partial(F.linear, x, w),
    }
    # both one-token dense variants: which one is faster from DRAM changes with the machine's state
    for rows in native.DENSE_ROWS if x.shape[0] == 1 else (4,):
        calls[f"dense_c{rows}"] = partial(native.dense_matmul, x, w, None, dense_kernel, rows)
    return calls


def with_dense_reference(st: dict[str, dict[str, float]]) -> dict[str, dict[str, float]]:
    """Add "dense_c": the faster (by median) of the timed C dense variants; its min is the min over all."""
    variants = [k for k in st if k.startswith("dense_c")]
    best = min(variants, key=lambda k: st[k]["median"])
    fastest = min(st[k]["min"] for k in variants)
    return {**st, "dense_c": {**st[best], "min": fastest, "variant": best}}


def stats(samples: list[float]) -> dict[str, float]:
    return {"median": statistics.median(samples), "min": min(samples), "max": max(samples)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=torch.get_num_threads())
    ap.add_argument("--repeats", type=int, default=25)
    ap.add_argument(
        "--shapes", default=",".join(f"{o}x{i}" for o, i in SHAPES), help="e.g. 4096x4096,11008x4096"
    )
    ap.add_argument("--sparsities", default=",".join(map(str, SPARSITIES)))
    ap.add_argument("--tokens", default=",".join(map(str, TOKENS)))
    ap.add_argument("--no-auto", action="store_true", help="skip the auto-format rows")
    ap.add_argument(
        "--clock",
        choices=("wall", "cpu"),
        default="wall",
        help="cpu = process CPU time: with --threads 1 on a shared machine, ignores waits for a core",
    )
    ap.add_argument("--out", type=Path, default=None, help="write the results as JSON here")
    args = ap.parse_args(argv)

    torch.set_num_threads(args.threads)
    clock = time.perf_counter if args.clock == "wall" else time.process_time
    policy = TimingPolicy.rounds(args.repeats)  # exactly --repeats shuffled rounds
    shapes = [tuple(int(v) for v in s.split("x")) for s in args.shapes.split(",")]
    sparsities = [float(s) for s in args.sparsities.split(",")]
    tokens = [int(n) for n in args.tokens.split(",")]
    kernel = native.best_kernel()
    meta = {
        "torch": torch.__version__,
        "threads": args.threads,
        "kernel": kernel,
        "repeats": args.repeats,
        "python": sys.version.split()[0],
        "machine": platform.machine(),
        "cpu_count": os.cpu_count(),
        "openmp_runtimes": native.openmp_runtimes(),
        "timing": "interleaved rounds in shuffled order after warm-up; seconds",
        "clock": args.clock,
        "load_average_start": os.getloadavg(),
        "thp_mem_alloc": os.environ.get("THP_MEM_ALLOC_ENABLE") == "1",
    }
    print(
        f"# torch {torch.__version__}, {args.threads} threads, native kernel {kernel}, "
        f"{args.repeats} repeats, huge pages {'on' if meta['thp_mem_alloc'] else 'off'}"
    )
    if kernel == "torch":
        print(
            "# the native extension is unavailable: bitmask/csr16/dense_c rows measure the PyTorch fallback"
        )
    rows = []
    header = (
        f"{'shape':>11} {'s':>4} {'n':>3} | {'bitmask':>8} {'csr16':>8} {'torchCSR':>8} {'dense_c':>8} "
        f"{'F.linear':>8} ms | bm/dC bm/F (min ratios) bound | c16/dC tCSR/F | auto  auto/best (min)"
    )
    print(header)
    print("-" * len(header))
    with torch.inference_mode():
        for out, inp in shapes:
            for s in sparsities:
                w = pruned_weight(out, inp, s, seed=0)
                bm, c16, tcsr = BitmaskLinear.from_dense(w), CSR16Linear.from_dense(w), torch_csr(w)
                for n in tokens:
                    x = torch.randn(n, inp, generator=torch.Generator().manual_seed(1))
                    calls = make_calls(bm, c16, tcsr, w, x, kernel)
                    auto = None
                    if not args.no_auto:
                        auto = choose_format(w, None, n_tokens=n)
                        calls["auto"] = partial(auto, x)
                    timings = measure_interleaved(
                        {name: Candidate(call) for name, call in calls.items()}, policy, clock
                    )
                    samples = {name: list(t.samples) for name, t in timings.items()}
                    st = with_dense_reference({name: stats(v) for name, v in samples.items()})
                    med = {name: v["median"] for name, v in st.items()}
                    mn = {name: v["min"] for name, v in st.items()}
                    row = {
                        "out": out,
                        "in": inp,
                        "sparsity": s,
                        "n": n,
                        "times": st,
                        "speedup_vs_dense_c": {k: med["dense_c"] / v for k, v in med.items()},
                        "speedup_vs_f_linear": {k: med["f_linear"] / v for k, v in med.items()},
                        "speedup_vs_dense_c_min": {k: mn["dense_c"] / v for k, v in mn.items()},
                        "speedup_vs_f_linear_min": {k: mn["f_linear"] / v for k, v in mn.items()},
                        "traffic_bound": traffic_bound(s),
                        "bitmask_bytes": sum(bm.weight_bytes().values()),
                        "dense_bytes": w.numel() * 4,
                    }
                    if auto is not None:
                        best = min(med[k] for k in ("f_linear", "bitmask", "csr16"))
                        best_min = min(mn[k] for k in ("f_linear", "bitmask", "csr16"))
                        row.update(
                            auto_choice=auto.auto_choice,
                            auto_timings=auto.auto_timings,
                            auto_vs_best=best / med["auto"],
                            auto_vs_best_min=best_min / mn["auto"],
                        )
                    rows.append(row)
                    ms = {k: v * 1e3 for k, v in med.items()}
                    auto_txt = (
                        f"{row['auto_choice']:>7} {row['auto_vs_best']:5.2f} ({row['auto_vs_best_min']:4.2f})"
                        if auto is not None
                        else ""
                    )
                    print(
                        f"{out:>5}x{inp:<5} {s:4.2f} {n:3d} | {ms['bitmask']:8.3f} {ms['csr16']:8.3f} "
                        f"{ms['torch_csr']:8.3f} {ms['dense_c']:8.3f} {ms['f_linear']:8.3f}    | "
                        f"{med['dense_c'] / med['bitmask']:5.2f} {med['f_linear'] / med['bitmask']:4.2f} "
                        f"({mn['dense_c'] / mn['bitmask']:4.2f} {mn['f_linear'] / mn['bitmask']:4.2f}) "
                        f"{traffic_bound(s):5.2f} | {med['dense_c'] / med['csr16']:6.2f} "
                        f"{med['f_linear'] / med['torch_csr']:6.2f} | {auto_txt}"
                    )
    checks = []
    for r in rows:
        if r["n"] != 1:
            continue
        if r["sparsity"] in TARGETS:
            ref, goal = TARGETS[r["sparsity"]]
            got = r["speedup_vs_dense_c"]["bitmask"]
            got_min = r["speedup_vs_dense_c_min"]["bitmask"]
            checks.append((f"bitmask/dense_c {r['out']}x{r['in']} s={r['sparsity']}", got, got_min, goal))
        if r["sparsity"] == 0.5:
            name = f"bitmask/F.linear {r['out']}x{r['in']} s=0.5"
            checks.append(
                (name, r["speedup_vs_f_linear"]["bitmask"], r["speedup_vs_f_linear_min"]["bitmask"], 2.0)
            )
    checks += [
        (
            f"auto/best {r['out']}x{r['in']} s={r['sparsity']} n={r['n']}",
            r["auto_vs_best"],
            r["auto_vs_best_min"],
            0.95,
        )
        for r in rows
        if "auto_vs_best" in r
    ]
    print("\n# targets (n = 1 unless stated): median ratio (min ratio)")
    for name, got, got_min, goal in checks:
        print(f"{'met ' if got >= goal else 'MISS'} {name}: {got:.2f} ({got_min:.2f}) (target >= {goal})")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        payload = {
            "meta": meta,
            "rows": rows,
            "targets": [{"name": n, "value": g, "value_min": m, "target": t} for n, g, m, t in checks],
        }
        args.out.write_text(json.dumps(payload, indent=2))
        print(f"# wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
