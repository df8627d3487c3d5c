"""EvoPress's level database: every pruned matrix pruned at a grid of sparsity levels, from its ORIGINAL
weights with the DENSE model's inputs (the pruned weights are never written back while building).

Grid (IST-DASLab/EvoPress, read at 50888a0): one step is the same absolute number of weights for every
matrix, `weights_diff = int(0.5 * min(s, 1 - s) / L * hidden^2)` (L = levels per side, 8 in the paper);
matrix m at level l prunes `round(s * numel_m) + l * weights_diff` weights, i.e. sparsity s + l * step_m
with step_m = weights_diff / numel_m, for l from -min_level to +max_level, min_level = min(floor(s /
step_m), L), max_level = min(floor((1 - s) / step_m), L) (less one if that level would prune everything).
So a genome's total of pruned weights depends on the sum of its levels only.

Each level keeps its bit-packed mask (numel / 8 bytes) and, for methods that rewrite the kept weights
(SparseGPT), those kept weights (in the weight's dtype). Entries stay in memory up to `bound_bytes`; the
rest go to one file each in a folder (`spill_dir`, a temporary folder by default) and are read back when
a candidate needs them. Size for a model of P pruned weights in dtype of b bytes and 2L + 1 levels:
masks (2L + 1) * P / 8 bytes; kept weights about (2L + 1) * (1 - s) * P * b for SparseGPT (none for
masking methods): Llama-2-7B at 70 %, L = 8, fp16: 13.7 GB of masks + 69 GB of weights on disk.
"""

from __future__ import annotations

import dataclasses
import math
import shutil
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from ....errors import PrunescopeError
from ....layers import linear_weight
from ...record import pack_mask, unpack_mask
from ...scoring import mask_from_scores
from ...spec import PruneSpec


@dataclass(frozen=True)
class MatrixLevels:
    """The level grid of one matrix."""

    numel: int
    base: int  # weights pruned at level 0: round(s * numel)
    weights_diff: int  # weights per level step (the same for every matrix)
    low: int  # lowest level (-min_level)
    high: int  # highest level (max_level)

    def pruned(self, level: int) -> int:
        return self.base + level * self.weights_diff

    def sparsity(self, level: int) -> float:
        return self.pruned(level) / self.numel


def weights_per_step(sparsity: float, levels: int, hidden: int) -> int:
    """EvoPress's default step: int(0.5 * min(s, 1 - s) / L * hidden^2), at least one weight."""
    return max(1, int(0.5 * min(sparsity, 1.0 - sparsity) / levels * hidden**2))


def level_grid(sizes: dict[str, int], sparsity: float, levels: int, hidden: int) -> dict[str, MatrixLevels]:
    """Each matrix's grid (module docstring); `sizes` = weight count per matrix."""
    diff = weights_per_step(sparsity, levels, hidden)
    grid = {}
    for name, numel in sizes.items():
        step = diff / numel
        low = min(math.floor(sparsity / step + 1e-9), levels)
        high = min(math.floor((1.0 - sparsity) / step + 1e-9), levels)
        base = round(sparsity * numel)
        while high > 0 and base + high * diff >= numel:  # never a level that prunes everything
            high -= 1
        while low > 0 and base - low * diff < 0:
            low -= 1
        grid[name] = MatrixLevels(numel, base, diff, -low, high)
    return grid


def hidden_size(model: nn.Module, sizes: dict[str, int]) -> int:
    config = getattr(model, "config", None)
    hidden = getattr(config, "hidden_size", None) or getattr(config, "n_embd", None)
    return int(hidden) if hidden else int(math.isqrt(min(sizes.values())))


