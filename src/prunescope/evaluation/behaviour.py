"""Behaviour of a variant against the dense reference: top-1 agreement, top-5 overlap, KL, perplexity, and the
distribution of the per-token values behind them (percentiles, paired stderr, bootstrap intervals).

The dense pass runs once. What it keeps (`reference.py`) is the dense model's **final hidden states** (the
input of the output head, captured with a forward pre-hook on `get_output_embeddings()`), tokens × hidden,
in memory or spilled batch by batch to a folder, plus a few facts per position (dense argmax, top-5 ids, max
and target log-probability) and a private copy of the dense output head's weight and bias (vocabulary ×
hidden: fixed, whatever the token count). When a variant is compared, the dense distribution is recomputed
batch by batch from those hidden states through that head — the very matmul and log-softmax the dense model
ran, so every metric is exact (checked on the first batch: the head must reproduce the model's logits bit
for bit, final-logit softcapping or logit scaling included, or the study stops with one line).
Why this mechanism: it is exact, bounded (tokens × hidden instead of tokens × vocabulary: for a Llama-3
vocabulary 64× less than fp32 log-probabilities even at hidden 4096), and the same for studies, sweeps and
sensitivity maps (every variant, sparse formats included, is converted once and compared batch by batch
against the one reference). Its cost: one extra output-head matmul and log-softmax per variant batch.

Everything runs on the model's device; only per-position vectors (KL, probabilities of the target, argmax
ids, ...) go to the host. Vocabulary-wide temporaries are at most `_CHUNK_POSITIONS` positions tall besides
the batch's two log-probability tensors. Padding positions never count. Positions compared (top-1, top-5,
KL) and positions scored (next-token loss, Δp, NLL statistics) come from each window's spans (`_row_spans`):
in the document protocol every position is compared and all but the last are scored.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field, fields
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..errors import PrunescopeError
from ..util.progress import track
from . import statistics as stats
from .corpus import Batch
from .reference import DenseHead, DenseReference, output_head, to_log_probs

TOP_K = 5
_CHUNK_POSITIONS = 64  # vocabulary-sized temporaries are this many positions tall, whatever the batch

# Per-position columns a Behaviour keeps (`Behaviour.tokens`); one entry per compared or scored position.
TOKEN_COLUMNS = (
    "window",  # window id (the protocol's window index when batches carry it, else the batch-order row)
    "position",  # index of the input token in its window, whose next-token prediction this is
    "input_id",
    "target_id",  # -1 where the position is not scored
    "compared",  # counts for top-1 / top-5 / KL
    "scored",  # counts for perplexity / Δp / NLL statistics
    "kl",  # KL(dense || variant), nats; NaN where not compared
    "dense_top1",
    "variant_top1",
    "dense_max_p",  # the dense model's top probability (its confidence); NaN where not compared
    "p_dense",  # probability of the target token; NaN where not scored
    "p_variant",
    "nll_dense",  # −log p of the target token; NaN where not scored
    "nll_variant",
)


@dataclass(kw_only=True)
class Behaviour(stats.Intervals):
    top1_agreement: float  # share of positions whose argmax matches the dense argmax
    top5_overlap: float  # mean |top5(dense) ∩ top5(variant)| / 5
    kl_mean: float  # mean over positions of KL(dense || variant), nats
    perplexity: float  # exp(mean next-token cross-entropy) of this variant on the corpus
    positions: int  # positions compared (non-padding)
    predicted_tokens: int  # next-token predictions scored for perplexity
    seconds: float
    # Distributions (docs/metrics.md, llama.cpp's definitions): KL over compared positions, Δp = p_variant(y)
    # − p_dense(y) and NLLs over scored positions; for the dense model itself KL, Δp and ln ratio are 0.
    kl_median: float = math.nan
    kl_p90: float = math.nan
    kl_p99: float = math.nan
    kl_p999: float = math.nan
    kl_max: float = math.nan
    delta_p_mean: float = math.nan
    delta_p_rms: float = math.nan
    delta_p_p01: float = math.nan
    delta_p_p99: float = math.nan
    ln_ppl_ratio: float = math.nan  # mean(nll_variant) − mean(nll_dense)
    ln_ppl_ratio_stderr: float = math.nan  # paired: sqrt(se_v² + se_d² − 2 cov)
    nll_correlation: float = math.nan  # Pearson correlation of per-token NLLs
    # Inherited from `stats.Intervals`: the 95 % percentile-bootstrap intervals over windows (1000
    # resamples, seed 0), kl_mean_ci_low / _high, top1_ci_low / _high, ppl_ratio_ci_low / _high.
    # Per-position values (TOKEN_COLUMNS -> arrays), bounded by tokens; never in as_dict / summary.csv.
    tokens: dict[str, np.ndarray] | None = field(default=None, repr=False, compare=False)

    def as_dict(self) -> dict:
        """summary.csv's columns: this class's own fields in order, then the intervals (not `tokens`)."""
        intervals = [f.name for f in fields(stats.Intervals)]
        own = [f.name for f in fields(self) if f.name not in intervals and f.name != "tokens"]
        return {name: getattr(self, name) for name in own + intervals}


@torch.no_grad()
def log_probs(model: nn.Module, batch: Batch) -> torch.Tensor:
    out = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask, use_cache=False)
    logits = out.logits.float()
    del out
    # In place: a (batch, length, vocab) tensor is the largest thing a study holds; never keep two.
    return logits.sub_(torch.logsumexp(logits, dim=-1, keepdim=True))


# ------------------------------------------------------------------------------------------ accumulation
@dataclass
class _Sums:
    agree: float = 0.0
    overlap: float = 0.0
    kl: float = 0.0
    nll: float = 0.0
    positions: int = 0
    predicted: int = 0
    parts: dict[str, list[np.ndarray]] = field(default_factory=lambda: {c: [] for c in TOKEN_COLUMNS})


def _row_spans(batch: Batch) -> tuple[list[tuple[int, int, int, int]], torch.Tensor]:
    """(agree_from, agree_to, loss_from, loss_to) per row and the targets; document rows when not given."""
    if batch.spans is not None and batch.targets is not None:
        return batch.spans, batch.targets
    # Right padding: the real tokens of a row are its first `length` positions; each but the last predicts
    # the following real token.
    lengths = batch.attention_mask.sum(dim=1).tolist()
    targets = torch.full_like(batch.input_ids, -100)
    targets[:, :-1] = batch.input_ids[:, 1:]
    return [(0, n, 0, max(n - 1, 0)) for n in lengths], targets.cpu()


def _chunks(a0: int, a1: int, l0: int, l1: int):
    """(agree lo, hi, loss lo, hi) per chunk of `_CHUNK_POSITIONS` over the row's positions."""
    first, last = min(a0, l0), max(a1, l1)
    for start in range(first, last, _CHUNK_POSITIONS):
        stop = min(start + _CHUNK_POSITIONS, last)
        yield max(start, a0), min(stop, a1), max(start, l0), min(stop, l1)


