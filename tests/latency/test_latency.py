"""The latency harness itself: statistics on a fake clock, equal outputs enforced before timing,
unsupported formats reported, BSR byte accounting, and the `bench` command.

Nothing here depends on this machine's speed."""

from __future__ import annotations

import copy
import json
import math
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from typer.testing import CliRunner

from prunescope import PrunescopeError, PruneSpec, prunable_layers, prune
from prunescope.cli import app
from prunescope.experiments.latency import latency_section
from prunescope.formats import FORMATS, convert
from prunescope.formats.base import SparseLinear
from prunescope.formats.bsr import BSRLinear
from prunescope.formats.semi_structured import is_two_four
from prunescope.hardware.timing import choose_inner
from prunescope.latency import (
    BenchSubject,
    Candidate,
    LatencyConfig,
    Timing,
    TimingPolicy,
    bench_model,
    bench_weight,
    measure,
    measure_interleaved,
    parse_formats,
)
from prunescope.latency.variants import layer_theory
from tests.helpers import magnitude_pruned_opt, tiny_opt

pytestmark = pytest.mark.usefixtures("one_thread")


# ------------------------------------------------------------------------------------------- fake clock


class FakeClock:
    """Time moves only when the code under test says so: a read costs `tick`, `advance` adds work."""

    def __init__(self, tick: float = 0.0) -> None:
        self.now = 0.0
        self.tick = tick
        self.reads = 0

    def __call__(self) -> float:
        self.reads += 1
        self.now += self.tick
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def scripted(clock: FakeClock, durations: list[float], log: list | None = None, name: str = ""):
    """A callable whose successive calls take the given durations (the last one repeats)."""
    calls = iter(durations)
    last = [durations[-1]]

    def run() -> None:
        last[0] = next(calls, last[0])
        clock.advance(last[0])
        if log is not None:
            log.append(name)

    return run


FAST = TimingPolicy(warmup=1, min_time=0.003, min_repeats=3, max_time=1.0)


def test_timing_statistics():
    timing = Timing((0.3, 0.1, 0.2, 0.5), inner=4)
    assert (timing.min, timing.median, timing.max) == (0.1, 0.25, 0.5)
    assert timing.mean == pytest.approx(0.275)
    assert timing.repeats == 4
    assert timing.as_dict()["inner"] == 4
    assert Timing((1.0,)).stdev == 0.0


def test_measure_records_each_sample_and_its_statistics():
    clock = FakeClock()
    # warm-up 1 call (5 s, must be ignored), then 3 samples of one call each
    run = scripted(clock, [5.0, 2.0, 1.0, 3.0])
    timing = measure(run, TimingPolicy(warmup=1, min_time=0.0, min_repeats=3, max_time=100.0), clock)
    assert timing.samples == (2.0, 1.0, 3.0)
    assert (timing.min, timing.median, timing.max) == (1.0, 2.0, 3.0)


def test_inner_repeats_make_samples_long_enough_and_are_averaged():
    clock = FakeClock()
    policy = TimingPolicy(warmup=1, min_time=0.1, min_repeats=5, max_time=1.0)  # target 0.02 s per sample
    assert choose_inner(0.001, policy, has_setup=False) == 20
    assert choose_inner(0.5, policy, has_setup=False) == 1
    assert choose_inner(0.001, policy, has_setup=True) == 1
    assert choose_inner(0.0, policy, has_setup=False) == policy.max_inner
    timing = measure(scripted(clock, [0.001]), policy, clock)
    assert timing.inner == 20
    assert timing.median == pytest.approx(0.001)
    assert timing.repeats == 5  # 5 samples x 0.02 s = min_time


def test_interleaved_rounds_are_shuffled_and_ratios_come_from_the_same_run():
    clock = FakeClock()
    log: list[str] = []
    candidates = {
        "a": Candidate(scripted(clock, [0.002], log, "a")),
        "b": Candidate(scripted(clock, [0.001], log, "b")),
        "c": Candidate(scripted(clock, [0.004], log, "c")),
    }
    policy = TimingPolicy(warmup=1, min_time=0.0, min_repeats=12, max_time=1.0)
    timings = measure_interleaved(candidates, policy, clock)
    assert log[:3] == ["a", "b", "c"]  # warm-up
    rounds = [tuple(log[i : i + 3]) for i in range(3, len(log), 3)]
    assert len(rounds) == 12 and all(sorted(r) == ["a", "b", "c"] for r in rounds)  # one sample each
    # shuffled, not rotated: every candidate follows each of the others (a cache-state bias would not)
    follows = {(r[i - 1], r[i]) for r in rounds for i in (1, 2)}
    assert follows == {(x, y) for x in "abc" for y in "abc" if x != y}
    log.clear()
    measure_interleaved(candidates, policy, clock)
    assert [tuple(log[i : i + 3]) for i in range(3, len(log), 3)] == rounds  # seeded: reproducible
    assert timings["a"].median / timings["b"].median == pytest.approx(2.0)
    assert timings["c"].median / timings["a"].median == pytest.approx(2.0)


