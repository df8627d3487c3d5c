"""Allocations are files: `--allocation PATH.json` applies a JSON object {pruned module name: sparsity}.

Any run's allocation can be written as such a file (`report.allocation.write_allocation_json`), so a search
done once (EvoPress on a small calibration set) can be applied by `prune` to a checkpoint on disk, or
shared. The file must name every pruned module and nothing else, each value in [0, 1), and its mean
weighted by the matrices' sizes must match `--sparsity` within `MEAN_TOLERANCE`; otherwise a one-line
PrunescopeError. `PruneSpec` keeps the path and the SHA-256 of the loaded mapping (run.json records both).
Each matrix is pruned at its own sparsity, as its own comparison group.
"""

from __future__ import annotations

from ...errors import PrunescopeError
from ...layers import linear_weight
from ..registry import ALLOCATIONS, register_allocation
from .context import Allocation, AllocationContext
from .file_format import SUFFIX, is_allocation_file, load_mapping, mapping_hash  # noqa: F401 - re-exported

NAME = "file"  # the plug-in a value ending in SUFFIX resolves to
MEAN_TOLERANCE = 1e-3


def check_mapping(
    mapping: dict[str, float], sizes: dict[str, int], sparsity: float, source: str = ""
) -> None:
    """The mapping names exactly the pruned modules (`sizes`: name -> weight count) and its size-weighted
    mean matches `sparsity` within MEAN_TOLERANCE."""
    where = f"allocation file {source}: " if source else "allocation: "
    unknown = [name for name in mapping if name not in sizes]
    if unknown:
        raise PrunescopeError(f"{where}{unknown[0]} is not a pruned module ({len(unknown)} unknown names)")
    missing = [name for name in sizes if name not in mapping]
    if missing:
        raise PrunescopeError(f"{where}no sparsity for pruned module {missing[0]} ({len(missing)} missing)")
    total = sum(sizes.values())
    mean = sum(mapping[name] * sizes[name] for name in sizes) / total if total else 0.0
    if abs(mean - sparsity) > MEAN_TOLERANCE:
        raise PrunescopeError(
            f"{where}weighted mean sparsity {mean:.4f} does not match --sparsity {sparsity:g} "
            f"(tolerance {MEAN_TOLERANCE:g})"
        )


def allocate_file(context: AllocationContext) -> Allocation:
    spec = context.spec
    if not is_allocation_file(spec.allocation):
        raise PrunescopeError(f"--allocation {NAME} needs a file: --allocation PATH{SUFFIX}")
    mapping, digest = load_mapping(spec.allocation)
    sizes = {
        name: linear_weight(module).numel() for block in context.per_block for name, module in block.items()
    }
    check_mapping(mapping, sizes, spec.sparsity, spec.allocation)
    blocks = []
    for index, block_layers in enumerate(context.per_block):
        if block_layers:
            count = sum(sizes[n] for n in block_layers)
            mean = sum(mapping[n] * sizes[n] for n in block_layers) / count
            blocks.append({"block": context.block_name(index), "sparsity": mean})
    context.record(
        {
            "allocation": NAME,
            "path": str(spec.allocation),
            "sha256": digest,
            "target_sparsity": spec.sparsity,
            "blocks": blocks,
            "layers": {name: mapping[name] for name in sizes},
        }
    )
    return Allocation(layers={name: mapping[name] for name in sizes})


register_allocation("file", cite="", allocate=allocate_file)
ALLOCATIONS.route_suffix(SUFFIX, NAME)
