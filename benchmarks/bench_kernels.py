"""Layer-level latency of the sparse formats against two dense references (issue 7).

For each weight shape (out x in), sparsity s, dtype and token count n it times, interleaved and shuffled
with warm-up: bitmask, csr16, torch CSR (int32 indices, fp32 only), the C dense GEMV of the same structure
("dense_c", at the same dtype) and torch F.linear, plus the module `auto` picks.  The C dense reference at
n = 1 in fp32 is the faster of its two variants (one prefetched row at a time, or four interleaved rows),
timed in the same rounds.  It prints medians and speed-ups against both dense references and against the
best of them next to the memory-traffic bound e / ((1 - s) * e + 1/8) of bitmask with e-byte values
(1.88 fp32, 1.78 bf16 at s = 0.5), and writes JSON with the machine's facts (CPU, caches, ISA path).

Cold cache by default (`--cache cold`): every timed call reads a copy of the weights that is in no cache,
by rotating over copies whose total exceeds twice the last-level cache, as decode of a model larger than
the cache does.  `--cache hot` times one copy, repeated (a weight smaller than the LLC then stays in it).
`make bench` runs it with huge pages (THP_MEM_ALLOC_ENABLE=1, see run_all.py).

    python benchmarks/bench_kernels.py --threads 2 --dtypes float32,bfloat16 --out bench-results/kernels.json
"""

from __future__ import annotations

import argparse
import copy
import itertools
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
from prunescope.hardware.machine import llc_bytes, machine_facts, machine_line
from prunescope.hardware.timing import Candidate, Rotation, TimingPolicy, cold_copies, measure_interleaved

SHAPES = [(4096, 4096), (11008, 4096)]
SPARSITIES = [0.3, 0.5, 0.7, 0.9]
TOKENS = [1, 8, 64]


DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def traffic_bound(s: float, elsize: int = 4) -> float:
    """Speed-up bound of bitmask over dense when bytes moved decide: e / ((1 - s) * e + 1/8)."""
    return elsize / ((1 - s) * elsize + 1 / 8)


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
    """The timed calls on one copy of the weights; x in the weight's dtype for F.linear (as a model)."""
    xf = x.float()  # the native kernels take fp32 activations (a 16-bit input is converted on entry)
    dense_kernel = "avx512" if kernel == "avx512" else None
    calls = {
        "bitmask": partial(bm, xf),
        "csr16": partial(c16, xf),
        "f_linear": partial(F.linear, x, w),
    }
    if tcsr is not None:  # torch CSR matmul has no 16-bit CPU kernels
        calls["torch_csr"] = partial(torch.matmul, tcsr, xf.T.contiguous())
    # both one-token dense variants: which one is faster from DRAM changes with the machine's state
    for rows in native.DENSE_ROWS if x.shape[0] == 1 and w.dtype == torch.float32 else (4,):
        calls[f"dense_c{rows}"] = partial(native.dense_matmul, xf, w, None, dense_kernel, rows)
    return calls


def cold_calls(
    bm, c16, tcsr, w: torch.Tensor, x: torch.Tensor, kernel: str, cache: str, llc: int
) -> dict[str, Callable[[], object]]:
    """`make_calls` per copy, each name rotated over copies of its weights totalling > 2x the LLC."""
    sizes = {
        "bitmask": sum(bm.weight_bytes().values()),
        "csr16": sum(c16.weight_bytes().values()),
        "torch_csr": sum(bm.weight_bytes().values()),  # a lower estimate: more copies, never fewer
        "f_linear": w.numel() * w.element_size(),
    }
    first = make_calls(bm, c16, tcsr, w, x, kernel)
    if cache == "hot":
        return first
    copies = {name: cold_copies(sizes.get(name, sizes["f_linear"]), llc) for name in first}
    sets = [first] + [
        make_calls(copy.deepcopy(bm), copy.deepcopy(c16), _clone_csr(tcsr), w.clone(), x, kernel)
        for _ in range(max(copies.values()) - 1)
    ]
    return {name: Rotation([s[name] for s in sets[: copies[name]]]) for name in first}