def test_fixed_rounds_policy_takes_exactly_that_many_samples_of_batched_calls():
    clock = FakeClock()
    candidates = {"slow": Candidate(scripted(clock, [0.05])), "fast": Candidate(scripted(clock, [1e-5]))}
    timings = measure_interleaved(candidates, TimingPolicy.rounds(5), clock)
    assert timings["slow"].repeats == timings["fast"].repeats == 5  # no time budget cuts a slow one short
    assert timings["slow"].inner == 1
    assert 20 <= timings["fast"].inner <= 21  # batched to >= 0.2 ms per sample (float rounding: 21)
    assert timings["fast"].median == pytest.approx(1e-5)


def test_setup_is_not_timed_and_sync_brackets_every_sample():
    clock = FakeClock()
    synced: list[float] = []
    candidate = Candidate(scripted(clock, [0.01]), setup=lambda: clock.advance(100.0))
    policy = TimingPolicy(warmup=2, min_time=0.0, min_repeats=4, max_time=1.0)
    timing = measure_interleaved({"x": candidate}, policy, clock, sync=lambda: synced.append(clock.now))["x"]
    assert timing.inner == 1
    assert timing.samples == pytest.approx((0.01,) * 4)
    assert len(synced) == 2 * (2 + 4)  # before and after every warm-up call and every sample


def test_slow_candidates_stop_at_max_time_and_rounds_are_capped():
    clock = FakeClock()
    slow = measure(
        scripted(clock, [2.0]), TimingPolicy(warmup=1, min_time=0.1, min_repeats=50, max_time=5.0), clock
    )
    assert slow.repeats == 3
    frozen = FakeClock()  # a clock that never moves must not loop forever
    capped = measure(lambda: None, TimingPolicy(warmup=1, min_time=1.0, max_rounds=7, max_inner=3), frozen)
    assert capped.repeats == 7 and capped.inner == 3


def test_policy_rejects_nonsense():
    with pytest.raises(PrunescopeError):
        TimingPolicy(min_time=2.0, max_time=1.0)
    with pytest.raises(PrunescopeError):
        TimingPolicy(min_repeats=0)


# --------------------------------------------------------------------------------------------- formats


class BrokenLinear(SparseLinear):
    """A format whose forward is wrong: the harness must report it, never time it."""

    format_name = "broken"

    def __init__(self, weight: torch.Tensor, bias) -> None:
        super().__init__(weight.shape[1], weight.shape[0], bias)
        self.register_buffer("weight", weight.clone())

    @classmethod
    def from_dense(cls, weight, bias=None):
        return cls(weight.detach(), bias)

    def forward(self, x):
        return F.linear(x, self.weight, self.bias) + 1.0

    def to_dense(self):
        return self.weight

    @property
    def nnz(self):
        return int(torch.count_nonzero(self.weight))

    @property
    def dtype(self):
        return self.weight.dtype

    def weight_bytes(self):
        return {"values": self.weight.numel() * self.weight.element_size()}


@pytest.fixture
def broken_format(monkeypatch):
    monkeypatch.setitem(FORMATS, "broken", f"{__name__}:BrokenLinear")
    monkeypatch.setitem(FORMATS, "missing", "prunescope.formats.no_such_module:Nothing")
    return "broken"


def _pruned_weight(out_features=32, in_features=64, sparsity=0.6, seed=0):
    generator = torch.Generator().manual_seed(seed)
    dense = torch.randn(out_features, in_features, generator=generator)
    pruned = dense.clone()
    pruned[torch.rand(dense.shape, generator=generator) < sparsity] = 0
    return dense, pruned, torch.randn(out_features, generator=generator)


def _rows_by_format(rows, n):
    return {r["format"]: r for r in rows if r["n"] == n}


