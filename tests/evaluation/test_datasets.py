"""Corpus and calibration sources: local dataset files, the papers' aliases (on local fixtures), bad inputs.

Fixtures are built here with `datasets.Dataset.from_dict` in the shapes of wikitext (rows are lines, many
of them empty) and c4 (one document per row); the aliases are resolved to them by replacing the one hub
call (`evaluation.datasets.load_hf`). Nothing is downloaded.
"""

from __future__ import annotations

import json

import pandas as pd
import pytest

from prunescope.errors import PrunescopeError
from prunescope.evaluation import datasets as sources
from prunescope.evaluation.corpus import builtin_texts
from tests.helpers import QUICK_CALIBRATED, flags, study_cli

datasets = pytest.importorskip("datasets")


def wikitext_rows(texts: list[str]) -> list[str]:
    """wikitext-2-raw's shape: a heading row, empty rows around it, one row per paragraph line."""
    rows = []
    for number, text in enumerate(texts):
        rows += ["", f" = Section {number} = \n", ""]
        rows += [f" {line}\n" for line in text.splitlines() if line.strip()]
    return rows


@pytest.fixture(scope="module")
def fixtures(tmp_path_factory):
    root = tmp_path_factory.mktemp("datasets")
    texts = builtin_texts()
    wiki = datasets.DatasetDict(
        {
            "train": datasets.Dataset.from_dict({"text": wikitext_rows(texts[4:])}),
            "test": datasets.Dataset.from_dict({"text": wikitext_rows(texts[:4])}),
        }
    )
    wiki.save_to_disk(str(root / "wikitext"))
    # c4's shape: one document per row, a `url` and a `timestamp` beside the text.
    c4 = datasets.Dataset.from_dict(
        {
            "text": texts * 3,
            "url": [f"u{i}" for i in range(3 * len(texts))],
            "timestamp": ["t"] * 3 * len(texts),
        }
    )
    c4.to_parquet(str(root / "c4.parquet"))
    c4.select(range(5)).save_to_disk(str(root / "c4_arrow"))
    arrow = next((root / "c4_arrow").glob("*.arrow"))
    datasets.Dataset.from_dict({"body": texts}).to_parquet(str(root / "body.parquet"))
    datasets.Dataset.from_dict({"text": ["", "  ", ""]}).to_parquet(str(root / "empty.parquet"))
    return {"root": root, "wiki": wiki, "c4": c4, "arrow": arrow, "texts": texts}


@pytest.fixture
def hub(fixtures, monkeypatch):
    """The hub loader answered from the local fixtures; records every call."""
    calls = []

    def fake(path, config, split, data_files):
        calls.append((path, config, split, data_files))
        if path == "wikitext":
            return fixtures["wiki"][split]
        if path == "allenai/c4":
            return fixtures["c4"]
        raise ConnectionError(f"Couldn't reach '{path}' on the Hub (OfflineModeIsEnabled)")

    monkeypatch.setattr(sources, "load_hf", fake)
    return calls


def test_save_to_disk_folder_picks_test_for_evaluation_and_train_for_calibration(fixtures):
    folder = str(fixtures["root"] / "wikitext")
    evaluation = sources.resolve(folder, purpose="evaluation")
    calibration = sources.resolve(folder, purpose="calibration")
    assert evaluation.split == "test" and calibration.split == "train"
    assert evaluation.rows == list(fixtures["wiki"]["test"]["text"])  # empty rows kept for `joined`
    assert "" in evaluation.rows and all(row.strip() for row in evaluation.documents)


def test_parquet_and_arrow_files(fixtures):
    parquet = sources.resolve(str(fixtures["root"] / "c4.parquet"))
    assert parquet.rows == fixtures["texts"] * 3
    arrow = sources.resolve(str(fixtures["arrow"]))
    assert arrow.rows == fixtures["texts"][:5]
    column = sources.resolve(str(fixtures["root"] / "body.parquet"), text_column="body")
    assert column.rows == fixtures["texts"]


def test_aliases_use_the_references_splits_shards_and_join(hub, fixtures):
    wiki = sources.resolve("wikitext2")
    assert hub[-1] == ("wikitext", "wikitext-2-raw-v1", "test", None)
    assert wiki.join == "\n\n" and wiki.paper_dataset and wiki.split == "test"
    assert sources.resolve("wikitext2", purpose="calibration").join == " "  # Wanda/SparseGPT train stream
    assert hub[-1][2] == "train"
    c4 = sources.resolve("c4")
    assert hub[-1] == ("allenai/c4", None, "validation", "en/c4-validation.00000-of-00008.json.gz")
    assert c4.join == " " and c4.max_windows == 256 and len(c4.rows) == min(1100, len(fixtures["c4"]))
    calib = sources.resolve("c4", purpose="calibration")
    assert hub[-1] == ("allenai/c4", None, "train", "en/c4-train.00000-of-01024.json.gz")
    assert calib.per_document


def test_hf_names_parse():
    assert sources.parse_hf("hf:wikitext:wikitext-103-raw-v1:validation") == (
        "wikitext",
        "wikitext-103-raw-v1",
        "validation",
    )
    assert sources.parse_hf("hf:allenai/c4") == ("allenai/c4", None, None)
    assert sources.parse_hf("hf:user/set::test") == ("user/set", None, "test")
    with pytest.raises(PrunescopeError):
        sources.parse_hf("hf:")


