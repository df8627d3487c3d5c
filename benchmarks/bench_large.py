"""Checkpoints larger than memory: inspect time and peak memory on a 7B-shaped checkpoint header, and
streaming-prune peak memory against checkpoint size on a random checkpoint of about 1 GB.

    python benchmarks/bench_large.py --out results/bench_large.json [--prune-mb 1000] [--workdir DIR]

The 7B checkpoint is Llama-2-7B-shaped (float16, 3 shards) with real safetensors headers over sparse files
(`truncate`): inspect never reads weight bytes, so it needs no 13 GB of disk. Each command runs in a child
process through `prunescope.checkpoint.memwatch`, which reports the peak resident set (VmHWM) and the
sampled peak of anonymous memory, each minus its value just before the command (imports excluded).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from transformers import LlamaConfig

from prunescope.checkpoint.synthetic import write_random_checkpoint

LLAMA_7B = dict(
    vocab_size=32000,
    hidden_size=4096,
    intermediate_size=11008,
    num_hidden_layers=32,
    num_attention_heads=32,
    num_key_value_heads=32,
    max_position_embeddings=4096,
    tie_word_embeddings=False,
    torch_dtype="float16",
)


def measured(report: Path, *args: str) -> dict:
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    command = [sys.executable, "-m", "prunescope.checkpoint.memwatch", str(report), "--", *args]
    start = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, env=env)
    if done.returncode:
        raise SystemExit(f"{' '.join(args)} failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
    result = json.loads(report.read_text())
    return {
        "command": " ".join(args),
        "seconds": result["seconds"],
        "process_seconds": time.perf_counter() - start,
        "peak_rss_bytes": result["vm_hwm"],
        "command_rss_bytes": result["vm_hwm"] - result["baseline_rss"],
        "command_anon_bytes": result["peak_anon"] - result["baseline_anon"],
        "baseline_rss_bytes": result["baseline_rss"],
    }


def prune_config(target_bytes: int) -> LlamaConfig:
    """Llama blocks of ~113 MB (float32) plus 98 MB embedding and lm_head, up to about `target_bytes`."""
    hidden, intermediate, vocab = 1536, 4096, 16000
    block = 4 * (4 * hidden * hidden + 3 * hidden * intermediate)
    layers = max(1, (target_bytes - 2 * 4 * vocab * hidden) // block)
    return LlamaConfig(
        vocab_size=vocab,
        hidden_size=hidden,
        intermediate_size=intermediate,
        num_hidden_layers=int(layers),
        num_attention_heads=12,
        num_key_value_heads=12,
        max_position_embeddings=512,
        tie_word_embeddings=False,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("results/bench_large.json"))
    parser.add_argument("--prune-mb", type=int, default=1000, help="size of the random checkpoint to prune")
    parser.add_argument("--sparsity", type=float, default=0.5)
    parser.add_argument("--no-calibrated", dest="calibrated", action="store_false", help="skip wanda")
    parser.add_argument("--workdir", type=Path, default=None, help="scratch folder (default: a temp one)")
    args = parser.parse_args()

    work = Path(args.workdir or tempfile.mkdtemp(prefix="bench-large-"))
    work.mkdir(parents=True, exist_ok=True)
    results: dict = {
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
    }
    try:
        header = work / "llama-7b-header"
        shutil.rmtree(header, ignore_errors=True)
        config = LlamaConfig(**LLAMA_7B)
        import torch

        size = write_random_checkpoint(
            header, config, dtype=torch.float16, max_shard_bytes=5 * 10**9, tokenizer=False, header_only=True
        )
        row = measured(work / "inspect.json", "inspect", str(header), "--out", str(work / "inspect-7b"))
        summary = json.loads((work / "inspect-7b" / "summary.json").read_text())
        results["inspect_7b"] = {
            **row,
            "checkpoint_bytes": size,
            "params": summary["params"],
            "inspect_seconds_in_process": summary["seconds"],
        }

        source = work / "random"
        shutil.rmtree(source, ignore_errors=True)
        start = time.perf_counter()
        size = write_random_checkpoint(
            source, prune_config(args.prune_mb * 10**6), max_shard_bytes=500 * 10**6
        )
        write_seconds = time.perf_counter() - start
        out = work / "pruned"
        shutil.rmtree(out, ignore_errors=True)
        row = measured(
            work / "prune.json",
            "prune",
            str(source),
            "--out",
            str(out),
            "--sparsity",
            str(args.sparsity),
            "--format",
            "both",
            "--no-progress",
        )
        record = json.loads((out / "prune.json").read_text())
        results["prune"] = {
            **row,
            "checkpoint_bytes": size,
            "write_seconds": write_seconds,
            "sparsity": args.sparsity,
            "hf_bytes": record["outputs"]["hf"]["bytes"],
            "sparse_bytes": record["outputs"]["sparse"]["bytes"],
            "command_rss_over_checkpoint": row["command_rss_bytes"] / size,
            "command_anon_over_checkpoint": row["command_anon_bytes"] / size,
        }
        if args.calibrated:
            # Wanda holds one decoder block (float32) and its calibration activations at a time.
            shutil.rmtree(work / "wanda", ignore_errors=True)
            row = measured(
                work / "wanda.json",
                "prune",
                str(source),
                "--out",
                str(work / "wanda"),
                "--method",
                "wanda",
                "--sparsity",
                str(args.sparsity),
                "--calib-samples",
                "16",
                "--calib-seqlen",
                "128",
                "--no-progress",
            )
            config = prune_config(args.prune_mb * 10**6)
            h, m = config.hidden_size, config.intermediate_size
            results["prune_wanda"] = {
                **row,
                "checkpoint_bytes": size,
                "block_bytes": 4 * (4 * h * h + 3 * h * m),
                "command_anon_over_checkpoint": row["command_anon_bytes"] / size,
            }
    finally:
        if args.workdir is None:
            shutil.rmtree(work, ignore_errors=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")

    mb = 1e6
    print(f"{'measurement':<34}{'value':>18}")
    i, p = results["inspect_7b"], results["prune"]
    rows = [
        ("7B header: checkpoint size", f"{i['checkpoint_bytes'] / 1e9:.2f} GB"),
        ("7B header: inspect (in process)", f"{i['inspect_seconds_in_process']:.2f} s"),
        ("7B header: inspect (process)", f"{i['process_seconds']:.2f} s"),
        ("7B header: peak RSS (whole)", f"{i['peak_rss_bytes'] / mb:.0f} MB"),
        ("7B header: RSS above imports", f"{i['command_rss_bytes'] / mb:.0f} MB"),
        ("prune: checkpoint size", f"{p['checkpoint_bytes'] / mb:.0f} MB"),
        ("prune: seconds", f"{p['seconds']:.1f} s"),
        ("prune: peak RSS (whole)", f"{p['peak_rss_bytes'] / mb:.0f} MB"),
        ("prune: RSS above imports", f"{p['command_rss_bytes'] / mb:.0f} MB"),
        ("prune: anon above imports", f"{p['command_anon_bytes'] / mb:.0f} MB"),
        ("prune: RSS above imports / ckpt", f"{p['command_rss_over_checkpoint']:.3f}"),
        ("hf checkpoint", f"{p['hf_bytes'] / mb:.0f} MB"),
        ("sparse checkpoint", f"{p['sparse_bytes'] / mb:.0f} MB"),
    ]
    if "prune_wanda" in results:
        w = results["prune_wanda"]
        rows += [
            ("wanda: seconds", f"{w['seconds']:.1f} s"),
            ("wanda: decoder block (float32)", f"{w['block_bytes'] / mb:.0f} MB"),
            ("wanda: RSS above imports", f"{w['command_rss_bytes'] / mb:.0f} MB"),
            ("wanda: anon above imports", f"{w['command_anon_bytes'] / mb:.0f} MB"),
        ]
    for label, value in rows:
        print(f"{label:<34}{value:>18}")
    print(f"written: {args.out}")


if __name__ == "__main__":
    main()
