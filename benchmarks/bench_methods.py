"""Compare pruning methods on one model: time, peak memory, perplexity and top-1 agreement with dense.

    python benchmarks/bench_methods.py --out methods.json
    python benchmarks/bench_methods.py --peer-python /tmp/peer-venv/bin/python  # + llm-compressor
    python benchmarks/bench_methods.py --methods wanda,ria,wanda+owl,wanda+dsnot --sparsities 0.5,0.6,0.7 \
        --patterns unstructured                                                  # the methods after Wanda

Every method prunes the same model (restored to dense in between) at each `--sparsities` value (default
50, 60, 70 %) unstructured and at 2:4, with the same calibration windows; a method may carry OWL allocation
and / or DSnoT refinement as in a sweep's method label (`wanda+owl`, `wanda+dsnot`). Behaviour is measured
on the same evaluation batches against one dense reference (`prunescope.behaviour`, the convention of
`prunescope study`).

Peak memory: the process's resident-set high-water mark is reset before each run (Linux: writing 5 to
/proc/self/clear_refs resets VmHWM), so `peak_rss_delta_mb` is the extra resident memory that run needed over
what was resident before it. Where the reset is not possible the figure is the process-wide ru_maxrss.

With `--peer-python`, an independent implementation (llm-compressor's SparseGPTModifier and
WandaPruningModifier, installed in a separate virtual environment, never a dependency of prunescope) prunes
the same model folder with the same calibration tensors; its pruned weights are loaded back here and scored
with the same evaluation, next to the mask overlap with ours.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import re
import resource
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch  # noqa: E402

from prunescope.evaluation.behaviour import compare, compute_reference  # noqa: E402
from prunescope.evaluation.corpus import load_texts, make_batches, tokenize_windows  # noqa: E402
from prunescope.experiments.sweep import parse_method_label  # noqa: E402
from prunescope.layers import linear_weight, prunable_layers  # noqa: E402
from prunescope.models import load_model, resolve_model_path  # noqa: E402
from prunescope.pruning import PruneSpec, prune, restore  # noqa: E402
from prunescope.pruning.calibration import calibration_samples  # noqa: E402


# ------------------------------------------------------------------------------------------------ memory
def _status_kb(field: str) -> int | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return None


def reset_peak_rss() -> bool:
    # Hand freed heap pages back first (glibc keeps them resident), or a run that reuses memory freed by the
    # previous run would show no growth at all.
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def peak_rss_mb() -> float:
    hwm = _status_kb("VmHWM")
    if hwm is None:
        hwm = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return hwm / 1024


def rss_mb() -> float:
    rss = _status_kb("VmRSS")
    return (rss or 0) / 1024


# ------------------------------------------------------------------------------------------------- peer
PEER_SCRIPT = textwrap.dedent(
    """
    import json, sys, time, torch
    from safetensors.torch import save_file
    from transformers import AutoModelForCausalLM
    from datasets import Dataset
    from llmcompressor import oneshot
    from llmcompressor.modifiers.pruning import WandaPruningModifier
    from llmcompressor.modifiers.obcq import SparseGPTModifier

    job = json.loads(sys.argv[1])
    torch.set_num_threads(job["threads"])
    samples = torch.load(job["calibration"])
    data = Dataset.from_dict({
        "input_ids": [s[0].tolist() for s in samples],
        "attention_mask": [[1] * s.shape[1] for s in samples],
    })
    model = AutoModelForCausalLM.from_pretrained(job["model"], dtype=torch.float32)
    structure = "0:0" if job["pattern"] == "unstructured" else job["pattern"]
    common = dict(sparsity=job["sparsity"], mask_structure=structure, targets=job["targets"])
    if job["method"] == "sparsegpt":
        modifier = SparseGPTModifier(block_size=job["blocksize"], dampening_frac=job["damp"], **common)
    else:
        modifier = WandaPruningModifier(**common)
    start = time.perf_counter()
    oneshot(model=model, dataset=data, recipe=[modifier], num_calibration_samples=len(samples),
            max_seq_length=samples[0].shape[1], shuffle_calibration_samples=False)
    seconds = time.perf_counter() - start
    modules = dict(model.named_modules())
    save_file({n: modules[n].weight.detach().contiguous() for n in job["layers"]}, job["out"])
    print(json.dumps({"seconds": seconds}))
    """
)


def run_peer(peer_python: str, job: dict) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        script = Path(tmp) / "peer.py"
        script.write_text(PEER_SCRIPT)
        result = subprocess.run(
            [peer_python, str(script), json.dumps(job)], capture_output=True, text=True, timeout=1800
        )
    if result.returncode != 0:
        raise RuntimeError(result.stderr.strip().splitlines()[-1] if result.stderr.strip() else "peer failed")
    return json.loads(result.stdout.strip().splitlines()[-1])


def peer_compare(args, layers, spec, ours: dict, calibration_file: str, evaluate) -> dict:
    """Prune with the peer, load its weights here, score them; compare masks and weights with `ours`."""
    from safetensors.torch import load_file

    with tempfile.TemporaryDirectory() as tmp:
        out = str(Path(tmp) / "peer.safetensors")
        job = {
            "model": resolve_model_path(args.model),
            "calibration": calibration_file,
            "method": spec.method,
            "pattern": str(spec.pattern),
            "sparsity": spec.sparsity,
            "blocksize": spec.method_options.blocksize,
            "damp": spec.method_options.damp,
            "targets": [f"re:^{re.escape(name)}$" for name in layers],
            "layers": list(layers),
            "threads": torch.get_num_threads(),
            "out": out,
        }
        meta = run_peer(args.peer_python, job)
        pruned = load_file(out)
    saved = {name: linear_weight(module).detach().clone() for name, module in layers.items()}
    agree = total = 0
    by_layer: dict[str, float] = {}
    diff = norm = 0.0
    with torch.no_grad():
        for name, module in layers.items():
            weight = pruned[name]
            if weight.shape != linear_weight(module).shape:
                weight = weight.T  # Conv1D stores (in, out)
            linear_weight(module).copy_(weight)
            same = int(((weight == 0) == (ours[name] == 0)).sum())
            by_layer[name] = same / weight.numel()
            agree += same
            diff += float((weight.float() - ours[name].float()).pow(2).sum())
            norm += float(weight.float().pow(2).sum())
            total += weight.numel()
        zeros = sum(int((linear_weight(m) == 0).sum()) for m in layers.values())
        behaviour = evaluate(f"peer {spec.method} {spec.pattern}")
        for name, module in layers.items():
            linear_weight(module).copy_(saved[name])
    return {
        "peer": "llm-compressor",
        "peer_seconds": meta["seconds"],
        "peer_sparsity": zeros / total,
        "mask_agreement": agree / total,
        "weight_relative_difference": (diff / norm) ** 0.5,
        # Where masks part: the first layer sees identical inputs; later ones inherit numeric drift.
        "mask_agreement_by_layer": by_layer,
        "peer_perplexity": behaviour.perplexity,
        "peer_top1_agreement": behaviour.top1_agreement,
    }


# ------------------------------------------------------------------------------------------------- main
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="demo")
    parser.add_argument("--methods", default="magnitude,random,wanda,sparsegpt,ria,wanda+owl,wanda+dsnot")
    parser.add_argument("--patterns", default="unstructured,2:4")
    parser.add_argument("--sparsities", default="0.5,0.6,0.7", help="comma list, unstructured pattern only")
    parser.add_argument("--refine-threshold", type=float, default=0.1, help="DSnoT's |error| threshold")
    parser.add_argument("--calib-samples", type=int, default=128)
    parser.add_argument("--calib-seqlen", type=int, default=None, help="default: the evaluation seqlen")
    parser.add_argument("--calibration", default=None, help="text file, or builtin (default)")
    parser.add_argument(
        "--seqlen", type=int, default=None, help="evaluation window; default min(256, context)"
    )
    parser.add_argument("--max-tokens", type=int, default=8192, help="evaluation tokens")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--peer-python", default=None, help="python of a venv with llmcompressor installed")
    parser.add_argument("--out", default=None, help="write the results as JSON here")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    loaded = load_model(args.model, "float32", "cpu")
    model, tokenizer = loaded.model, loaded.tokenizer
    seqlen = args.seqlen or min(256, loaded.context_length)
    calib_seqlen = args.calib_seqlen or seqlen
    layers = prunable_layers(model)
    texts = load_texts(None, args.model)
    batches = make_batches(
        tokenize_windows(tokenizer, texts, seqlen, args.max_tokens), 8, tokenizer.pad_token_id
    )
    start = time.perf_counter()
    calibration = calibration_samples(
        tokenizer, args.calibration, args.model, args.calib_samples, calib_seqlen, seed=args.seed
    )
    calibration_seconds = time.perf_counter() - start
    reference, dense = compute_reference(model, batches, progress=False)

    def evaluate(label: str):
        return compare(model, batches, reference, label, progress=False)

    rows = [{"method": "dense", "pattern": "-", "perplexity": dense.perplexity, "top1_agreement": 1.0}]
    calib_dir = tempfile.TemporaryDirectory()
    calibration_file = str(Path(calib_dir.name) / "calibration.pt")
    torch.save(calibration, calibration_file)
    points = [
        (pattern, float(s) if pattern == "unstructured" else None, label)
        for pattern in args.patterns.split(",")
        for s in (args.sparsities.split(",") if pattern == "unstructured" else [None])
        for label in args.methods.split(",")
    ]
    for pattern, target, label in points:
        if pattern != "unstructured" and "owl" in label:
            continue  # OWL allocates unstructured sparsity only
        method, extensions = parse_method_label(label)
        spec = PruneSpec.create(
            method, target, pattern, seed=args.seed, refine_threshold=args.refine_threshold, **extensions
        )
        exact = reset_peak_rss()
        before = rss_mb()
        start = time.perf_counter()
        record = prune(model, layers, spec, calibration if spec.needs_calibration else None, progress=False)
        seconds = time.perf_counter() - start
        peak = peak_rss_mb()
        behaviour = evaluate(f"{label} {pattern} {spec.sparsity:g}")
        # Our pruned weights, kept only to compare with the peer's.
        ours = {}
        if args.peer_python:
            ours = {name: linear_weight(m).detach().clone() for name, m in layers.items()}
        row = {
            "method": label,
            "pattern": pattern,
            "target_sparsity": spec.sparsity,
            "sparsity": record.pruned_count() / record.total_count(),
            "perplexity": behaviour.perplexity,
            "top1_agreement": behaviour.top1_agreement,
            "kl_mean": behaviour.kl_mean,
            "prune_seconds": seconds,
            "peak_rss_mb": peak,
            "peak_rss_delta_mb": peak - before if exact else None,
            "restore_record_mb": record.nbytes / 2**20,
        }
        restore(model, record)
        # The peer has Wanda and SparseGPT only, without OWL / DSnoT.
        if args.peer_python and method in ("wanda", "sparsegpt") and not extensions:
            try:
                row.update(peer_compare(args, layers, spec, ours, calibration_file, evaluate))
            except Exception as error:  # report, keep benchmarking
                row["peer_error"] = f"{type(error).__name__}: {error}"[:500]
        rows.append(row)
        print(
            f"{label:>16} {pattern:>12} {spec.sparsity:4.2f}  ppl {row['perplexity']:8.3f}  "
            f"top1 {row['top1_agreement']:.4f}  {seconds:6.1f} s",
            file=sys.stderr,
        )
    calib_dir.cleanup()

    result = {
        "model": args.model,
        "evaluation": {
            "seqlen": seqlen,
            "tokens": dense.predicted_tokens,
            "windows": sum(len(b.input_ids) for b in batches),
        },
        "calibration": {
            "samples": args.calib_samples,
            "seqlen": calib_seqlen,
            "source": args.calibration or "builtin",
            "seconds_to_build": calibration_seconds,
        },
        "refine_threshold": args.refine_threshold,
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "rows": rows,
    }
    print_table(rows)
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=1))


def print_table(rows: list[dict]) -> None:
    peer = any("peer_perplexity" in r or "peer_error" in r for r in rows)
    header = (
        f"{'method':>16} {'pattern':>12} {'s':>4} {'ppl':>9} {'top1':>7} {'KL':>7} {'time s':>7}"
        f" {'peak MB':>8} {'+MB':>7}"
    )
    if peer:
        header += f" {'peer ppl':>9} {'peer top1':>9} {'mask agree':>10} {'W diff':>8}"
    print(header)
    for r in rows:
        target = f"{r['target_sparsity']:4.2f}" if "target_sparsity" in r else "   -"
        line = f"{r['method']:>16} {r['pattern']:>12} {target} {r['perplexity']:9.3f}"
        line += f" {r['top1_agreement']:7.4f}"
        if "prune_seconds" in r:
            delta = r["peak_rss_delta_mb"] if r["peak_rss_delta_mb"] is not None else float("nan")
            line += f" {r['kl_mean']:7.4f} {r['prune_seconds']:7.2f} {r['peak_rss_mb']:8.0f} {delta:7.0f}"
        if "peer_perplexity" in r:
            line += (
                f" {r['peer_perplexity']:9.3f} {r['peer_top1_agreement']:9.4f} {r['mask_agreement']:10.4f}"
                f" {r['weight_relative_difference']:8.2e}"
            )
        elif "peer_error" in r:
            line += f"  peer failed: {r['peer_error'][:80]}"
        print(line)


if __name__ == "__main__":
    main()
