"""Measured speedup of every sparse format next to the FLOP- and byte-ratio predictions (issue 6).

Two subjects, random weights, nothing downloaded:
- an OPT-125m-shaped model built from its config (hidden 768, 12 layers, 12 heads, ffn 3072, vocab 50272,
  2048 positions): layer level for its three pruned shapes (768x768, 3072x768, 768x3072) and model level
  (prefill 1x64, KV-cache decode at batch 1);
- a Llama-7B MLP up_proj, weight out=11008 x in=4096 (layer level only).
Each at magnitude sparsity s in {0.3, 0.5, 0.7, 0.9} and n in {1, 64} tokens, every format that
`prunescope.formats.FORMATS` lists plus masked and semi-structured (unsupported rows say why).

    python benchmarks/bench_latency.py --out bench-results/latency.json
"""

from __future__ import annotations

import argparse
import copy
import math
import sys
import time
from pathlib import Path

import torch
from rich.console import Console
from rich.table import Table
from torch import nn

from prunescope.formats import FORMATS
from prunescope.hardware.machine import machine_line
from prunescope.latency import (
    BenchSubject,
    LatencyConfig,
    TimingPolicy,
    bench_layers,
    bench_model,
    bench_weight,
    environment,
    parse_formats,
)
from prunescope.layers import prunable_layers
from prunescope.pruning import PruneSpec, prune
from prunescope.report.latency import json_rows
from prunescope.report.output import write_json

SPARSITIES = [0.3, 0.5, 0.7, 0.9]
TOKENS = [1, 64]
LLAMA_UP_PROJ = (11008, 4096)  # (out, in) of Llama-7B's mlp.up_proj
console = Console(width=160)


def opt_125m() -> nn.Module:
    from transformers import OPTConfig, OPTForCausalLM

    torch.manual_seed(0)
    config = OPTConfig(
        vocab_size=50272,
        hidden_size=768,
        word_embed_proj_dim=768,
        num_hidden_layers=12,
        num_attention_heads=12,
        ffn_dim=3072,
        max_position_embeddings=2048,
    )
    return OPTForCausalLM(config).eval().requires_grad_(False)


def llama_up_proj() -> nn.Linear:
    torch.manual_seed(0)
    layer = nn.Linear(LLAMA_UP_PROJ[1], LLAMA_UP_PROJ[0], bias=False).requires_grad_(False)
    nn.init.normal_(layer.weight, std=0.02)
    return layer


def _tag(rows: list[dict], **tags) -> list[dict]:
    return [{**tags, **row} for row in rows]


def bench_opt(sparsity: float, layer_config: LatencyConfig, model_config: LatencyConfig, model) -> list[dict]:
    names = list(prunable_layers(model))
    pruned = copy.deepcopy(model)
    prune(pruned, {n: pruned.get_submodule(n) for n in names}, PruneSpec.create("magnitude", sparsity))
    rows = _tag(
        bench_layers(BenchSubject(model.get_submodule, pruned, names, layer_config)),
        subject="opt-125m",
        s=sparsity,
    )
    if model_config.model_level:
        rows += _tag(
            bench_model(BenchSubject(model.get_submodule, pruned, names, model_config)),
            subject="opt-125m",
            s=sparsity,
        )
    return rows


def bench_llama(sparsity: float, config: LatencyConfig, layer: nn.Linear) -> list[dict]:
    pruned = nn.Linear(layer.in_features, layer.out_features, bias=False).requires_grad_(False)
    pruned.weight.copy_(layer.weight)
    prune(pruned, {"up_proj": pruned}, PruneSpec.create("magnitude", sparsity), progress=False)
    rows = bench_weight(layer.weight, pruned.weight.detach(), None, config)
    return _tag(rows, subject="llama-7b up_proj", s=sparsity, layer="mlp.up_proj")


def _fmt(value, spec: str) -> str:
    return "-" if value is None or (isinstance(value, float) and math.isnan(value)) else format(value, spec)


def print_layer_table(rows: list[dict]) -> None:
    table = Table(title="layer level: speedup vs dense F.linear (median, interleaved)")
    for header in ("subject", "shape", "format", "s", "n", "speedup", "FLOP th.", "byte th.", "meas/FLOP"):
        table.add_column(header, justify="right", no_wrap=True)
    table.add_column("meas/byte", justify="right", no_wrap=True)
    table.add_column("status", no_wrap=True)
    for r in rows:
        if r["level"] != "layer" or r["format"] == "dense":
            continue
        ok = r["status"] == "ok"
        table.add_row(
            r["subject"],
            r["shape"],
            r["format"],
            f"{r['s']:g}",
            str(r["n"]),
            _fmt(r["speedup"], ".2f") if ok else "-",
            _fmt(r["flop_theory"], ".2f"),
            _fmt(r["byte_theory"], ".2f"),
            _fmt(r["measured_over_flop"], ".2f") if ok else "-",
            _fmt(r["measured_over_bytes"], ".2f") if ok else "-",
            r["status"].split(":")[0],
        )
    console.print(table)