def test_parse_formats_puts_the_baseline_first_and_rejects_unknown_names():
    assert parse_formats("csr,masked") == ["dense", "csr", "masked"]
    assert parse_formats("masked,dense,bsr") == ["dense", "masked", "bsr"]
    with pytest.raises(PrunescopeError, match="unknown format"):
        parse_formats("dense,nope")
    with pytest.raises(PrunescopeError, match="once"):
        parse_formats("csr,csr")


def test_bench_weight_times_correct_formats_and_reports_wrong_and_unsupported_ones(broken_format):
    dense, pruned, bias = _pruned_weight()
    config = LatencyConfig(
        formats=parse_formats("masked,csr,bsr,broken,missing,semi-structured"), tokens=[1, 5], policy=FAST
    )
    config.block_size = 16
    clock = FakeClock(tick=0.001)  # every sample lasts exactly one tick: speedups are exactly 1
    rows = bench_weight(dense, pruned, bias, config, clock=clock)
    assert len(rows) == 2 * len(config.formats)
    by = _rows_by_format(rows, 5)
    for name in ("dense", "masked", "csr", "bsr"):
        assert by[name]["status"] == "ok", by[name]["status"]
        assert by[name]["repeats"] >= 3 and by[name]["speedup"] == pytest.approx(1.0)
    assert by["masked"]["max_rel_err"] < 1e-5 and by["csr"]["max_rel_err"] < 1e-5
    assert by["broken"]["status"].startswith("error: output differs")
    assert by["broken"]["repeats"] == 0 and math.isnan(by["broken"]["median_s"])
    assert by["missing"]["status"].startswith("unsupported:")
    assert by["semi-structured"]["status"] == (
        "unsupported: 2:4 semi-structured kernels need CUDA (compute capability >= 8.0), not cpu"
    )
    assert math.isnan(by["semi-structured"]["speedup"])


def test_theory_columns_follow_stored_bytes_and_executed_flops():
    dense, pruned, bias = _pruned_weight(sparsity=0.75)
    config = LatencyConfig(formats=parse_formats("masked,csr"), tokens=[3], policy=FAST)
    by = _rows_by_format(bench_weight(dense, pruned, bias, config, clock=FakeClock(tick=0.001)), 3)
    nnz = int(torch.count_nonzero(pruned))
    dense_bytes = 32 * 64 * 4 + 32 * 4
    csr_bytes = nnz * 4 + nnz * 4 + 33 * 4 + 32 * 4  # values + int32 cols + int32 crow + bias
    assert by["csr"]["stored_bytes"] == csr_bytes
    assert by["csr"]["byte_theory"] == pytest.approx(dense_bytes / csr_bytes)
    assert by["csr"]["flop_theory"] == pytest.approx(2 * 32 * 64 / (2 * nnz))
    assert by["masked"]["flop_theory"] == 1.0 and by["masked"]["byte_theory"] == 1.0
    assert by["csr"]["measured_over_bytes"] == pytest.approx(by["csr"]["speedup"] / by["csr"]["byte_theory"])
    assert by["csr"]["measured_over_flop"] == pytest.approx(by["csr"]["speedup"] / by["csr"]["flop_theory"])
    flops_only = layer_theory(None, 8, 4, torch.float16, None)
    assert flops_only["dense_bytes"] == 64 and flops_only["flop_theory"] == 1.0


def test_speedup_is_the_ratio_of_medians_from_the_fake_clock():
    dense, pruned, bias = _pruned_weight()
    config = LatencyConfig(formats=parse_formats("masked"), tokens=[1], policy=FAST)
    clock = FakeClock()
    durations = {"dense": 0.004, "masked": 0.001}

    def build(names, weight, b):
        return dict.fromkeys(names)

    # Charge the fake clock per call by wrapping F.linear through the weight each variant uses.
    real_linear = F.linear

    def timed_linear(x, w, b=None):
        clock.advance(durations["dense"] if w is dense else durations["masked"])
        return real_linear(x, w, b)

    import prunescope.latency.benchmark as benchmark

    benchmark.F.linear, original = timed_linear, benchmark.F.linear
    try:
        rows = bench_weight(dense, pruned, bias, config, clock=clock, build=build)
    finally:
        benchmark.F.linear = original
    by = _rows_by_format(rows, 1)
    assert by["dense"]["median_s"] == pytest.approx(0.004)
    assert by["masked"]["speedup"] == pytest.approx(4.0)
    assert by["masked"]["measured_over_bytes"] == pytest.approx(4.0)


