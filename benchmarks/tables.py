"""Print the README's performance tables (markdown) from the JSON `make bench` wrote.

    python benchmarks/tables.py --results bench-results

Every figure in the tables is a ratio read from one benchmark run; nothing here measures.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

LATENCY_FORMATS = [
    ("masked", "masked"),
    ("csr", "csr (torch, int32)"),
    ("bsr", "bsr 16x16"),
    ("csr16", "csr16 (native)"),
    ("bitmask", "bitmask (native)"),
    ("auto", "auto"),
]
MODEL_FORMATS = ["masked", "csr", "bsr", "csr16", "bitmask", "auto"]


def layer_table(latency: dict, subject: str = "llama-7b up_proj") -> list[str]:
    rows = [r for r in latency["rows"] if r["level"] == "layer" and r["subject"] == subject]
    sparsities = sorted({r["s"] for r in rows})
    lines = [
        "| format | n | " + " | ".join(f"s={s:g}" for s in sparsities) + " |",
        "|---|---|" + "---|" * len(sparsities),
    ]
    for n in sorted({r["n"] for r in rows}):
        for name, label in LATENCY_FORMATS:
            cells = []
            for s in sparsities:
                hit = [r for r in rows if r["n"] == n and r["format"] == name and r["s"] == s]
                ok = hit and hit[0]["status"] == "ok"
                cells.append(f"{hit[0]['speedup']:.2f} ({hit[0]['byte_theory']:.2f})" if ok else "-")
            lines.append(f"| {label} | {n} | " + " | ".join(cells) + " |")
    return lines


def model_table(latency: dict) -> list[str]:
    rows = [r for r in latency["rows"] if r["level"] == "model"]
    sparsities = sorted({r["s"] for r in rows})
    decode, prefill = "decode", "prefill"
    shape = next(r for r in rows if r["kind"] == prefill)
    lines = [
        "| format | decode b=1, "
        + " | ".join(f"s={s:g}" for s in sparsities)
        + f" | prefill {shape['batch']}x{shape['seqlen']}, s=0.5 |",
        "|---|" + "---|" * (len(sparsities) + 1),
    ]

    def cell(name: str, kind: str, s: float) -> str:
        hit = [r for r in rows if r["format"] == name and r["kind"] == kind and r["s"] == s]
        return f"{hit[0]['speedup']:.2f}" if hit and hit[0]["status"] == "ok" else "-"

    for name in MODEL_FORMATS:
        decode_cells = " | ".join(cell(name, decode, s) for s in sparsities)
        lines.append(f"| {name} | {decode_cells} | {cell(name, prefill, 0.5)} |")
    return lines


def machine_of(payload: dict) -> str:
    """The machine line a result recorded (results from before issue 17 have none)."""
    from prunescope.hardware.machine import machine_line

    meta = payload.get("meta", {})
    facts = meta.get("machine_facts") or meta.get("environment", {}).get("machine")
    return machine_line(facts) if facts else "machine not recorded"


def kernel_table(kernels: dict) -> list[str]:
    lines = [
        f"<!-- {machine_of(kernels)} -->",
        "| shape (out x in) | dtype | s | n | bitmask / best dense (of bound) | bitmask / own dense "
        "| bitmask / F.linear | csr16 / own dense | torch CSR / F.linear | own dense / F.linear "
        "| traffic bound | auto picks (vs best) |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in kernels["rows"]:
        dc, fl = r["speedup_vs_dense_c"], r["speedup_vs_f_linear"]
        auto = f"{r['auto_choice']} ({r['auto_vs_best']:.2f})" if "auto_choice" in r else "-"
        best = r.get("speedup_vs_best_dense", {}).get("bitmask")
        best_cell = f"{best:.2f} ({best / r['traffic_bound']:.2f})" if best else "-"
        tcsr = f"{fl['torch_csr']:.2f}" if "torch_csr" in fl else "-"
        lines.append(
            f"| {r['out']}x{r['in']} | {r.get('dtype', 'float32')} | {r['sparsity']:g} | {r['n']} "
            f"| {best_cell} | {dc['bitmask']:.2f} | {fl['bitmask']:.2f} | {dc['csr16']:.2f} | {tcsr} "
            f"| {fl['dense_c']:.2f} | {r['traffic_bound']:.2f} | {auto} |"
        )
    return lines


def decode_table(decode: dict) -> list[str]:
    """bench_decode.json: decode tokens/s and speedup per batch, prefill speedup per length."""
    rows = decode["rows"]
    batches = sorted({r["batch"] for r in rows if r["kind"] == "decode"})
    lengths = sorted({r["seqlen"] for r in rows if r["kind"] == "prefill"})
    model = decode["meta"]["model"]
    lines = [
        f"<!-- {machine_of(decode)}; {model['parameters'] / 1e6:.0f}M-parameter Llama-shaped, "
        f"{model['dtype']}, s = {model['sparsity']} -->",
        "| format | "
        + " | ".join(f"decode b={b}: tok/s, speedup (of bound)" for b in batches)
        + " | "
        + " | ".join(f"prefill 1x{n}" for n in lengths)
        + " |",
        "|---|" + "---|" * (len(batches) + len(lengths)),
    ]
    for name in dict.fromkeys(r["format"] for r in rows):
        cells = []
        for b in batches:
            hit = next(r for r in rows if r["kind"] == "decode" and r["batch"] == b and r["format"] == name)
            cells.append(f"{hit['tokens_per_s']:.1f}, {hit['speedup']:.2f} ({hit['fraction_of_bound']:.2f})")
        for n in lengths:
            hit = next(r for r in rows if r["kind"] == "prefill" and r["seqlen"] == n and r["format"] == name)
            cells.append(f"{hit['speedup']:.2f}")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--results", type=Path, default=Path("bench-results"))
    args = parser.parse_args(argv)
    latency_path, kernels_path = args.results / "bench_latency.json", args.results / "bench_kernels.json"
    if latency_path.exists():
        latency = json.loads(latency_path.read_text())
        print("\n".join(["<!-- layer level -->", *layer_table(latency), ""]))
        print("\n".join(["<!-- model level -->", *model_table(latency), ""]))
    decode_path = args.results / "bench_decode.json"
    if decode_path.exists():
        print("\n".join(["<!-- decode -->", *decode_table(json.loads(decode_path.read_text())), ""]))
    if kernels_path.exists():
        kernels = json.loads(kernels_path.read_text())
        print("\n".join(["<!-- kernels -->", *kernel_table(kernels), ""]))
        print("<!-- targets -->")
        for t in kernels["targets"]:
            state = "met" if t["value"] >= t["target"] else "MISS"
            print(
                f"- {state} {t['name']}: {t['value']:.2f} (min-based {t['value_min']:.2f}), >= {t['target']}"
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