def _clone_csr(t: torch.Tensor | None) -> torch.Tensor | None:
    if t is None:
        return None
    return torch.sparse_csr_tensor(
        t.crow_indices().clone(), t.col_indices().clone(), t.values().clone(), t.shape
    )


def with_dense_reference(st: dict[str, dict[str, float]]) -> dict[str, dict[str, float]]:
    """Add "dense_c": the faster (by median) of the timed C dense variants; its min is the min over all."""
    variants = [k for k in st if k.startswith("dense_c")]
    best = min(variants, key=lambda k: st[k]["median"])
    fastest = min(st[k]["min"] for k in variants)
    return {**st, "dense_c": {**st[best], "min": fastest, "variant": best}}


def stats(samples: list[float]) -> dict[str, float]:
    return {"median": statistics.median(samples), "min": min(samples), "max": max(samples)}


def _best(med: dict[str, float], names: tuple[str, ...]) -> str:
    return min((k for k in names if k in med), key=med.get)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=torch.get_num_threads())
    ap.add_argument("--repeats", type=int, default=25)
    ap.add_argument(
        "--shapes", default=",".join(f"{o}x{i}" for o, i in SHAPES), help="e.g. 4096x4096,11008x4096"
    )
    ap.add_argument("--sparsities", default=",".join(map(str, SPARSITIES)))
    ap.add_argument("--tokens", default=",".join(map(str, TOKENS)))
    ap.add_argument("--dtypes", default="float32", help="comma list of float32, bfloat16, float16")
    ap.add_argument("--cache", choices=("cold", "hot"), default="cold")
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
    dtypes = [DTYPES[d.strip()] for d in args.dtypes.split(",")]
    kernel = native.best_kernel()
    llc = llc_bytes()
    meta = {
        "torch": torch.__version__,
        "threads": args.threads,
        "kernel": kernel,
        "repeats": args.repeats,
        "python": sys.version.split()[0],
        "machine": platform.machine(),
        "machine_facts": machine_facts(None, args.cache, isa=native.resolve_kernel()),
        "cache": args.cache,
        "cpu_count": os.cpu_count(),
        "openmp_runtimes": native.openmp_runtimes(),
        "timing": "interleaved rounds in shuffled order after warm-up; seconds",
        "clock": args.clock,
        "load_average_start": os.getloadavg(),
        "thp_mem_alloc": os.environ.get("THP_MEM_ALLOC_ENABLE") == "1",
    }
    print(
        f"# {machine_line(meta['machine_facts'])}; torch {torch.__version__}, {args.repeats} repeats, "
        f"{args.cache} cache (copies rotated to > 2x LLC {llc / 2**20:g} MiB)"
    )
    if kernel == "torch":
        print(
            "# the native extension is unavailable: bitmask/csr16/dense_c rows measure the PyTorch fallback"
        )
    rows = []
    header = (
        f"{'shape':>11} {'dtype':>8} {'s':>4} {'n':>3} | {'bitmask':>8} {'csr16':>8} {'dense_c':>8} "
        f"{'F.linear':>8} ms | bm/dC bm/F bm/best (min) bound frac | c16/dC | auto  auto/best (min)"
    )
    print(header)
    print("-" * len(header))
    with torch.inference_mode():
        for (out, inp), dtype, s in itertools.product(shapes, dtypes, sparsities):
            elsize = torch.empty((), dtype=dtype).element_size()
            dname = str(dtype).removeprefix("torch.")
            w = pruned_weight(out, inp, s, seed=0).to(dtype)
            bm, c16 = BitmaskLinear.from_dense(w), CSR16Linear.from_dense(w)
            tcsr = torch_csr(w) if dtype == torch.float32 else None
            for n in tokens:
                x = torch.randn(n, inp, generator=torch.Generator().manual_seed(1)).to(dtype)
                calls = cold_calls(bm, c16, tcsr, w, x, kernel, args.cache, llc)
                auto = None
                if not args.no_auto:
                    auto = choose_format(w, None, n_tokens=n, cache=args.cache)
                    auto_bytes = sum(t.numel() * t.element_size() for t in auto.state_dict().values())
                    autos = [auto] + [copy.deepcopy(auto) for _ in range(cold_copies(auto_bytes, llc) - 1)]
                    calls["auto"] = (
                        Rotation([partial(a, x) for a in autos]) if args.cache == "cold" else partial(auto, x)
                    )
                timings = measure_interleaved(
                    {name: Candidate(call) for name, call in calls.items()}, policy, clock
                )
                del calls
                samples = {name: list(t.samples) for name, t in timings.items()}
                st = with_dense_reference({name: stats(v) for name, v in samples.items()})
                med = {name: v["median"] for name, v in st.items()}
                mn = {name: v["min"] for name, v in st.items()}
                best_dense = _best(med, ("dense_c", "f_linear"))
                bound = traffic_bound(s, elsize)
                row = {
                    "out": out,
                    "in": inp,
                    "dtype": dname,
                    "sparsity": s,
                    "n": n,
                    "cache": args.cache,
                    "times": st,
                    "speedup_vs_dense_c": {k: med["dense_c"] / v for k, v in med.items()},
                    "speedup_vs_f_linear": {k: med["f_linear"] / v for k, v in med.items()},
                    "speedup_vs_dense_c_min": {k: mn["dense_c"] / v for k, v in mn.items()},
                    "speedup_vs_f_linear_min": {k: mn["f_linear"] / v for k, v in mn.items()},
                    "best_dense": best_dense,
                    "speedup_vs_best_dense": {k: med[best_dense] / v for k, v in med.items()},
                    "traffic_bound": bound,
                    "bitmask_fraction_of_bound": med[best_dense] / med["bitmask"] / bound,
                    "bitmask_bytes": sum(bm.weight_bytes().values()),
                    "dense_bytes": w.numel() * elsize,
                    "dense_gb_per_s": w.numel() * elsize / med[best_dense] / 1e9,
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
                vb = row["speedup_vs_best_dense"]["bitmask"]
                print(
                    f"{out:>5}x{inp:<5} {dname:>8} {s:4.2f} {n:3d} | {ms['bitmask']:8.3f} "
                    f"{ms['csr16']:8.3f} {ms['dense_c']:8.3f} {ms['f_linear']:8.3f} | "
                    f"{med['dense_c'] / med['bitmask']:5.2f} {med['f_linear'] / med['bitmask']:4.2f} "
                    f"{vb:5.2f} ({mn[best_dense] / mn['bitmask']:4.2f}) {bound:5.2f} {vb / bound:4.2f} | "
                    f"{med['dense_c'] / med['csr16']:6.2f} | {auto_txt}",
                    flush=True,
                )
    checks = []
    for r in rows:
        if r["n"] == 1 and r["sparsity"] == 0.5:
            name = f"bitmask/best dense {r['out']}x{r['in']} {r['dtype']} s=0.5 ({r['best_dense']})"
            got = r["speedup_vs_best_dense"]["bitmask"]
            checks.append((name, got, got, round(0.9 * r["traffic_bound"], 2)))
    checks += [
        (
            f"auto/best {r['out']}x{r['in']} {r['dtype']} s={r['sparsity']} n={r['n']}",
            r["auto_vs_best"],
            r["auto_vs_best_min"],
            0.95,
        )
        for r in rows
        if "auto_vs_best" in r
    ]
    print("\n# targets (n = 1 unless stated; 0.9 of the byte bound): median ratio (min ratio)")
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
