"""report.md for people (short header, narrow tables) and the per-layer figure of a study."""

from __future__ import annotations

import pandas as pd
import pytest

from prunescope.report.plots import block_grid, layer_panels, plot_layers


def _layers() -> pd.DataFrame:
    """A GPT-2-like layer table: attn.c_proj and mlp.c_proj share a last name but not a projection."""
    rows = []
    projections = ["attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj"]
    for variant, fmt, factor in (("dense", "dense", None), ("masked", "dense", None), ("csr", "csr", 1.5)):
        rows.append(
            dict(variant=variant, module="transformer.wte", group="embedding", format="dense", sparsity=0.0,
                 stored_bytes=4000)
        )  # fmt: skip
        for block in range(3):
            for p, projection in enumerate(projections):
                sparsity = 0.0 if variant == "dense" else 0.1 * (block + 1) + 0.01 * p
                dense_bytes = 1000 * (p + 1)
                stored = dense_bytes if factor is None else int(dense_bytes * factor * (1 - sparsity))
                group = "attention_linear" if projection.startswith("attn") else "mlp_linear"
                rows.append(
                    dict(variant=variant, module=f"transformer.h.{block}.{projection}", group=group,
                         format=fmt, sparsity=sparsity, stored_bytes=stored)
                )  # fmt: skip
    rows.append(
        dict(variant="csr", module="lm_head", group="lm_head", format="dense", sparsity=0.0, stored_bytes=0)
    )  # a tied head has no bytes of its own: 0/0 must not warn or show up
    return pd.DataFrame(rows)


def test_block_grid_is_block_by_projection_with_every_value_in_place():
    layers = _layers()
    masked = layers[layers["variant"] == "masked"]
    grid = block_grid(masked, masked["sparsity"])
    assert list(grid.columns) == ["attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj"]
    assert list(grid.index) == [0, 1, 2]
    for _, row in masked[masked["group"] != "embedding"].iterrows():
        block, projection = row["module"].split(".", 3)[2], row["module"].split(".", 3)[3]
        assert grid.loc[int(block), projection] == row["sparsity"]


def test_layer_panels_show_sparsity_then_stored_bytes_over_dense(recwarn):
    layers = _layers()
    panels = dict(layer_panels(layers))
    assert list(panels) == ["sparsity (masked)", "csr stored bytes / dense"]
    ratio = panels["csr stored bytes / dense"]
    # Independent: the csr rows' bytes over the dense rows' bytes of the same module.
    dense = layers[layers["variant"] == "dense"].set_index("module")["stored_bytes"]
    for _, row in layers[(layers["variant"] == "csr") & layers["module"].str.contains(r"\.h\.")].iterrows():
        block, projection = row["module"].split(".", 3)[2:]
        assert ratio.loc[int(block), projection] == pytest.approx(row["stored_bytes"] / dense[row["module"]])
    assert not [w for w in recwarn if issubclass(w.category, RuntimeWarning)]


def test_plot_layers_writes_a_figure_or_says_there_is_nothing_to_draw(tmp_path):
    assert plot_layers(_layers(), tmp_path / "layers.png")
    assert (tmp_path / "layers.png").stat().st_size > 10_000
    flat = _layers().query("group == 'embedding'")
    assert not plot_layers(flat, tmp_path / "none.png") and not (tmp_path / "none.png").exists()


def _tables(markdown: str) -> list[list[str]]:
    """Header cells of every markdown table."""
    tables, previous = [], ""
    for line in markdown.splitlines():
        if line.startswith("|:") or line.startswith("|-"):
            tables.append([cell.strip() for cell in previous.strip("|").split("|")])
        previous = line
    return tables


def test_study_report_is_short_and_narrow_with_the_layer_figure(tiny_model_dir, tmp_path):
    from prunescope.experiments.study import StudyConfig, run_study
    from prunescope.report.study import write_study

    config = StudyConfig(
        model=str(tiny_model_dir), sparsity=0.5, variants=["dense", "masked", "csr"], max_tokens=64, seqlen=16
    )
    result = run_study(config, progress=False)
    paths = write_study(result, tmp_path)
    assert tmp_path / "layers.png" in paths and (tmp_path / "layers.png").is_file()
    report = (tmp_path / "report.md").read_text(encoding="utf-8")
    header = report.split("## ")[0]
    for key in ("**model**", "**method**", "**corpus**", "**perplexity protocol**"):
        assert key in header
    tables = _tables(report)
    assert len(tables) >= 4 and all(len(columns) <= 8 for columns in tables), tables
    behaviour, cost = tables[0], tables[1]
    assert {"top-1 agreement", "top-5 overlap", "KL (nats/token)", "perplexity"} <= set(behaviour)
    assert {"stored (MB)", "executed MFLOP/token", "sparsity (pruned layers)"} <= set(cost)
    assert "![layers](layers.png)" in report
    # The block x projection table: the tiny OPT has 2 blocks of 6 projections.
    assert tables[3] == ["block", "self_attn.k_proj", "self_attn.v_proj", "self_attn.q_proj",
                         "self_attn.out_proj", "fc1", "fc2"]  # fmt: skip
    # Full tables stay in the CSVs: every summary column is there, however many.
    summary = pd.read_csv(tmp_path / "summary.csv")
    assert {"nonzero", "attention_score_flops_per_token", "stored_bytes"} <= set(summary.columns)
