"""A pruned checkpoint carries its own model card, never the source model's card or measured metrics."""

from __future__ import annotations

import json
import re
import shutil

from prunescope.version import __version__
from tests.helpers import run_cli


def test_pruned_checkpoint_has_its_own_card_and_no_dense_metrics(tiny_model_dir, tmp_path):
    source = tmp_path / "dense"
    shutil.copytree(tiny_model_dir, source)
    (source / "README.md").write_text("# The dense model\n\nperplexity 12.3 on our eval\n")
    (source / "metrics.json").write_text(json.dumps({"heldout": {"perplexity": 12.3}}))
    (source / "unigram.json").write_text("{}")  # data about the training text: still true, still copied
    out = tmp_path / "pruned"
    args = ["prune", source, "--out", out, "--format", "both", "--sparsity", "0.4", "--scope", "layer"]
    run_cli([*args, "--no-progress"])
    record = json.loads((out / "prune.json").read_text())
    assert record["source"] == str(source) and record["prunescope"] == __version__
    assert record["command"].startswith(f"prunescope prune {source} --out {out}")
    for layout in ("hf", "sparse"):
        folder = out / layout
        assert not (folder / "metrics.json").exists() and (folder / "unigram.json").is_file()
        card = (folder / "README.md").read_text()
        assert "The dense model" not in card and "12.3" not in card
        assert card.startswith(f"# {source}, pruned: magnitude 0.4 (layer, unstructured)")
        for row in (
            f"| source model | `{source}` ({source}) |",
            "| target sparsity | 0.4 of the prunable weights |",
            "| pattern | unstructured |",
            "| allocation | uniform |",
            f"| prunescope | {__version__} |",
            f"| layout | {layout}: ",
        ):
            assert row in card, row
        pruned = f"{record['pruned_weights']:,} of {record['prunable_weights']:,} prunable weights"
        assert pruned in card and record["command"] in card
        assert re.search(r"\| written \| \d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\+00:00 \|", card)