class _Grids:
    """Per-position values of one batch on the device, (batch, length) each."""

    def __init__(self, shape: tuple[int, int], device: torch.device) -> None:
        nan = dict(dtype=torch.float32, device=device)
        self.kl = torch.full(shape, math.nan, **nan)
        self.variant_top1 = torch.full(shape, -1, dtype=torch.long, device=device)
        self.variant_lp = torch.full(shape, math.nan, **nan)  # log-probability of the target


def _facts(lp: torch.Tensor, batch: Batch, spans, targets: torch.Tensor, scalars: dict) -> dict:
    """Dense facts per position (argmax, top-k ids, max and target log-probability), chunk by chunk."""
    device, (rows, length, vocab) = lp.device, lp.shape
    k = min(TOP_K, vocab)
    top1 = torch.full((rows, length), -1, dtype=torch.long, device=device)
    topk = torch.full((rows, length, k), -1, dtype=torch.int32, device=device)
    max_lp = torch.full((rows, length), math.nan, dtype=torch.float32, device=device)
    target_lp = torch.full((rows, length), math.nan, dtype=torch.float32, device=device)
    for row, (a0, a1, l0, l1) in enumerate(spans):
        for lo, hi, llo, lhi in _chunks(a0, a1, l0, l1):
            if hi > lo:
                d = lp[row, lo:hi]
                top1[row, lo:hi] = d.argmax(-1)
                best = d.topk(k, dim=-1)
                topk[row, lo:hi] = best.indices.to(torch.int32)
                max_lp[row, lo:hi] = best.values[:, 0]
            if lhi > llo:
                picked = lp[row, llo:lhi].gather(-1, targets[row, llo:lhi].unsqueeze(-1))
                scalars["nll"].append(picked.sum())
                target_lp[row, llo:lhi] = picked.squeeze(-1)
    return {"top1": top1, "topk": topk, "max_lp": max_lp, "target_lp": target_lp}


