"""Records for run.json and friends: attributes by name, in the order the record lists them."""

from __future__ import annotations

from typing import Any


def pick(obj: Any, *names: str) -> dict[str, Any]:
    """{name: obj.name} for `names`, in that order (the attributes themselves, not copies)."""
    return {name: getattr(obj, name) for name in names}
