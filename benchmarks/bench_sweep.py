"""A full 9-point x 3-method sweep on the demo model: wall time, and peak RSS against a 3-point sweep.

Peak RSS must not grow with the number of points (every point restores the model in place), so the
9-point sweep is compared with a 3-point sweep of the same methods in a fresh process.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import torch
from _measure import CLI, run_measured

METHODS = "magnitude,wanda,sparsegpt"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, default=Path("bench-results/sweep.json"))
    parser.add_argument("--max-tokens", type=int, default=2048)
    parser.add_argument("--calib-samples", type=int, default=32)
    args = parser.parse_args()
    common = [
        "--method",
        METHODS,
        "--max-tokens",
        str(args.max_tokens),
        "--calib-samples",
        str(args.calib_samples),
        "--no-progress",
    ]
    results = {"threads": torch.get_num_threads(), "torch": torch.__version__, "methods": METHODS}
    with tempfile.TemporaryDirectory() as tmp:
        small = run_measured([*CLI, "sweep", "--sparsity", "0.3,0.5,0.7", *common, "--out", f"{tmp}/small"])
        full = run_measured([*CLI, "sweep", "--sparsity", "0.1:0.9:0.1", *common, "--out", f"{tmp}/full"])
        results["points_3"], results["points_9"] = small, full
        results["table"] = (Path(tmp) / "full" / "results.csv").read_text()
    growth = full["peak_rss_bytes"] / small["peak_rss_bytes"]
    results["peak_rss_ratio_9_vs_3"] = growth
    for name, entry in (("3 points x 3 methods", small), ("9 points x 3 methods", full)):
        print(
            f"{name:22s} wall {entry['wall_s']:7.1f} s   peak RSS {entry['peak_rss_bytes'] / 2**20:7.1f} MiB"
        )
    print(f"peak RSS ratio 9 vs 3 points: {growth:.3f}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
