"""What to prune and how: the validated request shared by the CLI, the API, sweeps and benchmarks."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

from ..errors import PrunescopeError

METHODS = ("magnitude", "random", "wanda", "sparsegpt", "ria")
SCOPES = ("global", "layer", "row")
# The scope each method's paper uses when the user does not pick one.
NATURAL_SCOPE = {
    "magnitude": "global",
    "random": "global",
    "wanda": "row",
    "sparsegpt": "layer",
    "ria": "layer",
}
CALIBRATED = ("wanda", "sparsegpt", "ria")
# Scopes a calibrated method accepts: its paper's, plus RIA's `--per_outneuron` (row) variant.
CALIBRATED_SCOPES = {"wanda": ("row",), "sparsegpt": ("layer",), "ria": ("layer", "row")}
ALLOCATIONS = ("uniform", "owl")  # per-block sparsity: the same everywhere, or OWL's outlier-weighted one
REFINES = ("none", "dsnot")  # training-free mask refinement after each layer's mask

Scope = Literal["global", "layer", "row"]


@dataclass(frozen=True)
class Pattern:
    """`unstructured`, or N:M = keep N non-zeros in every group of M consecutive input weights of a row."""

    n: int | None = None
    m: int | None = None

    @property
    def structured(self) -> bool:
        return self.m is not None

    @property
    def sparsity(self) -> float | None:
        return None if self.m is None else 1.0 - self.n / self.m

    def __str__(self) -> str:
        return "unstructured" if self.m is None else f"{self.n}:{self.m}"

    @classmethod
    def parse(cls, text: str) -> Pattern:
        text = text.strip().lower()
        if text in ("", "unstructured"):
            return cls()
        match = re.fullmatch(r"(\d+):(\d+)", text)
        if not match:
            raise PrunescopeError(f"pattern must be 'unstructured' or N:M such as 2:4, got {text!r}")
        n, m = int(match.group(1)), int(match.group(2))
        if m < 1 or n < 1 or n > m:
            raise PrunescopeError(f"invalid N:M pattern {text}: need 1 <= N <= M")
        return cls(n, m)


@dataclass(frozen=True)
class PruneSpec:
    """A validated pruning request. `sparsity` is the fraction of prunable weights set to zero."""

    method: str = "magnitude"
    sparsity: float = 0.3
    scope: str | None = None
    pattern: Pattern = Pattern()
    seed: int = 0
    # Calibration (Wanda, SparseGPT): texts are resolved by the caller; these size the sample.
    calib_samples: int = 128
    calib_seqlen: int = 256
    # SparseGPT: dampening as a fraction of mean(diag H), and the column block size.
    damp: float = 0.01
    blocksize: int = 128
    # OWL (Yin et al. 2024): outlier threshold M (times the block's mean score) and sparsity spread lambda.
    allocation: str = "uniform"
    owl_m: float = 5.0
    owl_lambda: float = 0.08
    # RIA (Zhang et al. 2024): exponent of the input-channel norm.
    ria_alpha: float = 0.5
    # DSnoT (Zhang et al. 2024): swap cycles per layer and the |error| below which a row is left alone.
    refine: str = "none"
    refine_cycles: int = 50
    refine_threshold: float = 0.1

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise PrunescopeError(f"unknown method {self.method!r}; choose one of {', '.join(METHODS)}")
        if not 0.0 <= self.sparsity < 1.0:
            raise PrunescopeError(f"sparsity must be in [0, 1), got {self.sparsity}")
        if self.scope is not None and self.scope not in SCOPES:
            raise PrunescopeError(f"unknown scope {self.scope!r}; choose one of {', '.join(SCOPES)}")
        if self.method in CALIBRATED and self.scope not in (None, *CALIBRATED_SCOPES[self.method]):
            allowed = " or ".join(CALIBRATED_SCOPES[self.method])
            raise PrunescopeError(
                f"{self.method} compares weights per {allowed} by design; "
                f"scope {self.scope!r} is not supported for it"
            )
        self._check_extensions()
        if self.pattern.structured:
            expected = self.pattern.sparsity
            if abs(self.sparsity - expected) > 1e-9:
                raise PrunescopeError(
                    f"pattern {self.pattern} fixes sparsity at {expected:g}; got --sparsity {self.sparsity:g}"
                )
        if self.calib_samples < 1 or self.calib_seqlen < 2:
            raise PrunescopeError("calibration needs at least 1 sample of at least 2 tokens")

    def _check_extensions(self) -> None:
        """OWL allocation, RIA and DSnoT options."""
        if self.allocation not in ALLOCATIONS:
            raise PrunescopeError(
                f"unknown allocation {self.allocation!r}; choose one of {', '.join(ALLOCATIONS)}"
            )
        if self.refine not in REFINES:
            raise PrunescopeError(f"unknown refinement {self.refine!r}; choose one of {', '.join(REFINES)}")
        if self.allocation == "owl" and self.pattern.structured:
            # OWL-N:M rounds N per block (lambda 2, M 6 in its paper), so blocks end up at other N:M patterns
            # than asked; not implemented.
            raise PrunescopeError("--allocation owl works with unstructured sparsity only, not N:M patterns")
        if self.owl_m <= 0 or not 0 <= self.owl_lambda < 0.5:
            raise PrunescopeError("--owl-m must be > 0 and --owl-lambda in [0, 0.5)")
        if self.ria_alpha < 0:
            raise PrunescopeError(f"--ria-alpha must be >= 0, got {self.ria_alpha}")
        if self.refine_cycles < 0 or self.refine_threshold < 0:
            raise PrunescopeError("--refine-cycles and --refine-threshold must be >= 0")

    @property
    def effective_scope(self) -> str:
        return self.scope or NATURAL_SCOPE[self.method]

    @property
    def needs_calibration(self) -> bool:
        """Calibration activations are needed: a calibrated method, OWL's block scores or DSnoT's moments."""
        return self.method in CALIBRATED or self.allocation != "uniform" or self.refine != "none"

    @classmethod
    def create(
        cls, method: str = "magnitude", sparsity: float | None = None, pattern: str = "unstructured", **kwargs
    ) -> PruneSpec:
        """Build from user-facing values; an N:M pattern supplies the sparsity when none is given."""
        parsed = Pattern.parse(pattern)
        if sparsity is None:
            sparsity = parsed.sparsity if parsed.structured else 0.3
        return cls(method=method, sparsity=float(sparsity), pattern=parsed, **kwargs)

    def describe(self) -> dict:
        return {
            "method": self.method,
            "sparsity": self.sparsity,
            "scope": self.effective_scope,
            "pattern": str(self.pattern),
            "seed": self.seed,
            **(
                {"calib_samples": self.calib_samples, "calib_seqlen": self.calib_seqlen}
                if self.needs_calibration
                else {}
            ),
            **({"damp": self.damp, "blocksize": self.blocksize} if self.method == "sparsegpt" else {}),
            **({"ria_alpha": self.ria_alpha} if self.method == "ria" else {}),
            **(
                {"allocation": "owl", "owl_m": self.owl_m, "owl_lambda": self.owl_lambda}
                if self.allocation == "owl"
                else {}
            ),
            **(
                {
                    "refine": self.refine,
                    "refine_cycles": self.refine_cycles,
                    "refine_threshold": self.refine_threshold,
                }
                if self.refine != "none"
                else {}
            ),
        }
