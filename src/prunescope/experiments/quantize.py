"""Quantized twins of a study's variants (issue 25): names, validation, and the in-place measurement.

With `--quantize int8,int4` every variant gets twins named `<variant>+<bits>`: `dense+int8` (quantization
without pruning), `masked+int4` (the pruned weights quantized, zeros kept), `csr+int8` (the quantized
pruned weights in CSR: the format holds the quantized values). Behaviour is measured on the quantized
values; bytes are counted at real storage (`structure.layer_table(..., quantized=...)`).
"""

from __future__ import annotations

from ..errors import PrunescopeError
from ..quantization import STORAGE_FORMATS, QuantOptions

SEPARATOR = "+"


def twin_name(variant: str, quantizer: str) -> str:
    return f"{variant}{SEPARATOR}{quantizer}"


def split_variant(name: str) -> tuple[str, str | None]:
    """'csr+int8' -> ('csr', 'int8'); 'csr' -> ('csr', None)."""
    base, sep, quantizer = name.partition(SEPARATOR)
    return base, (quantizer if sep else None)


def is_twin(name: str) -> bool:
    return split_variant(name)[1] is not None


def with_twins(variants: list[str], quantizers: list[str]) -> list[str]:
    """Each variant followed by its twins: ['masked', 'masked+int8', 'csr', 'csr+int8', ...]."""
    return [name for v in variants for name in (v, *(twin_name(v, q) for q in quantizers))]


def check_twins(variants: list[str], quantizers: list[str]) -> None:
    """A twin needs a byte count for quantized values in its format: dense, masked, bitmask, csr, csr16."""
    if not quantizers:
        return
    countable = ("dense", "masked", *STORAGE_FORMATS)
    bad = [v for v in variants if split_variant(v)[0] not in countable]
    if bad:
        raise PrunescopeError(
            f"--quantize: no quantized storage for variant {split_variant(bad[0])[0]!r}; "
            f"quantized twins exist for {', '.join(dict.fromkeys(countable))}"
        )


def check_groups(shapes: dict[str, tuple[int, int]], quantizers: list[QuantOptions]) -> None:
    """Every quantizer's group divides every layer's in_features: fail before any work, in one line."""
    for options in quantizers:
        for name, (_, in_features) in shapes.items():
            try:
                options.group_for(in_features)
            except PrunescopeError:
                raise PrunescopeError(
                    f"--group-size {options.group_size} does not divide in_features {in_features} of {name}; "
                    "choose a divisor"
                ) from None
