"""Byte sizes, read and written with one unit rule.

Decimal SI units as the CLI prints them: B, KB = 10^3, MB = 10^6, GB = 10^9, TB = 10^12 (also what
accelerate means by "2GB"). Binary units: KiB = 2^10, MiB = 2^20, GiB = 2^30, TiB = 2^40. A bare
letter without B (K, M, G, T) is binary, as Linux prints sizes (sysfs caches "32768K", lscpu, free).
A bare number is bytes; case and spaces do not matter ("2 gib", "1.5GB", "1e9").
"""

from __future__ import annotations

import re

from ..errors import PrunescopeError

_UNITS = {
    "": 1,
    "B": 1,
    "KB": 10**3,
    "MB": 10**6,
    "GB": 10**9,
    "TB": 10**12,
    "K": 2**10,
    "M": 2**20,
    "G": 2**30,
    "T": 2**40,
    "KIB": 2**10,
    "MIB": 2**20,
    "GIB": 2**30,
    "TIB": 2**40,
}
_SIZE = re.compile(r"([0-9]*\.?[0-9]+(?:E[+-]?[0-9]+)?)([KMGT]?I?B?)")


def parse_size(text: str | int | float) -> int:
    """'200MB' -> 200_000_000, '2GiB' -> 2**31, '32768K' -> 2**25, '1e9' -> 10**9 (bytes, > 0).

    Raises PrunescopeError ("cannot read size ...") for anything else, zero or negative included."""
    if isinstance(text, (int, float)) and not isinstance(text, bool):
        value, unit = float(text), ""
    else:
        match = _SIZE.fullmatch(str(text).strip().upper().replace(" ", ""))
        if match is None or match.group(2) not in _UNITS:
            raise PrunescopeError(f"cannot read size {text!r}; use e.g. 200MB or 2GiB")
        value, unit = float(match.group(1)), match.group(2)
    if value <= 0:
        raise PrunescopeError(f"cannot read size {text!r}; use e.g. 200MB or 2GiB")
    return int(value * _UNITS[unit])


def size_text(n: float) -> str:
    """Bytes in decimal SI units, as parse_size reads them back: '1,234 B', '2.00 GB'."""
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if abs(n) < 1000 or unit == "TB":
            return f"{n:,.0f} {unit}" if unit == "B" else f"{n:,.2f} {unit}"
        n /= 1000
    return str(n)


__all__ = ["parse_size", "size_text"]