def test_hf_source_with_text_column_through_the_loader(hub, monkeypatch, fixtures):
    body = datasets.Dataset.from_dict({"body": fixtures["texts"]})
    monkeypatch.setattr(sources, "load_hf", lambda path, config, split, data_files: body)
    corpus = sources.resolve("hf:someone/set:cfg:test", text_column="body")
    assert corpus.rows == fixtures["texts"] and corpus.split == "test"


def test_study_on_the_alias_defaults_to_joined_and_names_it(hub, tiny_model_dir, tmp_path):
    out = tmp_path / "run"
    result = study_cli(*flags(model=tiny_model_dir, corpus="wikitext2", variants="dense,masked", out=out))
    assert "perplexity protocol joined" in result.output and "wikitext2 test" in result.output
    summary = pd.read_csv(out / "summary.csv")
    assert set(summary["ppl_protocol"]) == {"joined"} and set(summary["dataset"]) == {"wikitext2"}
    assert set(summary["split"]) == {"test"} and set(summary["seqlen"]) == {64}  # the model context
    run = json.loads((out / "run.json").read_text())
    assert run["evaluation"]["join"] == "\\n\\n" and run["evaluation"]["ppl_protocol"] == "joined"
    report = (out / "report.md").read_text()
    assert "joined (Wanda eval_ppl_wikitext" in report and "wikitext2 test" in report


@pytest.mark.parametrize("source", ["parquet", "arrow", "folder"])
def test_study_reads_local_dataset_files(source, fixtures, tiny_model_dir, tmp_path):
    path = {
        "parquet": fixtures["root"] / "c4.parquet",
        "arrow": fixtures["arrow"],
        "folder": fixtures["root"] / "wikitext",
    }[source]
    out = tmp_path / "run"
    study_cli(*flags(model=tiny_model_dir, corpus=path, variants="dense", seqlen=32, max_tokens=300, out=out))
    summary = pd.read_csv(out / "summary.csv")
    assert summary.loc[0, "ppl_protocol"] == "document" and summary.loc[0, "positions"] <= 300


def test_calibration_from_aliases(hub, tiny_model_dir, tmp_path):
    out = tmp_path / "run"
    args = flags(
        model=tiny_model_dir, method="wanda", sparsity=0.5, calibration="c4", variants="dense,masked"
    )
    study_cli(*args, *QUICK_CALIBRATED, *flags(out=out))
    assert hub[-1] == ("allenai/c4", None, "train", "en/c4-train.00000-of-01024.json.gz")


def test_c4_calibration_samples_come_from_single_documents(hub, tiny_model_dir):
    from transformers import AutoTokenizer

    from prunescope.pruning.calibration import calibration_samples

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    samples = calibration_samples(tokenizer, "c4", "tiny", 6, 24, seed=3)
    encoded = [tokenizer(text)["input_ids"] for text in builtin_texts()]
    for sample in samples:
        window = sample[0].tolist()
        assert len(window) == 24
        assert any(window == ids[i : i + 24] for ids in encoded for i in range(len(ids) - 23)), (
            "each c4 sample is a crop of one document"
        )
    again = calibration_samples(tokenizer, "c4", "tiny", 6, 24, seed=3)
    assert all((a == b).all() for a, b in zip(samples, again, strict=True))


@pytest.mark.parametrize(
    "args, message",
    [
        (["--corpus", "wikitext3"], "unknown dataset 'wikitext3'"),
        (["--corpus", "{root}/body.parquet"], "no column 'text'"),
        (["--corpus", "{root}/empty.parquet"], "holds no text"),
        (["--corpus", "ptb"], "HF_HUB_OFFLINE=0"),
        (["--corpus", "hf:prunescope-tests/never-cached"], "save_to_disk"),
        (["--calibration", "c5", "--method", "wanda"], "unknown dataset 'c5'"),
        (["--ppl-protocol", "sliding"], "unknown perplexity protocol"),
        (["--seeds", "0,x"], "seeds must be"),
    ],
)
def test_bad_sources_are_one_line_exit_2_nothing_written(
    args, message, fixtures, hub, tiny_model_dir, tmp_path, monkeypatch
):
    if "hf:prunescope-tests/never-cached" in args:
        monkeypatch.undo()  # the real hub loader, offline: nothing cached under that name
    out = tmp_path / "out"
    args = [a.format(root=fixtures["root"]) for a in args]
    result = study_cli(*flags(model=tiny_model_dir), *args, *flags(out=out), expect=2)
    assert message in result.output
    assert "Traceback" not in result.output and len(result.output.strip().splitlines()) == 1
    assert not out.exists() and not list(tmp_path.iterdir())


def test_offline_alias_names_dataset_and_local_alternative(hub, tiny_model_dir, tmp_path):
    result = study_cli(*flags(model=tiny_model_dir, corpus="ptb", out=tmp_path / "o"), expect=2)
    assert "ptb" in result.output and ".parquet" in result.output and "save_to_disk" in result.output
