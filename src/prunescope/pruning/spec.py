"""What to prune and how: the validated request shared by the CLI, the API, sweeps and benchmarks.

The method, allocation and refinement are names in their registries (`registry.py`); each comes with its
own typed options (`method_options`, `allocation_options`, `refine_options`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from ..errors import PrunescopeError
from .registry import (
    ALLOCATIONS,
    METHODS,
    REFINEMENTS,
    SCOPES,
    AllocationPlugin,
    MethodPlugin,
    Plugin,
    RefinementPlugin,
    options_from_flat,
)

__all__ = ["ALLOCATIONS", "METHODS", "REFINEMENTS", "REFINES", "SCOPES", "Pattern", "PruneSpec"]

REFINES = REFINEMENTS  # the older name


def __getattr__(name: str) -> Any:
    """Views of the method registry under their older names, computed on use so that plug-ins registered
    later are included."""
    if name == "NATURAL_SCOPE":
        return {plugin.name: plugin.natural_scope for plugin in METHODS.plugins()}
    if name == "CALIBRATED":
        return tuple(plugin.name for plugin in METHODS.plugins() if plugin.calibrated)
    if name == "CALIBRATED_SCOPES":
        return {plugin.name: plugin.scopes for plugin in METHODS.plugins() if plugin.calibrated}
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


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


DEFAULT_SPARSITY = 0.3  # every command's --sparsity without a value (an N:M pattern fixes its own)


def resolve_sparsity(sparsity: float | None, pattern: Pattern) -> float:
    """`sparsity`, or without one the pattern's own (N:M: 1 - N/M), else DEFAULT_SPARSITY."""
    if sparsity is not None:
        return float(sparsity)
    return pattern.sparsity if pattern.structured else DEFAULT_SPARSITY


