"""What to prune and how: the validated request shared by the CLI, the API, sweeps and benchmarks."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

from ..errors import PrunescopeError

METHODS = ("magnitude", "random", "wanda", "sparsegpt")
SCOPES = ("global", "layer", "row")
# The scope each method's paper uses when the user does not pick one.
NATURAL_SCOPE = {"magnitude": "global", "random": "global", "wanda": "row", "sparsegpt": "layer"}
CALIBRATED = ("wanda", "sparsegpt")

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

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise PrunescopeError(f"unknown method {self.method!r}; choose one of {', '.join(METHODS)}")
        if not 0.0 <= self.sparsity < 1.0:
            raise PrunescopeError(f"sparsity must be in [0, 1), got {self.sparsity}")
        if self.scope is not None and self.scope not in SCOPES:
            raise PrunescopeError(f"unknown scope {self.scope!r}; choose one of {', '.join(SCOPES)}")
        if self.method in CALIBRATED and self.scope not in (None, NATURAL_SCOPE[self.method]):
            raise PrunescopeError(
                f"{self.method} compares weights per {NATURAL_SCOPE[self.method]} by design; "
                f"scope {self.scope!r} is not supported for it"
            )
        if self.pattern.structured:
            expected = self.pattern.sparsity
            if abs(self.sparsity - expected) > 1e-9:
                raise PrunescopeError(
                    f"pattern {self.pattern} fixes sparsity at {expected:g}; got --sparsity {self.sparsity:g}"
                )
        if self.calib_samples < 1 or self.calib_seqlen < 2:
            raise PrunescopeError("calibration needs at least 1 sample of at least 2 tokens")

    @property
    def effective_scope(self) -> str:
        return self.scope or NATURAL_SCOPE[self.method]

    @property
    def needs_calibration(self) -> bool:
        return self.method in CALIBRATED

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
        }
