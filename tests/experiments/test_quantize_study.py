"""Quantized twins in studies and sweeps (issue 25): names, behaviour, exact restore, bytes, bad input."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from torch import nn

from prunescope.errors import PrunescopeError
from prunescope.experiments.config import StudyConfig
from prunescope.experiments.quantize import split_variant, with_twins
from prunescope.experiments.study import Workbench, run_study
from prunescope.formats import convert
from prunescope.quantization import QuantOptions, quantize_model
from prunescope.structure import global_summary, layer_table
from tests.helpers import run_cli


def _config(model_dir, **options) -> StudyConfig:
    return StudyConfig(model=str(model_dir), max_tokens=128, seqlen=32, device="cpu", **options)


def test_twins_names_and_order():
    assert with_twins(["masked", "csr"], ["int8", "int4"]) == [
        "masked",
        "masked+int8",
        "masked+int4",
        "csr",
        "csr+int8",
        "csr+int4",
    ]
    assert split_variant("csr+int4") == ("csr", "int4") and split_variant("masked") == ("masked", None)


def test_study_twins_behaviour_and_exact_restore(tiny_model_dir, tmp_path):
    config = _config(
        tiny_model_dir,
        sparsity=0.5,
        variants=["dense", "masked", "csr", "bitmask"],
        quantize="int8,int4",
        group_size=16,
    )
    from prunescope.models import load_model

    loaded = load_model(str(tiny_model_dir), "auto", "cpu")
    before = {name: p.detach().clone() for name, p in loaded.model.named_parameters()}
    result = run_study(config, loaded=loaded, work_dir=tmp_path / "work", progress=False)
    summary = result.summary.set_index("variant")
    assert list(summary.index) == [
        f"{variant}{twin}"
        for variant in ("dense", "masked", "csr", "bitmask")
        for twin in ("", "+int8", "+int4")
    ]
    kl = summary["kl_mean"]
    assert 0 < kl["dense+int8"] < kl["dense+int4"]  # int8 costs little, but something
    assert 0 < kl["masked+int8"] and abs(kl["masked+int8"] - kl["masked"]) < 0.05
    for bits in ("int8", "int4"):  # the format holds the same quantized values
        assert abs(kl[f"csr+{bits}"] - kl[f"masked+{bits}"]) < 1e-4
    # Bytes at real storage: quantized twins store less; bits per weight follow.
    bytes_ = summary["stored_bytes"]
    assert bytes_["masked+int4"] < bytes_["masked+int8"] < bytes_["masked"] == bytes_["dense"]
    assert bytes_["csr+int8"] < bytes_["csr"]
    bits = summary["pruned_layer_bits_per_weight"]
    assert bits["dense"] == bits["masked"] == 32.0
    assert 8 < bits["masked+int8"] < 9 and 6 < bits["masked+int4"] < 7  # tiny rows: scales weigh
    assert (
        summary.loc["masked+int8", "quantization"] == "int8" and summary.loc["csr", "quantization"] == "none"
    )
    # Totals add up from the per-layer table.
    layers = result.layers
    for variant, rows in layers.groupby("variant"):
        assert rows["stored_bytes"].sum() == bytes_[variant]
    assert (layers[layers["variant"] == "csr+int8"]["quantization"].isin(["int8", ""])).all()
    # The dense model is back, bit for bit.
    after = dict(loaded.model.named_parameters())
    assert all(torch.equal(after[name], value) for name, value in before.items())


def test_gptq_twin_restores_exactly(tiny_model_dir, tmp_path):
    config = _config(tiny_model_dir, quantize="int4", group_size=16, quant_method="gptq", calib_samples=4)
    bench = Workbench(config, work_dir=tmp_path / "work", progress=False)
    before = {name: p.detach().clone() for name, p in bench.model.named_parameters()}
    from prunescope.pruning import PruneSpec

    results = bench.evaluate(
        PruneSpec.create("magnitude", 0.5), ["masked", "masked+int4", "csr+int4"]
    ).variants
    assert list(results) == ["masked", "masked+int4", "csr+int4"]
    assert results["masked+int4"].behaviour.kl_mean > 0
    assert abs(results["csr+int4"].behaviour.kl_mean - results["masked+int4"].behaviour.kl_mean) < 1e-4
    after = dict(bench.model.named_parameters())
    assert all(torch.equal(after[name], value) for name, value in before.items())


def test_sparsegpt_gptq_twins_come_from_the_joint_pass(tiny_model_dir, tmp_path):
    """With SparseGPT and --quant-method gptq a twin is the reference's one loop that prunes and quantizes:
    its weights are exactly what `prune` with `PruneSpec.quantize` gives, its mask is its own, and the
    dense model comes back bit for bit."""
    from prunescope.pruning import PruneSpec, prune, restore

    config = _config(tiny_model_dir, quantize="int4", group_size=16, quant_method="gptq", calib_samples=4)
    bench = Workbench(config, work_dir=tmp_path / "work", progress=False)
    before = {name: p.detach().clone() for name, p in bench.model.named_parameters()}
    spec = PruneSpec.create("sparsegpt", 0.5, calib_samples=4, calib_seqlen=32)
    results = bench.evaluate(spec, ["masked", "masked+int4", "bitmask+int4"]).variants
    assert list(results) == ["masked", "masked+int4", "bitmask+int4"]
    assert results["masked+int4"].summary["quant_pass"] == "joint"
    assert abs(results["bitmask+int4"].behaviour.kl_mean - results["masked+int4"].behaviour.kl_mean) < 1e-4
    after = dict(bench.model.named_parameters())
    assert all(torch.equal(after[name], value) for name, value in before.items())

    # The same joint pass by hand: every layer holds its codes' dequantized values, zeros where pruned.
    options = QuantOptions("int4", group_size=16, method="gptq")
    joint = dataclasses.replace(spec, quantize=options)
    record = prune(bench.model, bench.layers, joint, bench.calibration(joint), progress=False)
    try:
        for name, change in record.changes.items():
            weight = bench.model.get_submodule(name).weight
            assert torch.equal(change.quantized.dequantize(weight.dtype).masked_fill(change.mask, 0), weight)
            assert (weight[change.mask] == 0).all()
        kl_joint = results["masked+int4"].behaviour.kl_mean
        assert kl_joint == pytest.approx(bench.evaluation.compare(bench.model, "x", False).kl_mean, rel=1e-6)
    finally:
        restore(bench.model, record)


def test_gptq_in_the_pass_quantizes_each_layer_right_after_it_is_pruned(tiny_model_dir):
    """Wanda + GPTQ: each layer of the first block is GPTQ of its Wanda-pruned weight on the Hessian of the
    dense block's inputs (what the block pass collects before pruning it), its pruned weights held at 0."""
    from prunescope.pruning import PruneSpec, prune, restore
    from prunescope.pruning.capture import find_blocks, layers_by_block
    from prunescope.quantization import collect_hessians, gptq_quantize

    bench = Workbench(_config(tiny_model_dir, calib_samples=4), progress=False)
    spec = PruneSpec.create("wanda", 0.5, calib_samples=4, calib_seqlen=32)
    samples = bench.calibration(spec)
    blocks_name, blocks = find_blocks(bench.model, bench.layers)
    first = list(layers_by_block(bench.layers, blocks_name, len(blocks))[0])
    hessians = collect_hessians(bench.model, first, samples)
    dense = {name: bench.model.get_submodule(name).weight.detach().clone() for name in first}
    plain = prune(bench.model, bench.layers, spec, samples, progress=False)
    masks = {name: plain.changes[name].mask for name in first}
    restore(bench.model, plain)

    options = QuantOptions("int4", group_size=16, method="gptq")
    record = prune(
        bench.model, bench.layers, dataclasses.replace(spec, quantize=options), samples, progress=False
    )
    try:
        for name in first:
            assert torch.equal(record.changes[name].mask, masks[name])
            expected = gptq_quantize(
                dense[name].masked_fill(masks[name], 0), hessians[name].hessian, options, masks[name]
            )
            torch.testing.assert_close(
                bench.model.get_submodule(name).weight, expected.weight, rtol=0, atol=1e-6
            )
    finally:
        restore(bench.model, record)
    assert all(torch.equal(bench.model.get_submodule(n).weight, dense[n]) for n in first)