def print_model_table(rows: list[dict]) -> None:
    table = Table(title="model level (opt-125m): speedup vs dense model")
    for header in (
        "kind",
        "s",
        "format",
        "median ms",
        "tokens/s",
        "speedup",
        "FLOP th.",
        "byte th.",
        "meas/byte",
    ):
        table.add_column(header, justify="right", no_wrap=True)
    table.add_column("status", no_wrap=True)
    for r in rows:
        if r["level"] != "model":
            continue
        ok = r["status"] == "ok"
        kind = f"prefill {r['batch']}x{r['seqlen']}" if r["kind"] == "prefill" else f"decode b{r['batch']}"
        table.add_row(
            kind,
            f"{r['s']:g}",
            r["format"],
            _fmt(r["median_s"] * 1e3, ".1f") if ok else "-",
            _fmt(r["tokens_per_s"], ",.1f") if ok else "-",
            _fmt(r["speedup"], ".2f") if ok else "-",
            _fmt(r["flop_theory"], ".2f"),
            _fmt(r["byte_theory"], ".2f"),
            _fmt(r["measured_over_bytes"], ".2f") if ok else "-",
            r["status"].split(":")[0],
        )
    console.print(table)


def save(
    out: Path, env: dict, layer_config, model_config, start: float, rows: list[dict], complete=False
) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".json.tmp")
    data = {
        "complete": complete,
        "environment": env,
        "layer_config": layer_config.describe(),
        "model_config": model_config.describe(),
        "seconds": time.perf_counter() - start,
        "rows": json_rows(rows),
    }
    write_json(tmp, data)
    tmp.replace(out)  # the JSON appears whole or not at all


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("bench-results/latency.json"))
    parser.add_argument("--formats", default=",".join(["masked", *FORMATS]))  # semi-structured included
    parser.add_argument("--sparsities", default=",".join(map(str, SPARSITIES)))
    parser.add_argument("--tokens", default=",".join(map(str, TOKENS)))
    parser.add_argument(
        "--min-time", type=float, default=0.1, help="seconds of samples per layer measurement"
    )
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    parser.add_argument("--decode-tokens", type=int, default=8)
    parser.add_argument("--no-model", action="store_true", help="skip the OPT model-level prefill/decode")
    parser.add_argument("--no-llama", action="store_true", help="skip the 11008x4096 layer")
    parser.add_argument(
        "--cache", choices=("cold", "hot"), default="cold", help="cold: every call reads uncached weights"
    )
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    start = time.perf_counter()
    formats = parse_formats(args.formats)
    tokens = [int(t) for t in args.tokens.split(",")]
    # Slow candidates (CSR at low sparsity on the big layer: ~1 s a call) stop after 3 samples.
    layer_config = LatencyConfig(
        formats=formats,
        tokens=tokens,
        policy=TimingPolicy(min_time=args.min_time, min_repeats=7, max_time=1.5),
        model_level=False,
        cache=args.cache,
    )
    model_config = LatencyConfig(
        formats=formats,
        prefill_grid=[(1, 64)],
        decode_batches=[1],
        decode_tokens=args.decode_tokens,
        decode_prompt=16,
        policy=TimingPolicy(warmup=1, min_time=0.0, min_repeats=3, max_time=2.0),
        model_level=not args.no_model,
        cache=args.cache,
    )
    rows: list[dict] = []
    model = opt_125m()
    layer = None if args.no_llama else llama_up_proj()
    for sparsity in (float(s) for s in args.sparsities.split(",")):
        console.print(f"[dim]s={sparsity:g}: opt-125m ({time.perf_counter() - start:.0f} s)[/]")
        rows += bench_opt(sparsity, layer_config, model_config, model)
        if layer is not None:
            console.print(
                f"[dim]s={sparsity:g}: llama up_proj 11008x4096 ({time.perf_counter() - start:.0f} s)[/]"
            )
            rows += bench_llama(sparsity, layer_config, layer)
        # Partial results survive an interrupted run.
        env = environment(torch.device("cpu"), torch.float32, args.cache)
        save(args.out, env, layer_config, model_config, start, rows)
    print_layer_table(rows)
    print_model_table(rows)
    env = environment(torch.device("cpu"), torch.float32, args.cache)
    console.print(
        f"{machine_line(env['machine'])}, BLAS {env['blas']}, MKL {env['mkl_available']}, "
        f"oneDNN {env['mkldnn_available']}, load average {env['load_average_1m']}, "
        f"{time.perf_counter() - start:.0f} s",
        highlight=False,
    )
    save(args.out, env, layer_config, model_config, start, rows, complete=True)
    console.print(f"written {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