def test_half_precision_csr_and_bsr_on_cpu_are_unsupported_rows():
    dense, pruned, bias = (t.half() for t in _pruned_weight())
    config = LatencyConfig(formats=parse_formats("masked,csr,bsr"), tokens=[2], policy=FAST)
    by = _rows_by_format(bench_weight(dense, pruned, bias, config, clock=FakeClock(tick=0.001)), 2)
    assert by["masked"]["status"] == "ok"
    assert by["csr"]["status"].startswith("unsupported: torch CSR matmul does not support float16")
    assert by["bsr"]["status"].startswith("unsupported: torch BSR matmul does not support float16")


# ------------------------------------------------------------------------------------------------- BSR


def test_bsr_matches_dense_and_counts_explicit_zeros_in_bytes_and_flops():
    weight = torch.zeros(32, 48)
    weight[:16, 16:32] = torch.randn(16, 16)
    weight[20, 40] = 3.0  # one non-zero keeps a whole 16x16 block
    bias = torch.randn(32)
    module = BSRLinear.from_dense(weight, bias, block_size=16)
    x = torch.randn(2, 5, 48)
    torch.testing.assert_close(module(x), F.linear(x, weight, bias), rtol=1e-5, atol=1e-5)
    assert torch.equal(module.to_dense(), weight)
    assert module.blocks == 2 and module.block_size == 16
    assert module.nnz == 257
    assert module.flops_per_token() == 2 * 2 * 256
    assert module.weight_bytes() == {"values": 2 * 256 * 4, "col_indices": 2 * 4, "crow_indices": 3 * 4}
    assert module.stored_bytes() == 2 * 256 * 4 + 2 * 4 + 3 * 4 + 32 * 4


def test_bsr_rejects_blocks_that_do_not_tile_the_weight():
    with pytest.raises(PrunescopeError, match="does not divide"):
        BSRLinear.from_dense(torch.randn(30, 32), block_size=16)


def test_bsr_converts_a_model_and_reverts_exactly():
    model, layers = magnitude_pruned_opt()
    ids = torch.randint(0, 320, (2, 8))
    with torch.no_grad():
        reference = model(ids).logits
        before = {n: m.weight.clone() for n, m in layers.items()}
        conversion = convert(model, list(layers), "bsr")
        assert isinstance(model.get_submodule(next(iter(layers))), BSRLinear)
        torch.testing.assert_close(model(ids).logits, reference, rtol=1e-4, atol=1e-4)
        conversion.revert()
    assert all(torch.equal(model.get_submodule(n).weight, w) for n, w in before.items())


def test_two_four_detection():
    weight = torch.tensor([[1.0, 0, 2, 0, 0, 0, 0, 3]])
    assert is_two_four(weight)
    assert not is_two_four(torch.ones(1, 8))
    assert not is_two_four(torch.zeros(1, 6))


# ----------------------------------------------------------------------------------------------- model


def _tiny_pair(sparsity=0.5):
    model = tiny_opt()
    names = list(prunable_layers(model))
    pruned = copy.deepcopy(model)
    prune(pruned, {n: pruned.get_submodule(n) for n in names}, PruneSpec.create("magnitude", sparsity))
    return model, pruned, names


def test_bench_model_rows_prefill_and_decode_per_format(broken_format):
    dense, pruned, names = _tiny_pair()
    config = LatencyConfig(
        formats=parse_formats("masked,csr,broken,semi-structured"),
        prefill_grid=[(1, 8), (2, 4)],
        decode_batches=[1, 3],
        decode_tokens=2,
        decode_prompt=4,
        policy=FAST,
    )
    rows = bench_model(BenchSubject(dense.get_submodule, pruned, names, config, clock=FakeClock(tick=0.001)))
    assert [(r["kind"], r["batch"], r["seqlen"]) for r in rows[:: len(config.formats)]] == [
        ("prefill", 1, 8),
        ("prefill", 2, 4),
        ("decode", 1, 2),
        ("decode", 3, 2),
    ]
    decode = {r["format"]: r for r in rows if r["kind"] == "decode" and r["batch"] == 3}
    assert decode["csr"]["status"] == "ok" and decode["csr"]["tokens"] == 6
    assert decode["csr"]["tokens_per_s"] == pytest.approx(6 / decode["csr"]["median_s"])
    assert decode["broken"]["status"].startswith("error: logits differ")
    assert decode["semi-structured"]["status"].startswith("unsupported:")
    assert decode["csr"]["byte_theory"] < 1.5 and decode["masked"]["byte_theory"] == 1.0
    assert decode["csr"]["flop_theory"] > 1.0


