"""Options of the methods after Wanda and SparseGPT (OWL allocation, RIA, DSnoT), shared by commands."""

from __future__ import annotations

from typing import Annotated

import typer

AllocationOpt = Annotated[
    str, typer.Option(help="Per-block sparsity: uniform, or owl (outlier-weighted, from the dense model).")
]
OwlMOpt = Annotated[float, typer.Option(help="OWL: a score is an outlier above M x its block's mean.")]
OwlLambdaOpt = Annotated[float, typer.Option(help="OWL: block sparsities span S - lambda .. S + lambda.")]
RiaAlphaOpt = Annotated[float, typer.Option(help="RIA: exponent of the input-channel norm ||X_j||.")]
RefineOpt = Annotated[str, typer.Option(help="Mask refinement after each layer: none or dsnot.")]
RefineCyclesOpt = Annotated[int, typer.Option(help="DSnoT: at most this many swaps per row.")]
RefineThresholdOpt = Annotated[
    float, typer.Option(help="DSnoT: rows with |expected error| at or below this are left alone.")
]


def method_kwargs(
    allocation: str = "uniform",
    owl_m: float = 5.0,
    owl_lambda: float = 0.08,
    ria_alpha: float = 0.5,
    refine: str = "none",
    refine_cycles: int = 50,
    refine_threshold: float = 0.1,
) -> dict:
    """The PruneSpec / StudyConfig fields of these options."""
    return {
        "allocation": allocation,
        "owl_m": owl_m,
        "owl_lambda": owl_lambda,
        "ria_alpha": ria_alpha,
        "refine": refine,
        "refine_cycles": refine_cycles,
        "refine_threshold": refine_threshold,
    }