def test_only_gptq_runs_inside_the_pruning_pass():
    from prunescope.pruning import PruneSpec

    with pytest.raises(PrunescopeError, match="inside the pruning pass is GPTQ"):
        PruneSpec(method="sparsegpt", sparsity=0.5, quantize=QuantOptions("int4"))
    gptq = QuantOptions("int4", method="gptq")
    assert PruneSpec(method="sparsegpt", sparsity=0.5, quantize=gptq).joint_quantization
    assert not PruneSpec(method="sparsegpt", sparsity=0.5, refine="dsnot", quantize=gptq).joint_quantization
    assert not PruneSpec(method="wanda", sparsity=0.5, quantize=gptq).joint_quantization
    assert PruneSpec(method="magnitude", sparsity=0.5, quantize=gptq).needs_calibration


# Hand counts for one 64 x 128 layer at exactly 50 % sparsity, fp32, group 128 (one group per row).
OUT, IN, NNZ = 64, 128, 64 * 64
SCALES = OUT * 4  # one fp32 scale per row (int8: per row; int4: per (row, group) with one group)
ZEROS = OUT  # int4: one uint8 zero per (row, group)
BIAS = OUT * 4
HAND = {
    ("dense", None): OUT * IN * 4,
    ("dense", "int8"): OUT * IN + SCALES,
    ("dense", "int4"): OUT * IN // 2 + SCALES + ZEROS,
    ("bitmask", None): NNZ * 4 + OUT * (IN // 16) * 2 + (OUT + 1) * 8,
    ("bitmask", "int8"): NNZ + OUT * (IN // 16) * 2 + (OUT + 1) * 8 + SCALES,
    ("bitmask", "int4"): NNZ // 2 + OUT * (IN // 16) * 2 + (OUT + 1) * 8 + SCALES + ZEROS,
    ("csr", None): NNZ * 4 + NNZ * 4 + (OUT + 1) * 4,
    ("csr", "int8"): NNZ + NNZ * 4 + (OUT + 1) * 4 + SCALES,
    ("csr", "int4"): NNZ // 2 + NNZ * 4 + (OUT + 1) * 4 + SCALES + ZEROS,
    ("csr16", None): NNZ * 4 + NNZ * 2 + (OUT + 1) * 8,
    ("csr16", "int8"): NNZ + NNZ * 2 + (OUT + 1) * 8 + SCALES,
    ("csr16", "int4"): NNZ // 2 + NNZ * 2 + (OUT + 1) * 8 + SCALES + ZEROS,
}


@pytest.mark.parametrize(("fmt", "bits"), list(HAND))
def test_bytes_hand_count(fmt, bits):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(IN, OUT))
    with torch.no_grad():  # magnitudes in [0.5, 1]: no kept weight rounds to zero
        weight = (torch.rand(OUT, IN) * 0.5 + 0.5) * torch.sign(torch.randn(OUT, IN))
        weight[:, ::2] = 0  # exactly 50 %, 64 per row
        model[0].weight.copy_(weight)
    names = ["0"]
    record = quantize_model(model, names, QuantOptions(bits, 128)) if bits else None
    conversion = convert(model, names, fmt) if fmt != "dense" else None
    quantized = {"0": QuantOptions(bits, 128)} if bits else None
    row = layer_table(model, quantized).set_index("module").loc["0"]
    assert row["weight_nonzero"] == NNZ
    assert row["weight_bytes"] == HAND[(fmt, bits)]
    assert row["stored_bytes"] == HAND[(fmt, bits)] + BIAS
    assert row["bits_per_weight"] == pytest.approx(8 * HAND[(fmt, bits)] / (OUT * IN))
    assert row["quantization"] == (bits or "")
    summary = global_summary(layer_table(model, quantized), names)
    assert summary["pruned_layer_bits_per_weight"] == pytest.approx(row["bits_per_weight"])
    if conversion is not None:
        conversion.revert()
    if record is not None:
        record.restore(model)
    assert torch.equal(model[0].weight, weight)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (dict(quantize="int3"), "unknown quantizer 'int3'"),
        (dict(group_size=0), "group size must be a positive integer"),
        (dict(quantize="int8", quant_method="awq"), "unknown quantization method 'awq'"),
    ],
)
def test_bad_quantize_options_are_one_line(options, message):
    with pytest.raises(PrunescopeError, match=message) as error:
        StudyConfig(**options)
    assert "\n" not in str(error.value)