def _compare_batch(
    dense: torch.Tensor, variant: torch.Tensor, facts: dict, spans, targets: torch.Tensor, scalars: dict
) -> _Grids:
    """The old per-chunk sums (same chunks, same reductions: exact) and the per-position values."""
    k = facts["topk"].shape[-1]
    grids = _Grids(tuple(variant.shape[:2]), variant.device)
    for row, (a0, a1, l0, l1) in enumerate(spans):
        for lo, hi, llo, lhi in _chunks(a0, a1, l0, l1):
            if hi > lo:
                d, v = dense[row, lo:hi], variant[row, lo:hi]  # views: (positions, vocab)
                top1 = v.argmax(-1)
                scalars["agree"].append((facts["top1"][row, lo:hi] == top1).sum())
                top_d, top_v = facts["topk"][row, lo:hi], v.topk(k, dim=-1).indices
                scalars["overlap"].append((top_d.unsqueeze(-1) == top_v.unsqueeze(-2)).any(-1).sum())
                # KL(p||q) = sum p (log p - log q), with 0·log 0 = 0; the same elementwise terms and total as
                # kl_div(reduction="sum"), plus the per-position sums.
                terms = nn.functional.kl_div(v, d, reduction="none", log_target=True)
                scalars["kl"].append(terms.sum())
                grids.kl[row, lo:hi] = terms.sum(-1)
                grids.variant_top1[row, lo:hi] = top1
                del terms
            if lhi > llo:
                picked = variant[row, llo:lhi].gather(-1, targets[row, llo:lhi].unsqueeze(-1))
                scalars["nll"].append(picked.sum())
                grids.variant_lp[row, llo:lhi] = picked.squeeze(-1)
    return grids


def _new_scalars() -> dict[str, list[torch.Tensor]]:
    return {"agree": [], "overlap": [], "kl": [], "nll": []}


def _add_scalars(sums: _Sums, scalars: dict[str, list[torch.Tensor]], k: int) -> None:
    """Accumulate the chunk sums in the order they were made, in Python floats (one host transfer)."""
    for name, values in scalars.items():
        if not values:
            continue
        for value in torch.stack(values).tolist():
            if name == "agree":
                sums.agree += int(value)
            elif name == "overlap":
                sums.overlap += int(value) / k
            elif name == "kl":
                sums.kl += value
            else:
                sums.nll -= value


def _masks(batch: Batch, spans) -> tuple[torch.Tensor, torch.Tensor]:
    shape = tuple(batch.input_ids.shape)
    compared, scored = torch.zeros(shape, dtype=torch.bool), torch.zeros(shape, dtype=torch.bool)
    for row, (a0, a1, l0, l1) in enumerate(spans):
        compared[row, a0:a1] = True
        scored[row, l0:l1] = True
    return compared, scored