class LevelDatabase:
    """Packed masks (and kept weights) per (matrix, level), in memory up to `bound_bytes`, then on disk."""

    def __init__(self, bound_bytes: int, spill_dir: str | Path | None = None) -> None:
        self.bound_bytes = bound_bytes
        self._spill_root = spill_dir
        self._folder: Path | None = None
        self._memory: dict[tuple[str, int], tuple[torch.Tensor, torch.Tensor | None]] = {}
        self._files: dict[tuple[str, int], Path] = {}
        self.memory_bytes = 0
        self.disk_bytes = 0

    def put(self, name: str, level: int, mask: torch.Tensor, kept: torch.Tensor | None) -> None:
        packed = pack_mask(mask).cpu()
        kept = None if kept is None else kept.detach().cpu().clone()
        size = packed.numel() + (0 if kept is None else kept.numel() * kept.element_size())
        if self.memory_bytes + size <= self.bound_bytes:
            self._memory[(name, level)] = (packed, kept)
            self.memory_bytes += size
            return
        if self._folder is None:
            root = self._spill_root
            if root is not None:
                Path(root).mkdir(parents=True, exist_ok=True)
            self._folder = Path(tempfile.mkdtemp(prefix="evopress-db-", dir=root))
        path = self._folder / f"{len(self._files)}.pt"
        torch.save((packed, kept), path)
        self._files[(name, level)] = path
        self.disk_bytes += size

    def get(self, name: str, level: int, shape: torch.Size) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(mask True = pruned, kept weights or None) of `name` at `level`."""
        key = (name, level)
        if key in self._memory:
            packed, kept = self._memory[key]
        elif key in self._files:
            packed, kept = torch.load(self._files[key], weights_only=True)
        else:
            raise KeyError(key)
        return unpack_mask(packed, shape), kept

    def close(self) -> None:
        self._memory.clear()
        if self._folder is not None:
            shutil.rmtree(self._folder, ignore_errors=True)
            self._folder = None
        self._files.clear()


class Assembler:
    """Puts a genome's level weights into `layers` (only the matrices whose level changed); level None =
    the original weights. `layers` may be the whole model's or one block's (`genome` then lists theirs)."""

    def __init__(
        self, layers: dict[str, nn.Module], grid: dict[str, MatrixLevels], database: LevelDatabase
    ) -> None:
        self.layers, self.grid, self.database = layers, grid, database
        self.names = list(layers)
        self.original = {name: linear_weight(m).detach().clone() for name, m in layers.items()}
        self.current: dict[str, int | None] = dict.fromkeys(self.names)  # None = dense

    @torch.no_grad()
    def apply(self, genome: Sequence[int | None]) -> None:
        for name, level in zip(self.names, genome, strict=True):
            if self.current[name] == level:
                continue
            weight = linear_weight(self.layers[name])
            if level is None:
                weight.copy_(self.original[name])
                self.current[name] = None
                continue
            mask, kept = self.database.get(name, level, weight.shape)
            mask = mask.to(weight.device)  # the database lives on the CPU, the weights maybe on a GPU
            if kept is None:
                weight.copy_(self.original[name].masked_fill(mask, 0))
            else:
                weight.zero_()
                weight[~mask] = kept.to(weight.device, weight.dtype)
            self.current[name] = level

    @torch.no_grad()
    def restore(self) -> None:
        for name in self.names:
            linear_weight(self.layers[name]).copy_(self.original[name])
            self.current[name] = None


@torch.no_grad()
def prune_level(
    module: nn.Module, stats, spec: PruneSpec, index: int
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Prune one matrix at `spec.sparsity` from its current (original) weights with the chosen method, then
    put the original weights back; returns (mask, kept weights if the method changed them, else None)."""
    method = spec.method_plugin
    weight = linear_weight(module)
    if not method.calibrated:
        return mask_from_scores(method.score(weight, spec, index), spec), None
    original = weight.detach().clone()
    change = method.prune_layer(module, stats, spec)
    mask = change.mask
    kept = weight.detach()[~mask].clone() if change.original is not None else None
    weight.copy_(original)
    return mask, kept


def level_spec(spec: PruneSpec, sparsity: float) -> PruneSpec:
    """The method's spec at one level: uniform (the allocation is ours), no refinement."""
    scope = spec.scope if spec.effective_scope != "global" else "layer"  # each matrix is its own group
    return dataclasses.replace(
        spec,
        sparsity=sparsity,
        scope=scope,
        allocation="uniform",
        allocation_options=None,
        allocation_sha256="",
        refine="none",
        refine_options=None,
    )


def check_levels(grid: dict[str, MatrixLevels]) -> None:
    if all(g.low == 0 and g.high == 0 for g in grid.values()):
        raise PrunescopeError("evo: no matrix has a level besides the uniform one; use more --evo-levels")