def test_cli_bad_input_is_one_line(tiny_model_dir, tmp_path):
    from typer.testing import CliRunner

    from prunescope.cli import app

    runner = CliRunner()
    for flags, message in (
        (["--quantize", "int3"], "unknown quantizer 'int3'"),
        (["--quantize", "int8", "--group-size", "0"], "group size must be a positive integer"),
    ):
        result = runner.invoke(
            app, ["study", "-m", str(tiny_model_dir), "--out", str(tmp_path / "x"), *flags]
        )
        assert result.exit_code != 0
        assert message in result.output
        assert "Traceback" not in result.output
    result = runner.invoke(
        app, ["study", "-m", str(tiny_model_dir), "--out", str(tmp_path / "y"), "--quantize", "int4"]
    )  # default group 128 does not divide the tiny model's 32 inputs: one line before any work
    assert result.exit_code != 0 and "--group-size 128 does not divide" in result.output
    result = runner.invoke(
        app,
        [
            "study",
            "-m",
            str(tiny_model_dir),
            "-o",
            str(tmp_path / "z"),
            "--variants",
            "bsr",
            "--quantize",
            "int8",
        ],
    )
    assert result.exit_code != 0 and "no quantized storage for variant 'bsr'" in result.output


def test_flags_on_every_command():
    from typer.testing import CliRunner

    from prunescope.cli import app

    runner = CliRunner()
    for command in ("study", "sweep", "prune"):
        text = runner.invoke(app, [command, "--help"], terminal_width=200).output
        for flag in ("--quantize", "--group-size", "--quant-method"):
            assert flag in text, (command, flag)


