"""The one-model-copy workflow: every point leaves the dense model exactly as it was."""

from __future__ import annotations

import torch

from prunescope.experiments.study import StudyConfig, Workbench, fit_batch_size
from prunescope.pruning import PruneSpec


def test_points_restore_the_dense_model_exactly(tiny_model_dir, tmp_path):
    bench = Workbench(
        StudyConfig(model=str(tiny_model_dir), max_tokens=128, seqlen=32, device="cpu"),  # bitmask: CPU
        work_dir=tmp_path / "work",
        progress=False,
    )
    before = {name: p.detach().clone() for name, p in bench.model.named_parameters()}
    for spec in (PruneSpec.create("magnitude", 0.5), PruneSpec.create("random", pattern="2:4")):
        results = bench.evaluate(spec, ["masked", "csr", "bitmask"]).variants
        assert set(results) == {"masked", "csr", "bitmask"}
        top1 = {name: r.behaviour.top1_agreement for name, r in results.items()}
        assert max(top1.values()) - min(top1.values()) < 1e-3  # the format never changes predictions
    after = dict(bench.model.named_parameters())
    assert all(torch.equal(after[name], value) for name, value in before.items())
    assert not list((tmp_path / "work").glob("prune_record.pt"))  # the spilled record came back


def test_batches_are_cut_to_the_logits_budget():
    assert fit_batch_size(8, 256, 4096) == 8  # demo-sized vocabulary: 32 MB
    assert fit_batch_size(8, 256, 50272) == 1  # OPT vocabulary: one window is already 51 MB
    assert fit_batch_size(8, 2048, 150000) == 1
