"""The built-in mask refinements, one file each; importing this package registers them in this order.

Adding one: a file that calls `registry.register_refinement(name, refine=..., stats=..., options=...)`
(see `RefinementPlugin`), then import it below.
"""

from __future__ import annotations

# isort: off
from . import none, dsnot  # noqa: F401
# isort: on