def _keep_tokens(
    sums: _Sums, batch: Batch, spans, targets, window_start: int, facts: dict, grids: _Grids | None
) -> None:
    """Per-position values of the batch's compared or scored positions, to the host (one copy each)."""
    compared, scored = _masks(batch, spans)
    keep = compared | scored
    rows, length = keep.shape
    ids = getattr(batch, "window_ids", None)  # the protocol's window indices, when the batches carry them
    windows = torch.tensor(list(ids) if ids is not None else list(range(window_start, window_start + rows)))
    host = {
        "window": windows.unsqueeze(1).expand(rows, length)[keep],
        "position": torch.arange(length).unsqueeze(0).expand(rows, length)[keep].to(torch.int32),
        "input_id": batch.input_ids.cpu()[keep],
        "target_id": torch.where(scored, targets, torch.full_like(targets, -1))[keep],
        "compared": compared[keep],
        "scored": scored[keep],
    }
    device_keep = keep.to(facts["top1"].device)
    dense_lp = facts["target_lp"][device_keep]
    dense_top1 = facts["top1"][device_keep]
    max_p = facts["max_lp"][device_keep].exp()
    if grids is None:  # the dense model against itself
        kl = torch.where(compared.to(device_keep.device)[device_keep], 0.0, math.nan)
        variant_top1, variant_lp = dense_top1, dense_lp
    else:
        kl, variant_top1, variant_lp = (
            grids.kl[device_keep],
            grids.variant_top1[device_keep],
            grids.variant_lp[device_keep],
        )
    device = {
        "kl": kl,
        "dense_top1": dense_top1,
        "variant_top1": variant_top1,
        "dense_max_p": max_p,
        "p_dense": dense_lp.exp(),
        "p_variant": variant_lp.exp(),
        "nll_dense": -dense_lp,
        "nll_variant": -variant_lp,
    }
    for name, value in {**host, **device}.items():
        sums.parts[name].append(value.cpu().numpy())


def _tokens(sums: _Sums) -> dict[str, np.ndarray]:
    return {
        name: np.concatenate(parts) if parts else np.zeros(0, dtype=np.float32)
        for name, parts in sums.parts.items()
    }


def _finish(sums: _Sums, seconds: float) -> Behaviour:
    positions = max(sums.positions, 1)
    tokens = _tokens(sums)
    compared = tokens["compared"].astype(bool) if tokens["compared"].size else np.zeros(0, dtype=bool)
    scored = tokens["scored"].astype(bool) if tokens["scored"].size else np.zeros(0, dtype=bool)
    kl = tokens["kl"][compared] if compared.size else np.zeros(0)
    agree = (tokens["dense_top1"] == tokens["variant_top1"])[compared] if compared.size else np.zeros(0)
    delta_p = (tokens["p_variant"] - tokens["p_dense"])[scored] if scored.size else np.zeros(0)
    nll_v = tokens["nll_variant"][scored] if scored.size else np.zeros(0)
    nll_d = tokens["nll_dense"][scored] if scored.size else np.zeros(0)
    windows = tokens["window"]
    intervals = stats.window_bootstrap(
        windows[compared] if compared.size else [],
        kl,
        agree,
        windows[scored] if scored.size else [],
        nll_v,
        nll_d,
    )
    return Behaviour(
        top1_agreement=sums.agree / positions,
        top5_overlap=sums.overlap / positions,
        kl_mean=sums.kl / positions,
        perplexity=math.exp(sums.nll / max(sums.predicted, 1)),
        positions=sums.positions,
        predicted_tokens=sums.predicted,
        seconds=seconds,
        kl_median=stats.percentile(kl, 50),
        kl_p90=stats.percentile(kl, 90),
        kl_p99=stats.percentile(kl, 99),
        kl_p999=stats.percentile(kl, 99.9),
        kl_max=float(np.max(kl)) if kl.size else math.nan,
        delta_p_mean=stats.mean(delta_p),
        delta_p_rms=stats.rms(delta_p),
        delta_p_p01=stats.percentile(delta_p, 1),
        delta_p_p99=stats.percentile(delta_p, 99),
        ln_ppl_ratio=stats.mean(nll_v) - stats.mean(nll_d),
        ln_ppl_ratio_stderr=stats.paired_stderr(nll_v, nll_d),
        nll_correlation=stats.correlation(nll_v, nll_d),
        **vars(intervals),
        tokens=tokens,
    )


