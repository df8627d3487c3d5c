"""The built-in pruning methods, one file each; importing this package registers them in the order below,
which is the order the command line and the error messages list them in.

Adding a method: a new file here (or anywhere, e.g. a test) that calls `registry.register_method` with
its options dataclass, its cite string, its scopes, and either `score` (no calibration) or `stats` +
`prune_layer` (calibrated, run block by block by `driver.py`); then import it below.
"""

from __future__ import annotations

# isort: off
from . import magnitude, random_baseline, wanda, sparsegpt, ria  # noqa: F401
# isort: on
