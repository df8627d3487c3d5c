"""`make gpu-check`: everything prunescope does on a CUDA GPU, checked against the CPU in one run.

    python benchmarks/gpu_check.py [--out gpu-check.json] [--workdir DIR] [--dry-run] [--no-large]

Offline and installs nothing: it runs the project as installed in this Python (`pip install --no-deps -e .`
on a GPU host, so its own CUDA torch is used). In order:

1. `pytest tests/hardware/test_cuda*.py` (the CUDA tests; skipped on a host without CUDA).
2. The demo model: study on the CPU in float32 (the reference) and on the GPU in float16 and float32
   (dense perplexity within 0.5 % / 1e-4 of the CPU's; every format's top-1 within 1e-3 of masked), 2:4
   semi-structured (compute capability >= 8.0; refused in one line below), sweep, sensitivity, bench
   (speedup per format at 1 and 64 tokens, 2:4 at prefill), prune and evaluate, all with `--device cuda`.
3. A ~0.5B random-weight Llama (bfloat16 checkpoint, checkpoint/synthetic.py): `--dtype auto` picks
   bfloat16 on compute capability >= 8.0 and float16 below; evaluate in float16 on the GPU against float32
   on the CPU (0.5 %); study, prune and bench on the GPU.

It prints one table (check, expected, measured, ok) and writes it with the GPU's facts and every command's
output tail to a JSON file. Exit 0 when every check passed, 1 otherwise; without CUDA it says so and exits 0
(`--dry-run` prints the plan anywhere). Budget: about 8 minutes on one GPU (`--budget`, seconds).
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CLI = [sys.executable, "-c", "import sys; from prunescope.cli import app; sys.argv[0] = 'prunescope'; app()"]
ENV = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
FP16_PPL = 0.005  # dense perplexity, GPU float16 vs CPU float32: relative
FP32_PPL = 1e-4  # GPU float32 vs CPU float32
TOP1 = 1e-3  # every format's top-1 agreement vs masked
# ~0.5B parameters: 24 Llama blocks of 16.8M + 2 x 32.8M embedding and head, a 0.94 GB bfloat16 checkpoint.
SYNTHETIC = dict(
    vocab_size=32000,
    hidden_size=1024,
    intermediate_size=4096,
    num_hidden_layers=24,
    num_attention_heads=16,
    num_key_value_heads=16,
    max_position_embeddings=2048,
    tie_word_embeddings=False,
)


@dataclass
class Row:
    check: str
    expected: str
    measured: str
    ok: bool | None  # None: informational (a measured figure with no pass/fail)


@dataclass
class Run:
    """One command: its arguments, and after running, exit code, seconds and output tail."""

    name: str
    args: list[str]
    timeout: float = 240
    env: dict[str, str] = field(default_factory=dict)  # on top of os.environ and ENV
    code: int | None = None
    seconds: float = 0.0
    tail: str = ""


@dataclass
class Check:
    """Commands to run, then `judge(runs) -> rows` reading their output folders."""

    name: str
    runs: list[Run]
    judge: Callable[[list[Run]], list[Row]]
    needs: Callable[[], str | None] = lambda: None  # a reason to skip, else None
    rows: list[Row] = field(default_factory=list)


def run(command: Run, deadline: float) -> Run:
    left = deadline - time.monotonic()
    if left < 5:
        command.code, command.tail = -2, "skipped: out of the time budget"
        return command
    start = time.perf_counter()
    argv = command.args if command.args[0] != "prunescope" else [*CLI, *command.args[1:]]
    try:
        done = subprocess.run(
            argv,
            cwd=ROOT,
            env={**os.environ, **ENV, **command.env},
            capture_output=True,
            text=True,
            timeout=min(command.timeout, left),
        )
        command.code, output = done.returncode, done.stdout + done.stderr
    except subprocess.TimeoutExpired as error:
        command.code = -1
        output = f"{error.stdout or ''}{error.stderr or ''}\ntimed out after {error.timeout:.0f} s"
        output = output if isinstance(output, str) else output.decode(errors="replace")
    command.seconds = time.perf_counter() - start
    command.tail = output[-4000:]
    return command


def last_line(command: Run) -> str:
    lines = [line for line in command.tail.splitlines() if line.strip()]
    return lines[-1][:160] if lines else f"exit {command.code}"


def exited(command: Run, expected: int = 0) -> Row:
    ok = command.code == expected
    measured = f"exit {command.code} in {command.seconds:.0f} s" + ("" if ok else f": {last_line(command)}")
    return Row(f"{command.name}: runs", f"exit {expected}", measured, ok)


def summary(folder: Path) -> dict[str, dict[str, str]]:
    with open(folder / "summary.csv", newline="", encoding="utf-8") as handle:
        return {row["variant"]: row for row in csv.DictReader(handle)}


def relative(a: float, b: float) -> float:
    return abs(a - b) / abs(b) if b else math.inf


def compare_ppl(name: str, measured: float, reference: float, tolerance: float) -> Row:
    gap = relative(measured, reference)
    return Row(
        name, f"within {tolerance:g} of CPU {reference:.4f}", f"{measured:.4f} ({gap:.2e})", gap <= tolerance
    )


def top1_rows(name: str, table: dict[str, dict[str, str]]) -> list[Row]:
    masked = float(table["masked"]["top1_agreement"])
    rows = []
    for variant, row in table.items():
        if variant in ("dense", "masked"):
            continue
        gap = abs(float(row["top1_agreement"]) - masked)
        rows.append(Row(f"{name}: {variant} top-1 vs masked", f"<= {TOP1:g}", f"{gap:.2e}", gap <= TOP1))
    return rows


def safely(judge: Callable[[list[Run]], list[Row]]) -> Callable[[list[Run]], list[Row]]:
    """A judge that cannot read its output (missing file or column) fails its check, not the script."""

    def wrapped(runs: list[Run]) -> list[Row]:
        rows = [exited(r) for r in runs if r.code != 0]
        if rows:
            return rows
        try:
            return [exited(r) for r in runs] + judge(runs)
        except Exception as error:  # noqa: BLE001 - reported as a failed row
            return [Row(runs[-1].name, "readable results", f"{type(error).__name__}: {error}"[:160], False)]

    return wrapped


def gpu_facts() -> dict:
    import torch

    facts = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "cuda_available": torch.cuda.is_available(),
    }
    for name in ("transformers", "accelerate", "triton"):
        try:
            facts[name] = __import__(name).__version__
        except ImportError:
            facts[name] = None
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        facts |= {
            "gpu": props.name,
            "compute_capability": f"{props.major}.{props.minor}",
            "gpu_memory_bytes": props.total_memory,
            "l2_cache_bytes": getattr(props, "L2_cache_size", None),
            "gpu_count": torch.cuda.device_count(),
            "bf16_native": props.major >= 8,
        }
        if shutil.which("nvidia-smi"):
            query = ["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader", "-i", "0"]
            done = subprocess.run(query, capture_output=True, text=True)
            facts["driver"] = done.stdout.strip() or None
    return facts


def plan(work: Path, capability: tuple[int, int], large: bool, device: str = "cuda") -> list[Check]:
    demo = ["--model", "demo", "--no-progress", "--overwrite"]
    cuda = ["--device", device]
    inputs_on = "cuda:0" if device == "cuda" else device
    syn = work / "synthetic-0.5b"
    checks: list[Check] = []

    def pytest_rows(runs: list[Run]) -> list[Row]:
        command = runs[0]
        # pytest exits 5 when it collected nothing: the CUDA test files are missing here
        return [
            Row("pytest test_cuda*.py test_triton*.py", "all passed", last_line(command), command.code == 0)
        ]

    tests = sorted(str(p.relative_to(ROOT)) for p in (ROOT / "tests").rglob("test_cuda*.py"))
    # the Triton kernel's tests run compiled on the GPU here (on the CPU they run interpreted)
    tests += sorted(str(p.relative_to(ROOT)) for p in (ROOT / "tests").rglob("test_triton*.py"))
    # never a bare `pytest`: without test files it would run the whole suite
    pytest = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *tests]
    missing = [sys.executable, "-c", "raise SystemExit('no tests/hardware/test_cuda*.py here')"]
    checks.append(Check("cuda tests", [Run("pytest", pytest if tests else missing, 200)], pytest_rows))

    study_args = ["--sparsity", "0.5", "--max-tokens", "2048"]

    def demo_study(runs: list[Run]) -> list[Row]:
        cpu, fp16, fp32, formats = (summary(work / name) for name in ("cpu", "cuda16", "cuda32", "formats"))
        reference = float(cpu["dense"]["perplexity"])
        rows = [
            compare_ppl(
                "demo dense ppl, cuda float16", float(fp16["dense"]["perplexity"]), reference, FP16_PPL
            ),
            compare_ppl(
                "demo masked ppl, cuda float16",
                float(fp16["masked"]["perplexity"]),
                float(cpu["masked"]["perplexity"]),
                FP16_PPL,
            ),
            compare_ppl(
                "demo dense ppl, cuda float32", float(fp32["dense"]["perplexity"]), reference, FP32_PPL
            ),
        ]
        rows += top1_rows("demo cuda float16", fp16) + top1_rows("demo cuda float16", formats)
        recorded = json.loads((work / "cuda16" / "run.json").read_text())
        peak = recorded.get("cuda_max_allocated_bytes")
        rows.append(
            Row(
                "demo run.json: device, GPU peak memory",
                "cuda, bytes per GPU",
                f"{recorded.get('device')}, {peak}",
                str(recorded.get("device", "")).startswith("cuda") and bool(peak),
            )
        )
        return rows

    checks.append(
        Check(
            "demo study",
            [
                Run(
                    "study demo cpu float32",
                    [
                        "prunescope",
                        "study",
                        *demo,
                        *study_args,
                        "--device",
                        "cpu",
                        "--dtype",
                        "float32",
                        "--variants",
                        "dense,masked",
                        "--out",
                        str(work / "cpu"),
                    ],
                ),
                Run(
                    "study demo cuda float16",
                    [
                        "prunescope",
                        "study",
                        *demo,
                        *study_args,
                        *cuda,
                        "--dtype",
                        "float16",
                        "--variants",
                        "dense,masked,csr,bsr",
                        "--out",
                        str(work / "cuda16"),
                    ],
                ),
                Run(
                    "study demo cuda float32",
                    [
                        "prunescope",
                        "study",
                        *demo,
                        *study_args,
                        *cuda,
                        "--dtype",
                        "float32",
                        "--variants",
                        "dense,masked,csr",
                        "--out",
                        str(work / "cuda32"),
                    ],
                ),
                Run(
                    "study demo cuda bitmask/csr16/auto",
                    [
                        "prunescope",
                        "study",
                        *demo,
                        *study_args,
                        *cuda,
                        "--dtype",
                        "float16",
                        "--variants",
                        "masked,bitmask,csr16,auto",
                        "--out",
                        str(work / "formats"),
                    ],
                ),
            ],
            safely(demo_study),
        )
    )

    semi = [
        "prunescope",
        "study",
        *demo,
        "--pattern",
        "2:4",
        "--max-tokens",
        "1024",
        *cuda,
        "--dtype",
        "float16",
        "--variants",
        "dense,masked,semi-structured",
        "--out",
        str(work / "semi"),
    ]
    if capability >= (8, 0):
        checks.append(
            Check(
                "2:4 study",
                [Run("study demo 2:4 semi-structured", semi)],
                safely(lambda runs: top1_rows("demo 2:4", summary(work / "semi"))),
            )
        )
    else:

        def refused(runs: list[Run]) -> list[Row]:
            lines = [line for line in runs[0].tail.splitlines() if line.strip()]
            return [
                Row(
                    "2:4 below cc 8.0: refused in one line",
                    "exit 2, one line",
                    f"exit {runs[0].code}, {len(lines)} line(s)",
                    runs[0].code == 2 and len(lines) == 1,
                )
            ]

        checks.append(Check("2:4 refused", [Run("study demo 2:4 semi-structured", semi)], refused))

    def sweep_rows(runs: list[Run]) -> list[Row]:
        with open(work / "sweep" / "results.csv", newline="", encoding="utf-8") as handle:
            points = list(csv.DictReader(handle))
        # one row per sparsity and variant
        return [
            Row("sweep demo cuda: rows (2 sparsities x 2 variants)", "4", str(len(points)), len(points) == 4)
        ]

    checks.append(
        Check(
            "sweep",
            [
                Run(
                    "sweep demo cuda",
                    [
                        "prunescope",
                        "sweep",
                        *demo,
                        *cuda,
                        "--sparsity",
                        "0.3,0.5",
                        "--variants",
                        "masked,csr",
                        "--max-tokens",
                        "1024",
                        "--out",
                        str(work / "sweep"),
                    ],
                )
            ],
            safely(sweep_rows),
        )
    )
    checks.append(
        Check(
            "sensitivity",
            [
                Run(
                    "sensitivity demo cuda",
                    [
                        "prunescope",
                        "sensitivity",
                        *demo,
                        *cuda,
                        "--max-tokens",
                        "512",
                        "--out",
                        str(work / "sensitivity"),
                    ],
                )
            ],
            safely(lambda runs: []),
        )
    )

    def bench_rows(folder: Path, label: str, tokens: tuple[str, ...], suffix: str = "") -> list[Row]:
        data = json.loads((folder / "latency.json").read_text())
        text = json.dumps(data)
        import torch

        gpu = torch.cuda.get_device_name(0) if device == "cuda" else platform.machine()
        rows = [
            Row(
                f"{label}: latency.json names the GPU", gpu, "named" if gpu in text else "absent", gpu in text
            )
        ]
        with open(folder / "layers.csv", newline="", encoding="utf-8") as handle:
            layers = list(csv.DictReader(handle))
        for fmt in sorted({r["format"] for r in layers} - {"dense"}):
            for n in tokens:
                picked = [r for r in layers if r["format"] == fmt and r["n"] == n]
                speedups = [float(r["speedup"]) for r in picked if r.get("speedup") not in ("", None, "nan")]
                if not picked:
                    continue
                if speedups and all(s > 0 for s in speedups):
                    mean = math.exp(sum(math.log(s) for s in speedups) / len(speedups))
                    measured, ok = f"{mean:.2f}x over {len(speedups)} shapes", None
                else:  # every format must run on the GPU: not measured is a failure
                    measured, ok = ", ".join(sorted({r.get("status", "?") for r in picked})), False
                rows.append(
                    Row(
                        f"{label}: {fmt}{suffix} speedup vs dense, n={n}",
                        "measured (geo. mean)",
                        measured,
                        ok,
                    )
                )
        return rows

    bench = [
        "prunescope",
        "bench",
        "--model",
        "demo",
        "--no-progress",
        "--overwrite",
        *cuda,
        "--dtype",
        "float16",
        "--layers-only",
        "--min-time",
        "0.05",
    ]
    bench_runs = [
        Run(
            "bench demo cuda",
            [
                *bench,
                "--sparsity",
                "0.5",
                "--formats",
                "dense,masked,csr,bsr,bitmask,csr16",
                "--tokens",
                "1,64",
                "--out",
                str(work / "bench"),
            ],
        )
    ]
    # the bitmask formats on their Triton kernel (opt-in, formats/gpu): the measurement that says whether
    # it pays against dense and against their torch path above (at 64 tokens bitmask takes the torch path)
    triton_bench = [
        *bench,
        "--sparsity",
        "0.5",
        "--formats",
        "dense,bitmask,bitmask-int8",
        "--tokens",
        "1,64",
    ]
    bench_runs.append(
        Run(
            "bench demo cuda triton",
            [*triton_bench, "--out", str(work / "bench-triton")],
            env={"PRUNESCOPE_KERNEL": "triton"},
        )
    )
    if capability >= (8, 0):
        bench_runs.append(
            Run(
                "bench demo cuda 2:4 prefill",
                [
                    *bench,
                    "--pattern",
                    "2:4",
                    "--formats",
                    "dense,semi-structured",
                    "--tokens",
                    "512",
                    "--out",
                    str(work / "bench24"),
                ],
            )
        )

    def bench_judge(runs: list[Run]) -> list[Row]:
        rows = bench_rows(work / "bench", "bench demo", ("1", "64"))
        rows += bench_rows(work / "bench-triton", "bench demo", ("1", "64"), " (triton)")
        if len(runs) > 2:
            rows += bench_rows(work / "bench24", "bench demo 2:4", ("512",))
        return rows

    checks.append(Check("bench", bench_runs, safely(bench_judge)))

    def prune_rows(folder: Path, label: str) -> list[Row]:
        record = json.loads((folder / "prune.json").read_text())
        sparsity = float(record["pruned_layer_sparsity"])
        return [
            Row(
                f"{label}: pruned-layer sparsity",
                "0.5 +- 1e-3",
                f"{sparsity:.4f}",
                abs(sparsity - 0.5) <= 1e-3,
            )
        ]

    checks.append(
        Check(
            "prune",
            [
                Run(
                    "prune demo wanda cuda",
                    [
                        "prunescope",
                        "prune",
                        "demo",
                        *cuda,
                        "--method",
                        "wanda",
                        "--sparsity",
                        "0.5",
                        "--overwrite",
                        "--no-progress",
                        "--out",
                        str(work / "pruned"),
                    ],
                )
            ],
            safely(lambda runs: prune_rows(work / "pruned", "prune demo wanda cuda")),
        )
    )

    def evaluation(folder: Path) -> dict:
        return json.loads((folder / "evaluation.json").read_text())

    def evaluate_rows(runs: list[Run]) -> list[Row]:
        cpu, gpu = evaluation(work / "eval-cpu"), evaluation(work / "eval-cuda")
        return [
            compare_ppl(
                "evaluate demo cuda (auto dtype)",
                gpu["behaviour"]["perplexity"],
                cpu["behaviour"]["perplexity"],
                FP16_PPL,
            ),
            Row(
                "evaluate demo cuda: inputs on",
                inputs_on,
                str(gpu.get("device")),
                str(gpu.get("device")) == inputs_on,
            ),
        ]

    evaluate = ["prunescope", "evaluate", "demo", "--max-tokens", "1024", "--no-progress", "--overwrite"]
    checks.append(
        Check(
            "evaluate",
            [
                Run("evaluate demo cpu", [*evaluate, "--device", "cpu", "--out", str(work / "eval-cpu")]),
                Run("evaluate demo cuda", [*evaluate, *cuda, "--out", str(work / "eval-cuda")]),
            ],
            safely(evaluate_rows),
        )
    )
    if not large:
        return checks

    def write_synthetic(runs: list[Run]) -> list[Row]:
        size = json.loads((syn / "written.json").read_text())["bytes"]
        return [Row("synthetic Llama written", "~0.94 GB bfloat16", f"{size / 1e9:.2f} GB", None)]

    writer = (
        "import json, sys, torch; from transformers import LlamaConfig; "
        "from prunescope.checkpoint.synthetic import write_random_checkpoint; "
        f"c = LlamaConfig(**{SYNTHETIC!r}, torch_dtype='bfloat16'); "
        f"n = write_random_checkpoint({str(syn)!r}, c, dtype=torch.bfloat16, max_shard_bytes=500 * 10**6); "
        f"open({str(syn / 'written.json')!r}, 'w').write(json.dumps({{'bytes': n}}))"
    )
    checks.append(
        Check(
            "synthetic checkpoint",
            [Run("write synthetic 0.5B", [sys.executable, "-c", writer], 180)],
            safely(write_synthetic),
        )
    )

    def synthetic_rows(runs: list[Run]) -> list[Row]:
        expected = "bfloat16" if capability >= (8, 0) else "float16"
        recorded = json.loads((work / "syn-study" / "run.json").read_text())
        dtype = str(recorded.get("dtype"))
        reason = recorded.get("dtype_reason", "(no dtype_reason in run.json)")
        rows = [
            Row("synthetic --dtype auto on this GPU", expected, f"{dtype}: {reason}"[:160], dtype == expected)
        ]
        rows += top1_rows("synthetic cuda auto", summary(work / "syn-study"))
        cpu, gpu = evaluation(work / "syn-eval-cpu"), evaluation(work / "syn-eval-cuda")
        rows.append(
            compare_ppl(
                "synthetic evaluate ppl, cuda float16",
                gpu["behaviour"]["perplexity"],
                cpu["behaviour"]["perplexity"],
                FP16_PPL,
            )
        )
        rows += prune_rows(work / "syn-pruned", "prune synthetic sparsegpt cuda")
        rows += bench_rows(work / "syn-bench", "bench synthetic", ("1", "64"))
        rows += bench_rows(work / "syn-bench-triton", "bench synthetic", ("1",), " (triton)")
        return rows

    # `bench` on the synthetic model, up to its --formats list
    syn_bench = ["prunescope", "bench", "--model", str(syn), "--no-progress", "--overwrite", *cuda]
    syn_bench += ["--layers-only", "--min-time", "0.05", "--sparsity", "0.5", "--formats"]
    syn_eval = [
        "prunescope",
        "evaluate",
        str(syn),
        "--max-tokens",
        "512",
        "--seqlen",
        "128",
        "--no-progress",
        "--overwrite",
    ]
    checks.append(
        Check(
            "synthetic 0.5B",
            [
                Run(
                    "study synthetic cuda auto",
                    [
                        "prunescope",
                        "study",
                        "--model",
                        str(syn),
                        *cuda,
                        "--sparsity",
                        "0.5",
                        "--max-tokens",
                        "1024",
                        "--seqlen",
                        "128",
                        "--variants",
                        "dense,masked,csr,bitmask",
                        "--no-progress",
                        "--overwrite",
                        "--out",
                        str(work / "syn-study"),
                    ],
                    300,
                ),
                Run(
                    "evaluate synthetic cpu float32",
                    [*syn_eval, "--device", "cpu", "--dtype", "float32", "--out", str(work / "syn-eval-cpu")],
                    300,
                ),
                Run(
                    "evaluate synthetic cuda float16",
                    [*syn_eval, *cuda, "--dtype", "float16", "--out", str(work / "syn-eval-cuda")],
                ),
                Run(
                    "prune synthetic sparsegpt cuda",
                    [
                        "prunescope",
                        "prune",
                        str(syn),
                        *cuda,
                        "--method",
                        "sparsegpt",
                        "--sparsity",
                        "0.5",
                        "--calib-samples",
                        "16",
                        "--calib-seqlen",
                        "128",
                        "--overwrite",
                        "--no-progress",
                        "--out",
                        str(work / "syn-pruned"),
                    ],
                    300,
                ),
                Run(
                    "bench synthetic cuda",
                    [
                        *syn_bench,
                        "dense,masked,csr,bitmask",
                        "--tokens",
                        "1,64",
                        "--out",
                        str(work / "syn-bench"),
                    ],
                ),
                Run(
                    "bench synthetic cuda triton",
                    [*syn_bench, "dense,bitmask", "--tokens", "1", "--out", str(work / "syn-bench-triton")],
                    env={"PRUNESCOPE_KERNEL": "triton"},
                ),
            ],
            safely(synthetic_rows),
        )
    )
    return checks


def print_table(rows: list[Row]) -> None:
    headers = ("check", "expected", "measured", "ok")
    mark = {True: "ok", False: "FAIL", None: "-"}
    cells = [(r.check, r.expected, r.measured[:100], mark[r.ok]) for r in rows]  # the JSON has all of it
    widths = [min(70, max([len(h)] + [len(c[i]) for c in cells])) for i, h in enumerate(headers)]
    line = "  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True))
    print(line, "-" * len(line), sep="\n")
    for cell in cells:
        print("  ".join(c.ljust(w) for c, w in zip(cell, widths, strict=True)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("gpu-check.json"))
    parser.add_argument("--workdir", type=Path, default=None, help="Keep outputs here (default: a temp dir).")
    parser.add_argument("--dry-run", action="store_true", help="Print the plan; run nothing.")
    parser.add_argument("--no-large", action="store_true", help="Skip the ~0.5B synthetic Llama.")
    parser.add_argument("--budget", type=float, default=470.0, help="Seconds for everything (default 470).")
    parser.add_argument("--only", default=None, help="Comma list of checks to run (names as in --dry-run).")
    parser.add_argument(
        "--device", default="cuda", help="cuda; 'cpu' only to test this script itself where no GPU is."
    )
    args = parser.parse_args()
    start = time.monotonic()
    import torch

    available = torch.cuda.is_available()
    capability = torch.cuda.get_device_capability(0) if available else (8, 0)
    work = args.workdir or Path(tempfile.mkdtemp(prefix="prunescope-gpu-check-"))
    checks = plan(work, capability, large=not args.no_large, device=args.device)
    if args.only:
        wanted = {name.strip() for name in args.only.split(",")}
        checks = [check for check in checks if check.name in wanted]
    if args.dry_run:
        print(f"gpu-check plan ({'CUDA available' if available else 'no CUDA here'}; outputs under {work}):")
        for check in checks:
            for command in check.runs:
                shown = (
                    ["prunescope", *command.args[len(CLI) :]]
                    if command.args[: len(CLI)] == CLI
                    else command.args
                )
                env = "".join(f"{k}={v} " for k, v in command.env.items())
                print(f"  [{check.name}] {command.name}: {env}{' '.join(shown)}"[:400])
        if args.workdir is None:
            shutil.rmtree(work, ignore_errors=True)
        return
    if not available and args.device == "cuda":
        print("gpu-check: CUDA is not available here; nothing was run (use --dry-run to see the plan).")
        args.out.write_text(
            json.dumps({"skipped": "CUDA not available", "facts": gpu_facts()}, indent=2) + "\n"
        )
        return
    work.mkdir(parents=True, exist_ok=True)
    deadline = start + args.budget
    facts, rows, commands = gpu_facts(), [], []
    print(
        f"gpu-check on {facts.get('gpu', args.device)} (cc {facts.get('compute_capability')}), "
        f"torch {facts['torch']}, CUDA {facts['cuda']}; outputs under {work}",
        flush=True,
    )
    for check in checks:
        for command in check.runs:
            run(command, deadline)
            print(f"  {command.name}: exit {command.code} in {command.seconds:.0f} s", flush=True)
            if command.code != 0 and check.name != "2:4 refused":
                break  # a later command of the check reads this one's output
        check.rows = check.judge([c for c in check.runs if c.code is not None])
        rows += check.rows
        commands += [{"check": check.name, **vars(c)} for c in check.runs]
    print()
    print_table(rows)
    elapsed = time.monotonic() - start
    failed = sum(1 for r in rows if r.ok is False)
    print(f"\n{len(rows)} rows, {failed} failed, {elapsed:.0f} s; written: {args.out}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(
        json.dumps(
            {"facts": facts, "seconds": elapsed, "rows": [vars(r) for r in rows], "commands": commands},
            indent=2,
            default=str,
        )
        + "\n"
    )
    if args.workdir is None:
        shutil.rmtree(work, ignore_errors=True)
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
