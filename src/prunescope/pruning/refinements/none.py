"""`none`: each layer keeps the mask its method chose."""

from __future__ import annotations

from ..registry import register_refinement

register_refinement("none", cite="")