def test_bench_model_refuses_more_positions_than_the_context():
    dense, pruned, names = _tiny_pair()
    config = LatencyConfig(formats=["dense", "masked"], prefill_grid=[(1, 65)], policy=FAST)
    with pytest.raises(PrunescopeError, match="context"):
        bench_model(BenchSubject(dense.get_submodule, pruned, names, config, clock=FakeClock(tick=0.001)))


def test_latency_section_from_a_record_and_from_a_spec(tmp_path):
    config = LatencyConfig(
        tokens=[1], prefill_grid=[(1, 4)], decode_batches=[1], decode_tokens=1, policy=FAST
    )
    model = tiny_opt()
    layers = prunable_layers(model)
    spec = PruneSpec.create("magnitude", 0.5)
    record = prune(model, layers, spec)
    pruned_state = {n: m.weight.clone() for n, m in layers.items()}
    section = latency_section(model, record=record, pruned=list(layers), config=config, plot_dir=tmp_path)
    # the model handed in stays pruned: the dense baseline is a restored copy
    assert all(torch.equal(model.get_submodule(n).weight, w) for n, w in pruned_state.items())
    assert "### Layers" in section["markdown"] and "### Model" in section["markdown"]
    assert {r["format"] for r in section["rows"]} == {"dense", "masked", "csr"}
    assert (tmp_path / "latency_speedup_vs_tokens.png").is_file()
    json.dumps(section, default=str)

    dense = tiny_opt()
    config.model_level = False
    section = latency_section(dense, spec=spec, formats="dense,bsr,semi-structured", config=config)
    rows = [r for r in section["rows"] if r["shape"] == "32x32"]
    assert [r["format"] for r in rows] == ["dense", "masked", "bsr", "semi-structured"]
    assert rows[-1]["median_s"] is None  # strict JSON: NaN becomes null
    assert config.formats == ["dense", "masked", "csr"]  # the caller's config is left alone
    with pytest.raises(PrunescopeError, match="calibration"):
        latency_section(dense, spec=PruneSpec.create("wanda", 0.5), config=config)

    study_result = SimpleNamespace(
        spec=spec,
        pruned_layers=["model.decoder.layers.0.fc1"],
        config=SimpleNamespace(variants=["dense", "csr"]),
    )
    section = latency_section(study_result, model=dense, config=config)
    assert {(r["shape"], r["format"]) for r in section["rows"]} == {
        ("64x32", "dense"),
        ("64x32", "masked"),
        ("64x32", "csr"),
    }


# ------------------------------------------------------------------------------------------------- CLI


def test_bench_command_writes_tables_json_and_plots(tiny_model_dir, tmp_path):
    out = tmp_path / "bench"
    args = [
        "bench",
        "--model",
        str(tiny_model_dir),
        "--formats",
        "masked,bsr,semi-structured",
        "--tokens",
        "1,4",
        "--prefill-grid",
        "1x8",
        "--decode-batches",
        "1",
        "--decode-tokens",
        "2",
        "--min-time",
        "0.001",
        "--out",
        str(out),
    ]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "layer latency" in result.output and "model latency" in result.output
    assert "semi-structured: unsupported: 2:4 semi-structured kernels need CUDA" in result.output
    for name in ("layers.csv", "model.csv", "latency.json", "report.md", "latency_model_speedup.png"):
        assert (out / name).is_file(), name
    data = json.loads((out / "latency.json").read_text())
    assert data["environment"]["threads"] == torch.get_num_threads()
    assert "blas" in data["environment"] and "mkl_available" in data["environment"]
    assert {r["format"] for r in data["model"]} == {"dense", "masked", "bsr", "semi-structured"}
    again = CliRunner().invoke(app, args)
    assert again.exit_code == 2 and "exists" in again.output


@pytest.mark.parametrize(
    ("option", "value", "message"),
    [
        ("--formats", "dense,foo", "unknown format"),
        ("--prefill-grid", "8", "BATCHxSEQLEN"),
        ("--tokens", "0", ">= 1"),
    ],
)
def test_bench_command_bad_options_are_one_line_errors(tmp_path, option, value, message):
    result = CliRunner().invoke(app, ["bench", option, value, "--out", str(tmp_path / "x")])
    assert result.exit_code == 2
    assert message in result.output