# ------------------------------------------------------------------------------------------ passes
class _Capture:
    """Forward pre-hook on the output head: the hidden states it receives, once per forward."""

    def __init__(self, head: nn.Module) -> None:
        self.inputs: list[torch.Tensor] = []
        self.handle = head.register_forward_pre_hook(self._hook, with_kwargs=True)

    def _hook(self, module, args, kwargs):
        hidden = args[0] if args else next(iter(kwargs.values()))
        self.inputs.append(hidden.detach())

    def take(self, owner: nn.Module) -> torch.Tensor:
        inputs, self.inputs = self.inputs, []
        if len(inputs) != 1:
            raise PrunescopeError(
                f"{type(owner).__name__} called its output head {len(inputs)} times in one forward pass; the "
                "dense reference needs exactly one call (the final hidden states of every position)"
            )
        return inputs[0]

    def close(self) -> None:
        self.handle.remove()


@torch.no_grad()
def compute_reference(
    model: nn.Module, batches: list[Batch], spill_dir: str | Path | None = None, progress: bool = True
) -> tuple[DenseReference, Behaviour]:
    """Run the dense model once; returns the stored reference and the dense model's own behaviour."""
    device = next(model.parameters()).device
    owner, head = output_head(model)
    reference = DenseReference(spill_dir)
    sums, start, row = _Sums(), time.perf_counter(), 0
    capture = _Capture(head)
    try:
        for batch in track(batches, "dense reference", enabled=progress):
            out = model(
                input_ids=batch.input_ids.to(device),
                attention_mask=batch.attention_mask.to(device),
                use_cache=False,
            )
            hidden = capture.take(owner)
            logits = out.logits
            del out
            if reference.head is None:
                reference.head = DenseHead(head, logits.device, reference.spill_dir)
                reference.head.verify(hidden.to(logits.device), logits, owner)
            lp = to_log_probs(logits)
            del logits
            spans, targets = _row_spans(batch)
            scalars = _new_scalars()
            facts = _facts(lp, batch, spans, targets.to(lp.device), scalars)
            del lp
            reference.append({"hidden": hidden, **facts})
            del hidden
            _add_scalars(sums, scalars, facts["topk"].shape[-1])
            _count(sums, spans, dense=True)
            _keep_tokens(sums, batch, spans, targets, row, facts, None)
            row += len(spans)
    finally:
        capture.close()
    return reference, _finish(sums, time.perf_counter() - start)


def _count(sums: _Sums, spans, dense: bool = False) -> None:
    """Positions and predictions; the dense model agrees with itself on every compared position (its KL is
    0, its top-1 and top-5 sums are the position counts, as the elementwise comparison gives them)."""
    for a0, a1, l0, l1 in spans:
        sums.positions += a1 - a0
        sums.predicted += l1 - l0
        if dense:
            sums.agree += a1 - a0
            sums.overlap += float(a1 - a0)


@torch.no_grad()
def compare(
    model: nn.Module,
    batches: list[Batch],
    reference: DenseReference,
    label: str = "variant",
    progress: bool = True,
) -> Behaviour:
    """Behaviour of `model` (in its current state) against the dense reference, batch by batch."""
    if reference.count != len(batches):
        raise PrunescopeError(
            f"the dense reference holds {reference.count} batches, not the {len(batches)} being compared"
        )
    device = next(model.parameters()).device
    sums, start, row = _Sums(), time.perf_counter(), 0
    for index, batch in enumerate(track(batches, label, enabled=progress)):
        variant = log_probs(model, batch.to(device))
        stored = reference[index]
        facts = {key: value.to(variant.device) for key, value in stored.items() if key != "hidden"}
        dense = reference.dense_log_probs(stored, variant.device)
        del stored
        spans, targets = _row_spans(batch)
        scalars = _new_scalars()
        grids = _compare_batch(dense, variant, facts, spans, targets.to(variant.device), scalars)
        del dense, variant
        _add_scalars(sums, scalars, facts["topk"].shape[-1])
        _count(sums, spans)
        _keep_tokens(sums, batch, spans, targets, row, facts, grids)
        row += len(spans)
    return _finish(sums, time.perf_counter() - start)
