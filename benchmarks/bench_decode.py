"""Model-level decode and prefill of a Llama-shaped model larger than the last-level cache (issue 17).

A >= 400M-parameter Llama-shaped model is built from a config (random weights, nothing downloaded),
pruned to s = 0.5 (magnitude, per layer), and converted to each format (dense = the unpruned model,
masked, bitmask, csr16, auto).  It then times, interleaved in shuffled rounds after warm-up:

- decode with `generate()` and the KV cache at batch 1 and 4: greedy, `--new-tokens` tokens after a
  16-token prompt; the decode time is generate(new tokens) minus generate(1 token) of the same variant,
  both in the same rounds, so the prompt's prefill cancels out.  Tokens/s, speedup vs dense and the
  fraction of the model byte bound: bytes the dense model reads per token (every Linear weight,
  lm_head included; one embedding row) over the bytes the format reads;
- prefill of 1 x 64, 1 x 256 and 1 x 512 tokens (one forward without cache).

The model (1.75 GB of fp32 weights by default) is many times the LLC of any current x86 CPU, so each
forward streams its weights from memory: decode is cold by construction.  `auto` times every layer cold
at 1 token and at the largest prefill size (`--auto-tokens`, default 1 and 512: where sparse formats
gain least) and keeps a sparse format only where it is at least 0.90x dense's speed there.  `dense_copy`,
a second dense model timed in the same rounds, gives the run's A/A noise floor (its speedup would be 1.00
on a quiet machine).

    python benchmarks/bench_decode.py --threads 2 --out bench-results/decode.json
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import os
import statistics
import sys
import time
from pathlib import Path

import torch
from torch import nn

from prunescope.formats.base import SparseLinear
from prunescope.hardware.machine import machine_line
from prunescope.hardware.timing import Candidate, TimingPolicy, measure_interleaved
from prunescope.latency.benchmark import convert_copy, environment
from prunescope.layers import prunable_layers
from prunescope.pruning import PruneSpec, prune

FORMATS = ("dense", "dense_copy", "masked", "bitmask", "csr16", "auto")
# A second dense model, timed like the others: its ratio to dense is the run's A/A noise floor.
CONTROL = "dense_copy"


def llama(
    hidden: int, intermediate: int, layers: int, heads: int, vocab: int, dtype: torch.dtype
) -> nn.Module:
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=vocab,
        hidden_size=hidden,
        intermediate_size=intermediate,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=heads,
        max_position_embeddings=2048,
        tie_word_embeddings=False,
    )
    model = LlamaForCausalLM(config).to(dtype).eval().requires_grad_(False)
    for (
        p
    ) in model.parameters():  # transformers' init leaves some weights at exactly 0/1; make them all random
        if p.dim() == 2:
            nn.init.normal_(p, std=0.02)
    return model


def decode_bytes(model: nn.Module) -> int:
    """Bytes one decode step reads: every Linear (dense or sparse) weight once, plus one embedding row."""
    total = 0
    for module in model.modules():
        if isinstance(module, SparseLinear):
            total += module.stored_bytes()
        elif isinstance(module, nn.Linear):
            total += sum(t.numel() * t.element_size() for t in module.parameters())
        elif isinstance(module, nn.Embedding):
            total += module.weight.shape[1] * module.weight.element_size()
    return total


def _generate(model: nn.Module, prompt: torch.Tensor, tokens: int):
    def run() -> None:
        model.generate(
            prompt,
            attention_mask=torch.ones_like(prompt),
            max_new_tokens=tokens,
            min_new_tokens=tokens,
            do_sample=False,
            use_cache=True,
            pad_token_id=0,
        )

    return run


def _stats(samples: tuple[float, ...]) -> dict:
    return {
        "median_s": statistics.median(samples),
        "min_s": min(samples),
        "max_s": max(samples),
        "n": len(samples),
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=torch.get_num_threads())
    ap.add_argument("--hidden", type=int, default=1536)
    ap.add_argument("--intermediate", type=int, default=4096)
    ap.add_argument("--layers", type=int, default=12)
    ap.add_argument("--heads", type=int, default=12)
    ap.add_argument("--vocab", type=int, default=32000)
    ap.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32")
    ap.add_argument("--sparsity", type=float, default=0.5)
    ap.add_argument("--formats", default=",".join(FORMATS))
    ap.add_argument("--batches", default="1,4")
    ap.add_argument("--new-tokens", type=int, default=16)
    ap.add_argument("--prefill", default="64,256,512", help="prefill lengths at batch 1")
    ap.add_argument(
        "--auto-tokens", default="1,512", help="token counts auto times each layer at (decode first)"
    )
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args(argv)

    torch.set_num_threads(args.threads)
    dtype = getattr(torch, args.dtype)
    formats = [f.strip() for f in args.formats.split(",") if f.strip()]
    batches = [int(b) for b in args.batches.split(",")]
    prefill = [int(p) for p in args.prefill.split(",") if p.strip()]
    auto_tokens = tuple(int(n) for n in args.auto_tokens.split(","))
    policy = TimingPolicy(warmup=1, min_time=0.0, min_repeats=args.repeats, max_time=math.inf)

    start = time.perf_counter()
    dense = llama(args.hidden, args.intermediate, args.layers, args.heads, args.vocab, dtype)
    params = sum(p.numel() for p in dense.parameters())
    names = list(prunable_layers(dense))
    pruned = copy.deepcopy(dense)
    spec = PruneSpec.create("magnitude", args.sparsity, scope="layer")
    prune(pruned, {n: pruned.get_submodule(n) for n in names}, spec, progress=False)
    env = environment(torch.device("cpu"), dtype, "cold")
    print(f"# {machine_line(env['machine'])}; torch {torch.__version__}", flush=True)
    took = time.perf_counter() - start
    print(f"# Llama-shaped, {params / 1e6:.0f}M parameters, {args.dtype}, {len(names)} pruned layers, "
          f"s = {args.sparsity}, built and pruned in {took:.0f} s", flush=True)  # fmt: skip
    variants: dict[str, nn.Module] = {}
    build_s: dict[str, float] = {}
    for name in formats:
        t0 = time.perf_counter()
        if name == "dense":
            variants[name] = dense
        elif name == CONTROL:
            variants[name] = copy.deepcopy(dense)
        elif name == "masked":
            variants[name] = pruned
        else:
            settings = {"block_size": 16, "n_tokens": auto_tokens, "cache": "cold"}
            variants[name] = convert_copy(pruned, names, name, settings).eval()
        build_s[name] = time.perf_counter() - t0
        print(f"# built {name} in {build_s[name]:.0f} s", flush=True)
    choices: dict[str, int] = {}
    if "auto" in variants:
        for module in variants["auto"].modules():
            if hasattr(module, "auto_choice"):
                choices[module.auto_choice] = choices.get(module.auto_choice, 0) + 1
        print(f"# auto chose {choices}", flush=True)

    # outputs agree with the masked model (same pruned weights) before anything is timed
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, args.vocab, (1, 16), generator=g)
    with torch.inference_mode():
        reference = variants.get("masked", pruned)(ids).logits.double()
        errors = {
            n: float((m(ids).logits.double() - reference).abs().max() / reference.abs().max())
            for n, m in variants.items()
            if n not in ("dense", CONTROL)
        }
    print(f"# max rel. logits error vs masked: { {k: f'{v:.1e}' for k, v in errors.items()} }", flush=True)
    read = {n: decode_bytes(m) for n, m in variants.items()}
    bound = {n: read["dense"] / read[n] for n in variants} if "dense" in read else {}

    rows = []
    with torch.inference_mode():
        for batch in batches:
            prompt = torch.randint(0, args.vocab, (batch, 16), generator=g)
            candidates = {}
            for n, m in variants.items():
                candidates[f"{n}/long"] = Candidate(_generate(m, prompt, args.new_tokens))
                candidates[f"{n}/short"] = Candidate(_generate(m, prompt, 1))
            timings = measure_interleaved(candidates, policy)
            decode = {
                n: statistics.median(
                    a - b
                    for a, b in zip(timings[f"{n}/long"].samples, timings[f"{n}/short"].samples, strict=True)
                )
                for n in variants
            }
            for n in variants:
                tps = batch * (args.new_tokens - 1) / decode[n]
                speedup = decode["dense"] / decode[n] if "dense" in decode else math.nan
                rows.append(
                    {
                        "kind": "decode",
                        "batch": batch,
                        "new_tokens": args.new_tokens,
                        "format": n,
                        "decode_s": decode[n],
                        "tokens_per_s": tps,
                        "speedup": speedup,
                        "byte_bound": bound.get(n, math.nan),
                        "fraction_of_bound": speedup / bound[n] if bound else math.nan,
                        "generate_long": _stats(timings[f"{n}/long"].samples),
                        "generate_short": _stats(timings[f"{n}/short"].samples),
                    }
                )
                print(
                    f"decode  b={batch} {n:>8}: {tps:8.2f} tok/s  speedup {speedup:5.2f}  "
                    f"bound {bound.get(n, math.nan):4.2f}  fraction {rows[-1]['fraction_of_bound']:4.2f}",
                    flush=True,
                )
        for length in prefill:
            tokens = torch.randint(0, args.vocab, (1, length), generator=g)
            candidates = {
                n: Candidate(lambda m=m, t=tokens: m(t, use_cache=False)) for n, m in variants.items()
            }
            timings = measure_interleaved(candidates, policy)
            for n in variants:
                med = timings[n].median
                speedup = timings["dense"].median / med if "dense" in timings else math.nan
                rows.append(
                    {
                        "kind": "prefill",
                        "batch": 1,
                        "seqlen": length,
                        "format": n,
                        **_stats(timings[n].samples),
                        "tokens_per_s": length / med,
                        "speedup": speedup,
                    }
                )
                print(
                    f"prefill 1x{length} {n:>8}: {length / med:8.1f} tok/s  speedup {speedup:5.2f}",
                    flush=True,
                )
    best = {}
    for row in rows:
        key = (row["kind"], row["batch"], row.get("seqlen"))
        if row["format"] not in ("auto", CONTROL):
            best[key] = max(best.get(key, 0.0), row["speedup"])
    for row in rows:
        if row["format"] == "auto":
            row["auto_vs_best"] = row["speedup"] / best[(row["kind"], row["batch"], row.get("seqlen"))]
            print(f"auto / best format, {row['kind']} b={row['batch']} {row.get('seqlen') or ''}: "
                  f"{row['auto_vs_best']:.2f}")  # fmt: skip
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        payload = {
            "meta": {
                "environment": {k: v for k, v in env.items() if k != "torch_config"},
                "model": {
                    "parameters": params,
                    "hidden": args.hidden,
                    "intermediate": args.intermediate,
                    "layers": args.layers,
                    "heads": args.heads,
                    "vocab": args.vocab,
                    "dtype": args.dtype,
                    "sparsity": args.sparsity,
                    "pruning": "magnitude, per layer",
                },
                "decode_bytes": read,
                "byte_bound": bound,
                "build_s": build_s,
                "auto_choices": choices,
                "max_rel_err_vs_masked": errors,
                "repeats": args.repeats,
                "python": sys.version.split()[0],
                "load_average": os.getloadavg(),
                "timing": "interleaved shuffled rounds after 1 warm-up; decode = generate(new) - generate(1)",
            },
            "rows": rows,
        }
        args.out.write_text(json.dumps(payload, indent=2))
        print(f"# wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
