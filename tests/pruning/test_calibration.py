"""Calibration samples: seeded random windows, train-split only for the demo, clear errors for short text."""

from __future__ import annotations

import json

import pytest
import torch

from prunescope.demo import corpus as demo
from prunescope.errors import PrunescopeError
from prunescope.pruning import calibration as calibration_module
from prunescope.pruning.calibration import calibration_samples


class ByteTokenizer:
    """Just enough tokenizer for calibration: one id per UTF-8 byte, BOS (1) first."""

    model_max_length = 64

    def __call__(self, texts: list[str], verbose: bool = True) -> dict:  # the keyword HF tokenizers take
        return {"input_ids": [[1, *text.encode("utf-8")] for text in texts]}


def test_windows_are_seeded_random_crops(tmp_path) -> None:
    path = tmp_path / "calib.txt"
    path.write_text("first document " * 40 + "\n\n" + "second one " * 40, encoding="utf-8")
    tokenizer = ByteTokenizer()
    samples = calibration_samples(tokenizer, str(path), "anything", 8, 32, seed=0)
    assert len(samples) == 8
    assert all(s.shape == (1, 32) and s.dtype == torch.long for s in samples)
    again = calibration_samples(tokenizer, str(path), "anything", 8, 32, seed=0)
    other = calibration_samples(tokenizer, str(path), "anything", 8, 32, seed=1)
    assert all(torch.equal(a, b) for a, b in zip(samples, again, strict=True))
    assert not all(torch.equal(a, b) for a, b in zip(samples, other, strict=True))
    assert tokenizer.model_max_length == 64  # restored after the long encode


def test_builtin_english_for_other_models() -> None:
    samples = calibration_samples(ByteTokenizer(), None, "some/model", 4, 64, seed=0)
    assert len(samples) == 4 and samples[0].shape == (1, 64)


def test_short_text_names_the_sizes(tmp_path) -> None:
    path = tmp_path / "short.txt"
    path.write_text("tiny", encoding="utf-8")
    with pytest.raises(PrunescopeError, match=r"5 tokens.*32 tokens need at least 33"):
        calibration_samples(ByteTokenizer(), str(path), "x", 4, 32)


def test_missing_file_is_an_error(tmp_path) -> None:
    with pytest.raises(PrunescopeError, match="does not exist"):
        calibration_samples(ByteTokenizer(), str(tmp_path / "nope.txt"), "x", 4, 32)


def test_demo_calibration_never_uses_heldout_modules(tmp_path, monkeypatch) -> None:
    docs = {"alpha": "a" * 300, "alpha.sub": "b" * 300, "beta": "c" * 300, "gamma": "d" * 300}
    monkeypatch.setattr(demo, "stdlib_documents", lambda: dict(docs))
    (tmp_path / demo.HELDOUT_FILE).write_text(json.dumps({"modules": ["alpha"]}), encoding="utf-8")
    monkeypatch.setattr(demo, "DEMO_MODEL_DIR", tmp_path)
    texts = calibration_module._demo_train_documents(seed=0)
    assert sorted(texts) == ["c" * 300, "d" * 300]  # `alpha.sub` goes with its held-out package
    samples = calibration_samples(ByteTokenizer(), "builtin", "demo", 16, 32, seed=0)
    used = {int(t) for s in samples for t in s.flatten()}
    assert used <= {1, ord("c"), ord("d")}
