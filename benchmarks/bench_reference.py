"""The dense reference at real vocabulary scale (issue 22): disk, RAM and time of `prunescope study` on a
Llama-shaped model with a 131,072-token vocabulary (hidden 64, 2 layers, tied embeddings, random init, the
demo tokenizer) over >= 100k tokens (joined protocol, seqlen 256, variants dense and masked).

Measured in one run:
- the study as a subprocess: wall time, peak RSS (os.wait4), the peak disk use of its work folder (polled
  every 0.1 s), and the evaluation time it records (dense reference + masked variant, run.json timings);
- in this process, on the same batches: the forward passes plus float32 log-softmax alone, once per variant
  (dense and masked need two), i.e. what any evaluation of two variants must spend.
The machine is named (lscpu model, caches, threads). JSON to --out; not part of the test suite.

    python benchmarks/bench_reference.py --out bench-results/reference.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import sysconfig
import tempfile
import threading
import time
from pathlib import Path

import torch

VOCAB, HIDDEN, LAYERS, INTERMEDIATE, HEADS = 131_072, 64, 2, 256, 4
SEQLEN = 256
MODULES = [  # large, stable standard-library modules, until the token budget is reached
    "typing.py",
    "argparse.py",
    "inspect.py",
    "subprocess.py",
    "tarfile.py",
    "pydoc.py",
    "doctest.py",
    "turtle.py",
    "configparser.py",
    "logging/__init__.py",
    "email/_header_value_parser.py",
    "collections/__init__.py",
    "dataclasses.py",
    "functools.py",
    "enum.py",
    "zipfile/__init__.py",
    "zipfile.py",
    "shutil.py",
    "os.py",
    "difflib.py",
    "decimal.py",
    "_pydecimal.py",
    "pickle.py",
    "mailbox.py",
    "imaplib.py",
    "ftplib.py",
    "smtplib.py",
    "urllib/request.py",
    "http/client.py",
    "http/server.py",
]


def machine() -> dict:
    info: dict = {
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
    }
    try:
        text = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
        keep = ("Model name", "CPU(s)", "Thread(s) per core", "L1d cache", "L2 cache", "L3 cache")
        for line in text.splitlines():
            key, _, value = line.partition(":")
            if key.strip() in keep:
                info[key.strip()] = value.strip()
    except (OSError, subprocess.CalledProcessError):
        pass
    info["torch_threads"] = torch.get_num_threads()
    info["load_average_at_start"] = os.getloadavg()
    return info


def build_model(folder: Path) -> int:
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from prunescope.demo.corpus import DEMO_MODEL_DIR

    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=VOCAB,
        hidden_size=HIDDEN,
        intermediate_size=INTERMEDIATE,
        num_hidden_layers=LAYERS,
        num_attention_heads=HEADS,
        num_key_value_heads=HEADS,
        max_position_embeddings=SEQLEN,
        tie_word_embeddings=True,
    )
    model = LlamaForCausalLM(config)
    model.save_pretrained(folder)
    AutoTokenizer.from_pretrained(DEMO_MODEL_DIR).save_pretrained(folder)  # its ids fit the vocabulary
    return sum(p.numel() * p.element_size() for p in model.parameters())


def build_corpus(path: Path, tokenizer, tokens: int) -> int:
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    count, lines = 0, []
    for name in MODULES:
        file = stdlib / name
        if not file.is_file():
            continue
        text = file.read_text(encoding="utf-8", errors="replace")
        lines.append(json.dumps({"text": text}))
        count += len(tokenizer(text, verbose=False)["input_ids"])
        if count >= tokens + SEQLEN:
            break
    if count < tokens:
        raise SystemExit(f"the standard library modules give only {count} tokens")
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return count


def folder_bytes(folder: Path) -> int:
    total = 0
    for root, _, files in os.walk(folder):
        for name in files:
            try:
                total += os.lstat(os.path.join(root, name)).st_size
            except OSError:
                pass
    return total


def run_study(command: list[str], watch: Path) -> dict:
    """Wall time, peak RSS and the peak bytes under `watch` (polled) of one study subprocess."""
    peak = {"bytes": 0}
    done = threading.Event()

    def poll() -> None:
        while not done.is_set():
            peak["bytes"] = max(peak["bytes"], folder_bytes(watch))
            time.sleep(0.1)

    thread = threading.Thread(target=poll, daemon=True)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    start = time.perf_counter()
    thread.start()
    process = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    output = process.stdout.read().decode(errors="replace")
    _, status, usage = os.wait4(process.pid, 0)
    seconds = time.perf_counter() - start
    done.set()
    thread.join()
    if status != 0:
        raise RuntimeError(f"study failed:\n{output[-3000:]}")
    return {
        "wall_s": seconds,
        "peak_rss_bytes": usage.ru_maxrss * 1024,
        "peak_work_disk_bytes": peak["bytes"],
    }


@torch.no_grad()
def forward_only(folder: Path, corpus: Path, max_tokens: int, passes: int = 2) -> dict:
    """Forward + float32 log-softmax over the study's own batches, `passes` times (one per variant)."""
    from prunescope.evaluation.behaviour import log_probs
    from prunescope.evaluation.corpus import make_batches
    from prunescope.evaluation.datasets import resolve
    from prunescope.evaluation.protocols import build
    from prunescope.experiments.evaluation_set import fit_batch_size
    from prunescope.models import load_model

    loaded = load_model(str(folder), "float32", "cpu")
    texts = resolve(str(corpus), str(folder), "evaluation", None)
    evaluation = build(loaded.tokenizer, texts, "joined", loaded.context_length, SEQLEN, max_tokens)
    batch_size = fit_batch_size(8, SEQLEN, VOCAB)
    batches = make_batches(evaluation.windows, batch_size, loaded.tokenizer.pad_token_id)
    seconds = []
    for _ in range(passes):
        start = time.perf_counter()
        for batch in batches:
            lp = log_probs(loaded.model, batch)
            del lp
        seconds.append(time.perf_counter() - start)
    return {
        "batches": len(batches),
        "batch_size": batch_size,
        "pass_seconds": seconds,
        "total_s": sum(seconds),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, default=Path("bench-results/reference.json"))
    parser.add_argument("--tokens", type=int, default=102_400, help="evaluation tokens (whole windows)")
    args = parser.parse_args()
    from transformers import AutoTokenizer

    from prunescope.demo.corpus import DEMO_MODEL_DIR

    results: dict = {"machine": machine(), "tokens": args.tokens, "vocab": VOCAB, "hidden": HIDDEN}
    with tempfile.TemporaryDirectory(prefix="bench-reference-") as tmp:
        tmp = Path(tmp)
        results["model_bytes"] = build_model(tmp / "model")
        corpus_tokens = build_corpus(
            tmp / "corpus.jsonl", AutoTokenizer.from_pretrained(DEMO_MODEL_DIR), args.tokens
        )
        results["corpus_tokens"] = corpus_tokens
        out = tmp / "runs" / "study"
        out.parent.mkdir()
        command = [
            sys.executable,
            "-c",
            "from prunescope.cli import app; app()",
            "study",
            "--model",
            str(tmp / "model"),
            "--corpus",
            str(tmp / "corpus.jsonl"),
            "--ppl-protocol",
            "joined",
            "--seqlen",
            str(SEQLEN),
            "--max-tokens",
            str(args.tokens),
            "--variants",
            "dense,masked",
            "--out",
            str(out),
            "--no-progress",
        ]
        study = run_study(command, out.parent)
        run = json.loads((out / "run.json").read_text())
        timings = run.get("timings_s", {})
        evaluation_s = timings.get("dense_reference", 0.0) + timings.get("variant_masked", 0.0)
        import pandas as pd

        summary = pd.read_csv(out / "summary.csv").set_index("variant")
        behaviour_s = float(summary["seconds"].sum())  # the compare passes themselves, dense + masked
        results["study"] = {
            **study,
            "timings_s": timings,
            "evaluation_s": evaluation_s,
            "behaviour_seconds": behaviour_s,
            "tokens_scored": run.get("evaluation", {}).get("tokens_scored"),
            "masked": summary.loc[
                "masked", ["top1_agreement", "kl_mean", "kl_mean_ci_low", "kl_mean_ci_high"]
            ].to_dict(),
        }
        forward = forward_only(tmp / "model", tmp / "corpus.jsonl", args.tokens)
        results["forward_log_softmax"] = forward
        results["evaluation_over_forward"] = evaluation_s / forward["total_s"]
        results["behaviour_over_forward"] = behaviour_s / forward["total_s"]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2, default=str) + "\n", encoding="utf-8")
    print(json.dumps(results, indent=2, default=str))


if __name__ == "__main__":
    main()
