"""Wall time and peak RSS of `prunescope study` on the demo model and on an OPT-125m-shaped model.

The OPT-125m-shaped model is built from opt-125m's configuration with random weights (no download) and
saved once to a temporary folder, with the demo tokenizer (its ids fit the larger vocabulary). Each study
runs in a fresh subprocess; its peak RSS is the kernel's high-water mark for that process (os.wait4).
The bound checked: peak RSS < 1.5 x dense model bytes + the runtime's fixed overhead. The fixed overhead
is what a study costs when its model is negligible: the peak RSS of the same `prunescope study` on the demo
model (16 MiB of weights) minus 1.5 x those weights: interpreter, torch, transformers, MKL/oneDNN, plotting
and table libraries, thread pools and allocator arenas. The peak RSS of a bare import + demo load is
recorded too, as a stricter reference.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
from pathlib import Path

import torch
from _measure import CLI, run_measured

OPT_125M = dict(
    vocab_size=50272,
    hidden_size=768,
    num_hidden_layers=12,
    ffn_dim=3072,
    num_attention_heads=12,
    max_position_embeddings=2048,
    word_embed_proj_dim=768,
    do_layer_norm_before=True,
)


def build_opt125m(folder: Path) -> int:
    from transformers import AutoTokenizer, OPTConfig, OPTForCausalLM

    from prunescope.demo.corpus import DEMO_MODEL_DIR

    torch.manual_seed(0)
    model = OPTForCausalLM(OPTConfig(**OPT_125M))
    model.save_pretrained(folder)
    AutoTokenizer.from_pretrained(DEMO_MODEL_DIR).save_pretrained(folder)
    return sum(p.numel() * p.element_size() for p in model.parameters())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, default=Path("bench-results/study.json"))
    parser.add_argument("--opt-max-tokens", type=int, default=1024)
    args = parser.parse_args()
    overhead = run_measured(
        [
            sys.executable,
            "-c",
            (
                "import prunescope, prunescope.experiments.study; "
                "from prunescope.models import load_model; load_model('demo')"
            ),
        ]
    )
    results: dict = {
        "runtime_overhead_peak_rss_bytes": overhead["peak_rss_bytes"],
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
    }
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        demo = run_measured([*CLI, "study", "--no-progress", "--out", str(tmp / "demo")])
        from prunescope.models import load_model

        demo_model = load_model("demo").model
        demo["dense_model_bytes"] = sum(p.numel() * p.element_size() for p in demo_model.parameters())
        results["demo"] = demo
        opt_bytes = build_opt125m(tmp / "opt125m")
        opt = run_measured(
            [
                *CLI,
                "study",
                "--no-progress",
                "--model",
                str(tmp / "opt125m"),
                "--max-tokens",
                str(args.opt_max_tokens),
                "--out",
                str(tmp / "opt"),
            ]
        )
        opt["dense_model_bytes"] = opt_bytes
        results["opt125m_shaped"] = opt
    results["import_and_load_peak_rss_bytes"] = results.pop("runtime_overhead_peak_rss_bytes")
    demo, opt = results["demo"], results["opt125m_shaped"]
    fixed = int(demo["peak_rss_bytes"] - 1.5 * demo["dense_model_bytes"])
    results["runtime_overhead_peak_rss_bytes"] = fixed
    opt["bound_bytes"] = int(1.5 * opt["dense_model_bytes"] + fixed)
    opt["within_bound"] = opt["peak_rss_bytes"] < opt["bound_bytes"]
    for name, entry in (("demo", demo), ("opt125m_shaped", opt)):
        print(
            f"{name:16s} wall {entry['wall_s']:7.1f} s   "
            f"peak RSS {entry['peak_rss_bytes'] / 2**20:8.1f} MiB   "
            f"dense model {entry['dense_model_bytes'] / 2**20:7.1f} MiB"
        )
    print(
        f"fixed overhead (demo study - 1.5 x demo weights) {fixed / 2**20:.1f} MiB; bare import + demo load "
        f"{results['import_and_load_peak_rss_bytes'] / 2**20:.1f} MiB"
    )
    print(
        f"OPT-125m-shaped bound 1.5 x {opt['dense_model_bytes'] / 2**20:.1f} + {fixed / 2**20:.1f} = "
        f"{opt['bound_bytes'] / 2**20:.1f} MiB: {'OK' if opt['within_bound'] else 'EXCEEDED'}"
    )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