def test_sweep_quantize_axis_and_frontier(tiny_model_dir, tmp_path):
    import pandas as pd
    from typer.testing import CliRunner

    from prunescope.cli import app
    from prunescope.report.frontier import frontier_section, frontier_table

    out = tmp_path / "sweep"
    args = [
        "sweep", "-m", str(tiny_model_dir), "--method", "magnitude", "--sparsity", "0,0.5",
        "--variants", "masked,bitmask", "--quantize", "none,int8,int4", "--group-size", "16",
        "--max-tokens", "128", "--seqlen", "32", "--device", "cpu", "--out", str(out), "--no-progress",
    ]  # fmt: skip
    run_cli(args)
    table = pd.read_csv(out / "results.csv")
    assert set(table["variant"]) == {
        "masked", "masked+int8", "masked+int4", "bitmask", "bitmask+int8", "bitmask+int4",
    }  # fmt: skip
    assert len(table) == 2 * 6 and table["key"].is_unique
    assert (out / "frontier.png").is_file()
    report = (out / "report.md").read_text()
    assert "Pruning vs quantization at matched bytes" in report and "nearest bytes" in report
    rows = frontier_table(table)
    assert len(rows) == 2 * 3  # (sparsity, quantization) configurations, cheapest storage each
    dense_int8 = rows[(rows["target_sparsity"] == 0) & (rows["quantization"] == "int8")].iloc[0]
    assert dense_int8["format"] == "masked"  # dense int8 codes beat a bitmap over a dense matrix
    assert rows["pareto"].any() and rows.sort_values("stored_bytes")["pareto"].iloc[0]
    assert frontier_section(table[~table["variant"].str.contains("+", regex=False)]) == ""
    # A resumed sweep computes nothing.
    before = (out / "points.jsonl").read_bytes()
    assert CliRunner().invoke(app, args).exit_code == 0
    assert (out / "points.jsonl").read_bytes() == before


