"""Where a pruned variant disagrees with the dense model: the per-token table (`tokens.parquet`, --per-token),
the positions with the largest KL (decoded) and mean KL by dense confidence, for report.md.

Everything here reads `Behaviour.tokens` (evaluation/behaviour.py: one entry per compared or scored
position); a variant without them (e.g. built by hand) is skipped.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd

from ..errors import PrunescopeError

TOKENS_NAME = "tokens.parquet"
TOKEN_TABLE_COLUMNS = [
    "variant",
    "window",
    "position",
    "input_id",
    "target_id",
    "dense_top1",
    "variant_top1",
    "p_dense",
    "p_variant",
    "kl",
]
CONFIDENCE_PLOT = "kl_by_confidence.png"
LARGEST = 10
CONTEXT_TOKENS = 12


def _pruned_tokens(result) -> dict[str, dict[str, np.ndarray]]:
    """Per non-dense variant (first seed), its per-position arrays; variants without them are left out."""
    found = {}
    for name, variant in result.variants.items():
        tokens = getattr(variant.behaviour, "tokens", None)
        if name != "dense" and tokens is not None and len(tokens.get("kl", ())):
            found[name] = tokens
    return found


def tokens_frame(result) -> pd.DataFrame:
    """One row per pruned variant and compared position (`TOKEN_TABLE_COLUMNS`); the dense model, compared
    with itself, has no rows (its p_dense is in every variant's rows)."""
    frames = []
    for name, tokens in _pruned_tokens(result).items():
        compared = tokens["compared"].astype(bool)
        frame = pd.DataFrame({column: tokens[column][compared] for column in TOKEN_TABLE_COLUMNS[1:]})
        frame.insert(0, "variant", name)
        frames.append(frame)
    if not frames:
        return pd.DataFrame({column: [] for column in TOKEN_TABLE_COLUMNS})
    return pd.concat(frames, ignore_index=True)


def write_tokens(result, folder: str | Path) -> Path:
    """`folder`/tokens.parquet (see `tokens_frame`); a folder that is missing or not writable is one line, and
    nothing is left behind on failure (written to a temporary name, then renamed)."""
    folder = Path(folder)
    path = folder / TOKENS_NAME
    if not folder.is_dir():
        raise PrunescopeError(f"cannot write {TOKENS_NAME}: {str(folder)!r} is not an existing folder")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise PrunescopeError(f"cannot write {TOKENS_NAME}: {str(folder)!r} is not writable")
    frame = tokens_frame(result)
    tmp = folder / f".{TOKENS_NAME}.tmp-{os.getpid()}"
    try:
        frame.to_parquet(tmp, index=False)
        tmp.replace(path)
    except ImportError as error:
        raise PrunescopeError(f"writing {TOKENS_NAME} needs pyarrow ({error}); pip install pyarrow") from None
    except OSError as error:
        raise PrunescopeError(f"cannot write {str(path)!r}: {error.strerror or error}") from None
    finally:
        if tmp.exists():
            tmp.unlink()
    return path


# ------------------------------------------------------------------------------------------ largest KL
def _decode(tokenizer, ids) -> str:
    ids = [int(i) for i in ids]
    if tokenizer is None:
        return " ".join(f"[{i}]" for i in ids)
    try:
        text = tokenizer.decode(ids)
    except Exception:  # noqa: BLE001 - an id the tokenizer does not know: show ids
        return " ".join(f"[{i}]" for i in ids)
    return text


def _cell(text: str) -> str:
    """Text safe inside a markdown table cell, whitespace made visible."""
    shown = text.replace("\\", "\\\\").replace("\n", "⏎").replace("\t", "⇥").replace("|", "\\|")
    return f"`{shown}`" if "`" not in shown else shown


def largest_kl(tokens: dict[str, np.ndarray], tokenizer=None, count: int = LARGEST) -> pd.DataFrame:
    """The `count` compared positions with the largest KL: window, position, KL, the decoded context (up to
    CONTEXT_TOKENS input tokens ending with the position's own), the target and both predictions."""
    compared = np.flatnonzero(tokens["compared"].astype(bool))
    if compared.size == 0:
        return pd.DataFrame()
    kl = tokens["kl"][compared]
    top = compared[np.argsort(-kl, kind="stable")[:count]]
    windows, positions, inputs = tokens["window"], tokens["position"], tokens["input_id"]
    rows = []
    for index in top:
        window, position = windows[index], positions[index]
        same = np.flatnonzero(
            (windows == window) & (positions <= position) & (positions > position - CONTEXT_TOKENS)
        )
        same = same[np.argsort(positions[same], kind="stable")]
        target = int(tokens["target_id"][index])
        rows.append(
            {
                "window": int(window),
                "position": int(position),
                "KL": float(tokens["kl"][index]),
                "context": _cell(_decode(tokenizer, inputs[same])),
                "target": _cell(_decode(tokenizer, [target])) if target >= 0 else "—",
                "dense (p)": f"{_cell(_decode(tokenizer, [tokens['dense_top1'][index]]))} "
                f"({tokens['dense_max_p'][index]:.3f})",
                "pruned": _cell(_decode(tokenizer, [tokens["variant_top1"][index]])),
                "p(target) dense → pruned": (
                    f"{tokens['p_dense'][index]:.3f} → {tokens['p_variant'][index]:.3f}"
                    if target >= 0
                    else "—"
                ),
            }
        )
    return pd.DataFrame(rows)


# ------------------------------------------------------------------------------------------ confidence
def confidence_buckets(all_tokens: dict[str, dict[str, np.ndarray]], buckets: int = 10) -> pd.DataFrame:
    """Mean KL per decile of the dense max-probability (equal-count buckets of the compared positions; the
    dense confidence is the same for every variant, so are the buckets)."""
    rows = []
    for name, tokens in all_tokens.items():
        compared = tokens["compared"].astype(bool)
        confidence, kl = tokens["dense_max_p"][compared], tokens["kl"][compared]
        if confidence.size == 0:
            continue
        edges = np.quantile(confidence, np.linspace(0.0, 1.0, buckets + 1))
        index = np.clip(np.searchsorted(edges, confidence, side="right") - 1, 0, buckets - 1)
        for bucket in range(buckets):
            members = index == bucket
            rows.append(
                {
                    "variant": name,
                    "decile": bucket + 1,
                    "p_low": float(edges[bucket]),
                    "p_high": float(edges[bucket + 1]),
                    "positions": int(members.sum()),
                    "mean_kl": float(kl[members].mean()) if members.any() else np.nan,
                    "kl_share": float(kl[members].sum() / kl.sum()) if kl.sum() > 0 else np.nan,
                }
            )
    return pd.DataFrame(rows)


def load_tokenizer(result):
    """The model's tokenizer from local files (no download); None when it cannot be read."""
    try:
        from transformers import AutoTokenizer

        from ..models import resolve_model

        name = result.run.get("model", {}).get("name") or result.config.model
        return AutoTokenizer.from_pretrained(resolve_model(str(name)).folder, local_files_only=True)
    except Exception:  # noqa: BLE001 - the report then shows token ids
        return None


def disagreement_section(result, tokenizer=None, plot: str | None = None) -> list[str]:
    """'## Where the pruned model disagrees' for report.md: the largest-KL positions per variant and the KL by
    dense confidence; [] when no variant kept per-position values."""
    all_tokens = _pruned_tokens(result)
    if not all_tokens:
        return []
    lines = [
        "## Where the pruned model disagrees",
        "",
        f"The {LARGEST} compared positions with the largest KL(dense ‖ pruned) per variant. *context*: up to "
        f"{CONTEXT_TOKENS} input tokens of the window, ending with the token whose next-token prediction is "
        "compared; *target*: the true next token (— where the position is compared but not scored); "
        "*dense* / *pruned*: each model's top-1 prediction (with the dense model's top probability)."
        + ("" if tokenizer is not None else " (No tokenizer could be read: token ids are shown.)"),
        "",
    ]
    for name, tokens in all_tokens.items():
        table = largest_kl(tokens, tokenizer)
        if table.empty:
            continue
        lines += [
            f"### {name}",
            "",
            table.to_markdown(index=False, floatfmt=("g", "g", ".4g", "g", "g", "g", "g", "g")),
            "",
        ]
    buckets = confidence_buckets(all_tokens)
    if plot is not None and not buckets.empty:
        first = buckets[buckets["variant"] == buckets["variant"].iloc[0]]
        share = first.iloc[-1]["kl_share"]
        lines += [
            "### KL by dense confidence",
            "",
            "Mean KL per decile of the dense model's top probability (equal-count buckets of the compared "
            f"positions; decile 10 is the most confident, p ≥ {first.iloc[-1]['p_low']:.3f}). "
            f"In {first['variant'].iloc[0]}, the most confident decile carries {share:.1%} of the total KL.",
            "",
            f"![KL by dense confidence]({plot})",
            "",
        ]
    return lines
