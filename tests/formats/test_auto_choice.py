"""`auto` keeps what it chose per layer, the timings it compared and why (layer table, report.md)."""

from __future__ import annotations

import math

import pytest
import torch

from prunescope.formats.auto import AUTO_COLUMNS, _fastest, _reason, auto_details, choose_format

pytestmark = pytest.mark.usefixtures("one_thread")

# Fastest seconds per call at 1 and 64 tokens: (timings, the reason auto gives).
SLOWER = {1: {"dense": 1.0, "bitmask": 1.5}, 64: {"dense": 1.0}}
IN_MARGIN = {1: {"dense": 1.0, "bitmask": 0.99}, 64: {"dense": 1.0}}
LOSES_PREFILL = {1: {"dense": 1.0, "bitmask": 0.5}, 64: {"dense": 1.0, "bitmask": 2.0}}
WINS = {1: {"dense": 1.0, "bitmask": 0.5}, 64: {"dense": 1.0, "bitmask": 1.0}}
CASES = [
    (SLOWER, "sparse slower at 1 token"),
    (IN_MARGIN, "sparse within the 3% margin of dense at 1 token"),
    (LOSES_PREFILL, "bitmask under 90% of dense's speed at 64 tokens"),
    (WINS, "bitmask fastest at 1 token"),
]


@pytest.mark.parametrize("best, reason", CASES)
def test_the_reason_follows_the_rule_the_choice_was_made_by(best, reason):
    choice = _fastest(best, [1, 64], 0.03, 0.90)
    assert _reason(best, [1, 64], choice, 0.03, 0.90) == reason
    assert (choice == "dense") == (not reason.startswith("bitmask fastest"))


def test_a_chosen_layer_carries_its_timings_and_reason_into_the_layer_table():
    from prunescope.formats import convert
    from prunescope.layers import prunable_layers
    from prunescope.structure import layer_table
    from tests.helpers import magnitude_pruned_opt

    model, layers = magnitude_pruned_opt(0.5)
    conversion = convert(model, list(layers), "auto")
    try:
        table = layer_table(model).set_index("module")
        for name in prunable_layers(model):
            module = model.get_submodule(name)
            row = table.loc[name]
            assert row["auto_choice"] == module.auto_choice and row["auto_reason"] == module.auto_reason
            assert row["auto_dense_s"] == module.auto_timings_min["dense"]
            sparse = {k: t for k, t in module.auto_timings_min.items() if k != "dense"}
            assert row["auto_sparse_s"] == min(sparse.values()) and row["auto_tokens"] == 1
        assert table.loc["model.decoder.embed_tokens", list(AUTO_COLUMNS)].isna().all()
    finally:
        conversion.revert()
    assert "auto_choice" not in layer_table(model)  # no auto layer, no auto columns


def test_details_name_the_best_sparse_candidate_even_when_dense_wins():
    weight = torch.randn(16, 32)
    module = choose_format(weight, None, n_tokens=(1, 4), repeats=2, cache="hot")
    details = auto_details(module)
    assert set(details) == set(AUTO_COLUMNS) and details["auto_choice"] == module.auto_choice
    assert details["auto_sparse"] in ("bitmask", "csr16") and not math.isnan(details["auto_sparse_s"])
    assert auto_details(torch.nn.Linear(2, 2)) == {}