@pytest.mark.parametrize(("bits", "method"), [("int8", "magnitude"), ("int4", "wanda")])
def test_prune_quantize_checkpoint_matches_the_study_and_inspect(tiny_model_dir, tmp_path, bits, method):
    from transformers import AutoModelForCausalLM
    from typer.testing import CliRunner

    from prunescope.checkpoint import inspect_checkpoint
    from prunescope.layers import linear_weight, prunable_layers
    from prunescope.models import load_model
    from prunescope.pruning import PruneSpec, prune

    out = tmp_path / "pruned"
    args = ["prune", str(tiny_model_dir), "--out", str(out), "--method", method, "--sparsity", "0.5"]
    args += ["--quantize", bits, "--group-size", "16", "--calib-samples", "4", "--calib-seqlen", "16"]
    result = CliRunner().invoke(app_(), [*args, "--no-progress"])
    assert result.exit_code == 0, result.output
    written = AutoModelForCausalLM.from_pretrained(out)  # any loader reads the dequantized values
    if method == "magnitude":  # the in-memory prune + RTN gives the same values, bit for bit
        loaded = load_model(str(tiny_model_dir), "float32", "cpu")
        layers = prunable_layers(loaded.model)
        prune(loaded.model, layers, PruneSpec.create("magnitude", 0.5), progress=False)
        quantize_model(loaded.model, list(layers), QuantOptions(bits, 16))
        for name in layers:
            assert torch.equal(
                linear_weight(written.get_submodule(name)), linear_weight(loaded.model.get_submodule(name))
            )
    inspection = inspect_checkpoint(out, count_zeros=True)
    summary = inspection.summary
    assert summary["quantization"].startswith(bits) and 0.49 < summary["pruned_layer_sparsity"]
    expected = (8, 9) if bits == "int8" else (6, 7)  # 32/64 inputs: fp32 scales (and zeros) per row/group
    assert expected[0] < summary["pruned_layer_bits_per_weight"] < expected[1]
    assert summary["stored_bytes"] == summary["checkpoint_tensor_bytes"]  # the file holds fp32 values
    bad = CliRunner().invoke(app_(), [*args[:-4], "--quantize", "int8,int4", "--out", str(tmp_path / "b")])
    assert bad.exit_code != 0 and "one quantizer" in bad.output


def app_():
    from prunescope.cli import app

    return app


@pytest.mark.parametrize("method", ["sparsegpt", "wanda"])
def test_prune_with_gptq_from_disk_matches_the_pass_in_memory(tiny_model_dir, tmp_path, method):
    """`prune --quant-method gptq`: the checkpoint holds what the same block pass writes in memory (jointly
    with SparseGPT, GPTQ after each layer with Wanda), and its header and prune.json say so."""
    import json

    from transformers import AutoModelForCausalLM
    from typer.testing import CliRunner

    from prunescope.checkpoint import prune_checkpoint
    from prunescope.checkpoint.prune_stream import QUANT_METADATA
    from prunescope.checkpoint.safetensors_io import Checkpoint
    from prunescope.layers import linear_weight, prunable_layers
    from prunescope.models import load_model
    from prunescope.pruning import PruneSpec, prune

    options = QuantOptions("int4", 16, "gptq")
    spec = PruneSpec.create(method, 0.5, scope="layer" if method == "sparsegpt" else None)
    spec = dataclasses.replace(spec, quantize=options, calib_samples=4, calib_seqlen=16)
    samples = [torch.randint(0, 64, (1, 16), generator=torch.Generator().manual_seed(i)) for i in range(4)]
    prune_checkpoint(tiny_model_dir, tmp_path / "disk", spec, progress=False, calibration=samples)
    written = AutoModelForCausalLM.from_pretrained(tmp_path / "disk")
    loaded = load_model(str(tiny_model_dir), "float32", "cpu")
    layers = prunable_layers(loaded.model)
    prune(loaded.model, layers, spec, samples, progress=False)
    for name in layers:
        torch.testing.assert_close(
            linear_weight(written.get_submodule(name)),
            linear_weight(loaded.model.get_submodule(name)),
            rtol=0,
            atol=1e-6,
        )
    header = json.loads(Checkpoint(tmp_path / "disk").metadata[QUANT_METADATA])
    assert header["method"] == "gptq" and header["pass"] == ("joint" if method == "sparsegpt" else "in pass")

    out = tmp_path / "cli"
    args = ["prune", str(tiny_model_dir), "--out", str(out), "--method", method, "--sparsity", "0.5"]
    args += ["--quantize", "int4", "--group-size", "16", "--quant-method", "gptq", "--calib-samples", "4"]
    args += ["--calib-seqlen", "16", "--no-progress"]
    result = CliRunner().invoke(app_(), args)
    assert result.exit_code == 0, result.output
    record = json.loads((out / "prune.json").read_text())
    assert record["quantization"]["method"] == "gptq" and "in the pass" in result.output
