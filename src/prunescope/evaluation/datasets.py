"""Where evaluation and calibration texts come from: one resolver for every `--corpus` / `--calibration`.

Accepted sources:
- None / "builtin": the demo's held-out stdlib modules (the demo model and checkpoints pruned from it) or the
  builtin English set; the corpus names which (`corpus.builtin_label`);
- a .txt (blank-line blocks) or .jsonl (`text` field) file, read as before (`evaluation.corpus`);
- an alias of a dataset the papers use: `wikitext2`, `c4`, `ptb` (see ALIASES: the reference
  implementations' splits, shards and join strings);
- `hf:NAME[:CONFIG][:SPLIT]`: any Hugging Face dataset, its `--text-column` (default `text`);
- a local .parquet or .arrow file, or a folder written by `Dataset.save_to_disk`.

Everything but the first two goes through the `datasets` library. Offline and not cached, a hub dataset is
a one-line PrunescopeError naming the dataset and the local-file alternative.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from ..errors import PrunescopeError, first_line
from .corpus import builtin_label, default_texts, read_corpus

EVALUATION, CALIBRATION = "evaluation", "calibration"
TEXT_FILES = (".txt", ".md", ".jsonl")
DATASET_FILES = (".parquet", ".arrow")
# Without an explicit split, the first of these that the dataset has is used.
SPLIT_PREFERENCE = {
    EVALUATION: ("test", "validation", "train"),
    CALIBRATION: ("train", "validation", "test"),
}


@dataclass(frozen=True)
class Alias:
    """A dataset as the reference implementations load it, for evaluation and for calibration."""

    path: str
    config: str | None
    column: str
    splits: dict[str, str]  # purpose -> split
    data_files: dict[str, str] = field(default_factory=dict)  # purpose -> file in the hub repository
    join: str = "\n\n"  # the joined protocol's separator for this dataset (evaluation)
    calib_join: str | None = "\n\n"  # calibration stream separator; None: crops of random documents
    max_documents: int | None = None  # evaluation: only the first rows, as the references do
    max_windows: int | None = None  # evaluation: at most this many joined windows
    reference: str = ""


ALIASES: dict[str, Alias] = {
    # Wanda lib/data.py get_wikitext2, SparseGPT datautils.py: test rows joined by "\n\n"; train for samples.
    "wikitext2": Alias(
        "wikitext",
        "wikitext-2-raw-v1",
        "text",
        {EVALUATION: "test", CALIBRATION: "train"},
        calib_join=" ",
        reference="Wanda/SparseGPT get_wikitext2",
    ),
    # Wanda/SparseGPT get_c4: en validation shard 0, first 1100 documents joined by " ", 256 windows;
    # calibration from en train shard 0 (the old `allenai--c4` config no longer loads).
    "c4": Alias(
        "allenai/c4",
        None,
        "text",
        {EVALUATION: "validation", CALIBRATION: "train"},
        data_files={
            EVALUATION: "en/c4-validation.00000-of-00008.json.gz",
            CALIBRATION: "en/c4-train.00000-of-01024.json.gz",
        },
        join=" ",
        calib_join=None,
        max_documents=1100,
        max_windows=256,
        reference="Wanda/SparseGPT get_c4",
    ),
    # SparseGPT datautils.py get_ptb: validation sentences joined by "\n\n"; train for samples.
    "ptb": Alias(
        "ptb_text_only",
        "penn_treebank",
        "sentence",
        {EVALUATION: "validation", CALIBRATION: "train"},
        reference="SparseGPT get_ptb",
    ),
}


@dataclass
class Corpus:
    """Resolved texts with what a result must say about them."""

    rows: list[str]  # every row in order, empty ones included (the joined protocol joins them all)
    dataset: str  # what the user named: 'wikitext2', 'hf:...', a path; builtin texts: `builtin_label`
    split: str | None = None
    alias: str | None = None
    join: str = "\n\n"
    max_windows: int | None = None
    reference: str = ""
    # Calibration: True draws each sample from a random document with more than seqlen tokens (the
    # references' c4 sampling); False cuts crops of the rows joined by `join`.
    per_document: bool = False

    @property
    def documents(self) -> list[str]:
        """Non-empty rows: the units of the document and rolling protocols."""
        return [row for row in self.rows if row.strip()]

    @property
    def paper_dataset(self) -> bool:
        return self.alias is not None


def is_alias(source: str | None) -> bool:
    return source is not None and str(source).lower() in ALIASES


def describe_source(source: str | None) -> str:
    return "builtin" if source in (None, "builtin") else str(source)


def load_hf(path: str, config: str | None, split: str | None, data_files: str | None):
    """The one call into the hub loader (tests replace it with a local fixture)."""
    import datasets

    kwargs = {"data_files": {split: data_files}} if data_files else {}
    return datasets.load_dataset(path, config, split=split, **kwargs)


def _hub(path: str, config: str | None, split: str | None, data_files: str | None, label: str):
    try:
        return load_hf(path, config, split, data_files)
    except ConnectionError as error:
        raise PrunescopeError(
            f"dataset {label} ({path}{':' + config if config else ''}) is not in the local cache and the "
            f"hub cannot be reached ({first_line(error)}); run once with "
            "HF_HUB_OFFLINE=0 HF_DATASETS_OFFLINE=0 to cache it, or pass a local file: a .txt/.jsonl, a "
            ".parquet/.arrow file or a Dataset.save_to_disk folder"
        ) from None
    except (FileNotFoundError, ValueError, KeyError) as error:
        raise PrunescopeError(f"cannot load dataset {label}: {first_line(error)}") from None
    except Exception as error:  # the hub client raises its own types (DatasetNotFoundError, HfHubHTTPError)
        if type(error).__module__.startswith(("datasets", "huggingface_hub", "requests", "httpx")):
            raise PrunescopeError(f"cannot load dataset {label}: {first_line(error)}") from None
        raise


def _pick_split(loaded, split: str | None, purpose: str, label: str):
    """A Dataset from a Dataset or DatasetDict; (dataset, split name)."""
    import datasets

    if isinstance(loaded, datasets.Dataset):
        return loaded, split or (str(loaded.split) if loaded.split is not None else None)
    if isinstance(loaded, datasets.DatasetDict):
        names = list(loaded.keys())
        if split is not None:
            if split not in loaded:
                raise PrunescopeError(
                    f"dataset {label} has no split {split!r}; its splits: {', '.join(names)}"
                )
            return loaded[split], split
        for name in SPLIT_PREFERENCE[purpose]:
            if name in loaded:
                return loaded[name], name
        return loaded[names[0]], names[0]
    raise PrunescopeError(f"dataset {label} is not a table of rows ({type(loaded).__name__})")


def _rows(dataset, column: str, label: str, split: str | None, limit: int | None = None) -> list[str]:
    if column not in dataset.column_names:
        raise PrunescopeError(
            f"dataset {label} has no column {column!r}; its columns: {', '.join(dataset.column_names)}. "
            "Pass --text-column"
        )
    if limit is not None and len(dataset) > limit:
        dataset = dataset.select(range(limit))
    rows = dataset[column]
    if rows and not all(isinstance(row, str) or row is None for row in rows[:100]):
        raise PrunescopeError(f"column {column!r} of dataset {label} does not hold text")
    rows = [row or "" for row in rows]
    if not any(row.strip() for row in rows):
        where = f" split {split!r}" if split else ""
        raise PrunescopeError(f"dataset {label}{where} holds no text in column {column!r}")
    return rows


def parse_hf(source: str) -> tuple[str, str | None, str | None]:
    """'hf:NAME[:CONFIG][:SPLIT]' -> (name, config, split); empty parts are None."""
    parts = source[3:].split(":")
    if not parts[0] or len(parts) > 3:
        raise PrunescopeError(f"hub datasets are named hf:NAME[:CONFIG][:SPLIT], got {source!r}")
    parts += [""] * (3 - len(parts))
    return parts[0], parts[1] or None, parts[2] or None


def _local_dataset(path: Path):
    import datasets

    # Local files are read in place (memory-mapped arrow, parquet into memory): no cache copy, no bars.
    datasets.disable_progress_bars()
    try:
        if path.is_dir():
            return datasets.load_from_disk(str(path))
        if path.suffix == ".parquet":
            import pyarrow.parquet as pq

            return datasets.Dataset(pq.read_table(str(path)))
        return datasets.Dataset.from_file(str(path))
    except (FileNotFoundError, ValueError, OSError) as error:
        raise PrunescopeError(f"cannot read dataset {str(path)!r}: {first_line(error)}") from None


def resolve(
    source: str | None,
    model_name: str = "demo",
    purpose: str = EVALUATION,
    text_column: str | None = None,
) -> Corpus:
    """The texts of `source` for `purpose` (evaluation or calibration); see the module docstring."""
    if source is None or str(source) == "builtin":
        return Corpus(default_texts(model_name), builtin_label(model_name))
    source = str(source)
    key = source.lower()
    if key in ALIASES:
        alias = ALIASES[key]
        split = alias.splits[purpose]
        loaded = _hub(alias.path, alias.config, split, alias.data_files.get(purpose), key)
        dataset, split = _pick_split(loaded, split, purpose, key)
        limit = alias.max_documents if purpose == EVALUATION else None
        rows = _rows(dataset, text_column or alias.column, key, split, limit)
        evaluation = purpose == EVALUATION
        return Corpus(
            rows,
            key,
            split,
            alias=key,
            join=alias.join if evaluation else (alias.calib_join or "\n\n"),
            max_windows=alias.max_windows if evaluation else None,
            reference=alias.reference,
            per_document=not evaluation and alias.calib_join is None,
        )
    if key.startswith("hf:"):
        name, config, split = parse_hf(source)
        dataset, split = _pick_split(_hub(name, config, split, None, source), split, purpose, source)
        return Corpus(_rows(dataset, text_column or "text", source, split), source, split)
    path = Path(source)
    if path.is_dir() or path.suffix in DATASET_FILES:
        if not path.exists():
            raise PrunescopeError(f"dataset {source!r} does not exist")
        dataset, split = _pick_split(_local_dataset(path), None, purpose, source)
        return Corpus(_rows(dataset, text_column or "text", source, split), source, split)
    check_source(source)
    return Corpus(read_corpus(path), source)


def check_source(source: str | None, what: str = "corpus") -> None:
    """Cheap validation before any loading: the name has a known shape and a local path exists."""
    if source is None or str(source) == "builtin" or is_alias(source):
        return
    source = str(source)
    if source.lower().startswith("hf:"):
        parse_hf(source)
        return
    path = Path(source)
    if path.exists():
        return
    if "/" in source or "." in source:
        raise PrunescopeError(f"{what} file {source!r} does not exist")
    raise PrunescopeError(
        f"unknown dataset {source!r}: not a file, not an alias ({', '.join(ALIASES)}), "
        "not hf:NAME[:CONFIG][:SPLIT]"
    )