@dataclass(frozen=True)
class PruneSpec:
    """A validated pruning request. `sparsity` is the fraction of prunable weights set to zero.

    The `*_options` fields hold the chosen plug-ins' options dataclasses; None means their defaults.
    """

    method: str = "magnitude"
    sparsity: float = DEFAULT_SPARSITY
    scope: str | None = None
    pattern: Pattern = Pattern()
    seed: int = 0
    # Calibration: texts are resolved by the caller; these size the sample.
    calib_samples: int = 128
    calib_seqlen: int = 256
    method_options: Any = None
    allocation: str = "uniform"  # per-block / per-matrix sparsity
    allocation_options: Any = None
    refine: str = "none"  # mask refinement after each layer is pruned
    refine_options: Any = None
    # `allocation` may be a path ending in .json (`allocations/from_file.py`): the SHA-256 of its mapping,
    # filled in when the file is read; a given one must match the file's.
    allocation_sha256: str = ""
    # GPTQ inside the block pass (a `quantization.QuantOptions` with method "gptq"): a method that
    # `quantizes` (SparseGPT) prunes and quantizes each layer in one column loop, as its reference does;
    # any other (or with a refinement) is followed by GPTQ on each layer's kept weights right after it is
    # pruned, on the Hessian of the same calibration inputs (`driver.py`).
    quantize: Any = None

    def __post_init__(self) -> None:
        method = METHODS.get(self.method)
        self._check_allocation_file()
        if not 0.0 <= self.sparsity < 1.0:
            raise PrunescopeError(f"sparsity must be in [0, 1), got {self.sparsity}")
        if self.scope is not None and self.scope not in SCOPES:
            raise PrunescopeError(f"unknown scope {self.scope!r}; choose one of {', '.join(SCOPES)}")
        if self.scope not in (None, *method.scopes):
            raise PrunescopeError(
                f"{self.method} compares weights per {' or '.join(method.scopes)} by design; "
                f"scope {self.scope!r} is not supported for it"
            )
        allocation = ALLOCATIONS.get(self.allocation)
        REFINEMENTS.get(self.refine)
        for attribute, plugin in (
            ("method_options", method),
            ("allocation_options", allocation),
            ("refine_options", self.refinement_plugin),
        ):
            self._fill_options(attribute, plugin)
        if not allocation.nm_patterns and self.pattern.structured:
            # A changed sparsity is no N:M pattern any more (OWL-N:M rounds N per block: other patterns than
            # asked); not implemented.
            raise PrunescopeError(
                f"--allocation {self.allocation} works with unstructured sparsity only, not N:M patterns"
            )
        if self.pattern.structured:
            expected = self.pattern.sparsity
            if abs(self.sparsity - expected) > 1e-9:
                raise PrunescopeError(
                    f"pattern {self.pattern} fixes sparsity at {expected:g}; got --sparsity {self.sparsity:g}"
                )
        if self.calib_samples < 1 or self.calib_seqlen < 2:
            raise PrunescopeError("calibration needs at least 1 sample of at least 2 tokens")
        self._check_quantization()

    def _check_quantization(self) -> None:
        if self.quantize is not None and self.quantize.method != "gptq":
            # RTN needs no pass of its own: it rounds the pruned weights (`quantization.quantize_model`)
            raise PrunescopeError("quantization inside the pruning pass is GPTQ (--quant-method gptq)")

    @property
    def joint_quantization(self) -> bool:
        """The method prunes and quantizes in one loop; a refinement changes masks after it, so not then."""
        return (
            self.quantize is not None
            and self.method_plugin.quantizes
            and self.refinement_plugin.refine is None
        )

    def _check_allocation_file(self) -> None:
        from .allocations.file_format import is_allocation_file, load_mapping

        if not is_allocation_file(self.allocation):
            return
        _, digest = load_mapping(self.allocation)
        if self.allocation_sha256 and self.allocation_sha256 != digest:
            raise PrunescopeError(
                f"allocation file {self.allocation} changed: its mapping's SHA-256 is {digest[:12]}..., "
                f"the run recorded {self.allocation_sha256[:12]}..."
            )
        object.__setattr__(self, "allocation_sha256", digest)  # frozen: set once, here

    def _fill_options(self, attribute: str, plugin: Plugin) -> None:
        value = getattr(self, attribute)
        if value is None:
            object.__setattr__(self, attribute, plugin.options())  # frozen: set once, here
        elif type(value) is not plugin.options:
            raise PrunescopeError(
                f"{attribute} of {plugin.kind} {plugin.name} must be {plugin.options.__name__}, "
                f"got {type(value).__name__}"
            )

    @property
    def method_plugin(self) -> MethodPlugin:
        return METHODS.get(self.method)

    @property
    def allocation_plugin(self) -> AllocationPlugin:
        return ALLOCATIONS.get(self.allocation)

    @property
    def refinement_plugin(self) -> RefinementPlugin:
        return REFINEMENTS.get(self.refine)

    @property
    def effective_scope(self) -> str:
        return self.scope or self.method_plugin.natural_scope

    @property
    def needs_calibration(self) -> bool:
        """Calibration activations are needed: by the method, the allocation or the refinement."""
        return (
            self.method_plugin.calibrated
            or self.allocation_plugin.allocate is not None
            or self.refinement_plugin.refine is not None
            or self.quantize is not None  # GPTQ's Hessians
        )

    @classmethod
    def create(
        cls,
        method: str = "magnitude",
        sparsity: float | None = None,
        pattern: str = "unstructured",
        *,
        scope: str | None = None,
        seed: int = 0,
        calib_samples: int = 128,
        calib_seqlen: int = 256,
        allocation: str = "uniform",
        refine: str = "none",
        allocation_sha256: str = "",
        **flat: Any,
    ) -> PruneSpec:
        """Build from user-facing values; an N:M pattern supplies the sparsity when none is given.

        `flat` holds plug-in options by flat name (`ria_alpha=0.3`, `owl_m=4`, `sparsegpt_damp=0.02` or its
        old name `damp=`); those of plug-ins not chosen are validated, then ignored.
        """
        parsed = Pattern.parse(pattern)
        sparsity = resolve_sparsity(sparsity, parsed)
        chosen = (METHODS.get(method), ALLOCATIONS.get(allocation), REFINEMENTS.get(refine))
        method_options, allocation_options, refine_options = options_from_flat(flat, chosen)
        return cls(
            method=method,
            sparsity=sparsity,
            scope=scope,
            pattern=parsed,
            seed=seed,
            calib_samples=calib_samples,
            calib_seqlen=calib_seqlen,
            method_options=method_options,
            allocation=allocation,
            allocation_options=allocation_options,
            refine=refine,
            refine_options=refine_options,
            allocation_sha256=allocation_sha256,
        )

    def flat_options(self) -> dict[str, Any]:
        """The chosen plug-ins' options by flat name (`PruneSpec.create(**spec.flat_options())` rebuilds
        them)."""
        return {
            **self.method_plugin.flat(self.method_options),
            **self.allocation_plugin.flat(self.allocation_options),
            **self.refinement_plugin.flat(self.refine_options),
        }

    def describe(self) -> dict:
        """The request as run.json records it."""
        allocation, refinement = self.allocation_plugin, self.refinement_plugin
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
            **self.method_plugin.describe(self.method_options),
            **(
                {
                    "allocation": self.allocation,
                    **allocation.describe(self.allocation_options),
                    **({"allocation_sha256": self.allocation_sha256} if self.allocation_sha256 else {}),
                }
                if allocation.allocate is not None
                else {}
            ),
            **(
                {"refine": self.refine, **refinement.describe(self.refine_options)}
                if refinement.refine is not None
                else {}
            ),
            **(
                {"gptq_in_pass": self.quantize.label, "joint_quantization": self.joint_quantization}
                if self.quantize is not None
                else {}
            ),
        }
