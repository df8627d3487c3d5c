"""Quantize a (pruned) model's projections in place and undo it bit-exactly.

`quantize_model` writes the dequantized weight into each named projection (nn.Linear or GPT-2 Conv1D), so
every metric that runs the model sees exactly the quantized values, and any sparse format built afterwards
from that weight stores them. The record keeps each layer's original weight (at its dtype) and its
`QuantizedWeight` (for bytes, for `QuantizedLinear`, for checkpoints). `record.restore(model)` copies the
originals back (bit-exact) and puts back any module `record.install(model)` swapped for a `QuantizedLinear`.

Order with pruning: prune, then quantize; undo in reverse (quantization first, then the pruning record).
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from ..errors import PrunescopeError
from ..layers import is_conv1d, linear_weight, set_module
from ..util.linalg import HessianStats
from .gptq import gptq_quantize
from .linear import QuantizedLinear
from .registry import QuantOptions
from .weight import QuantizedWeight, rtn_quantize


@dataclass
class LayerQuant:
    """One quantized layer: what it became and what it was."""

    quantized: QuantizedWeight
    original: torch.Tensor | None  # the (out, in) weight before quantization, at the module's dtype

    @property
    def nbytes(self) -> int:
        return 0 if self.original is None else self.original.numel() * self.original.element_size()


@dataclass
class QuantRecord:
    options: QuantOptions
    layers: dict[str, LayerQuant] = field(default_factory=dict)
    seconds: float = 0.0
    installed: dict[str, nn.Module] = field(default_factory=dict)  # name -> original module

    @property
    def layer_names(self) -> list[str]:
        return list(self.layers)

    def weight_bytes(self) -> dict[str, dict[str, int]]:
        return {name: layer.quantized.weight_bytes() for name, layer in self.layers.items()}

    def bits_per_weight(self) -> float:
        """Over all quantized layers (dense storage of the codes, scales and zeros)."""
        stored = sum(sum(parts.values()) for parts in self.weight_bytes().values())
        total = sum(q.quantized.shape[0] * q.quantized.shape[1] for q in self.layers.values())
        return 8 * stored / total if total else 0.0

    def install(self, model: nn.Module, kernel: str | None = None) -> None:
        """Swap each quantized projection for a `QuantizedLinear` (real int8/int4 storage and kernels)."""
        for name, layer in self.layers.items():
            if name in self.installed:
                continue
            module = model.get_submodule(name)
            bias = getattr(module, "bias", None)
            set_module(model, name, QuantizedLinear.from_quantized(layer.quantized, bias, kernel))
            self.installed[name] = module

    def uninstall(self, model: nn.Module) -> None:
        """Put the dense modules back (their weights still hold the dequantized values)."""
        for name, module in self.installed.items():
            set_module(model, name, module)
        self.installed.clear()

    @torch.no_grad()
    def restore(self, model: nn.Module) -> None:
        """Undo `quantize_model`: original modules back, original weights copied in, bit-exact."""
        self.uninstall(model)
        self.unspill()
        for name, layer in self.layers.items():
            if layer.original is None:
                raise PrunescopeError(f"layer {name} was quantized without keeping its original weight")
            linear_weight(model.get_submodule(name)).copy_(layer.original)

    @property
    def nbytes(self) -> int:
        return sum(layer.nbytes for layer in self.layers.values())

    def spill(self, path: str | Path) -> None:
        """Move the original weights to a file until `restore` (or `unspill`) needs them."""
        if getattr(self, "_spilled", None) is not None:
            return
        torch.save({name: layer.original for name, layer in self.layers.items()}, path)
        for layer in self.layers.values():
            layer.original = None
        self._spilled = Path(path)

    def unspill(self) -> None:
        path = getattr(self, "_spilled", None)
        if path is None:
            return
        for name, original in torch.load(path, weights_only=True).items():
            self.layers[name].original = original
        path.unlink()
        self._spilled = None


def _hessian(hessians: Mapping | None, name: str) -> torch.Tensor:
    if hessians is None or name not in hessians:
        raise PrunescopeError(f"GPTQ needs a calibration Hessian for {name}; none was collected")
    h = hessians[name]
    return h.hessian if isinstance(h, HessianStats) else h


@torch.no_grad()
def quantize_layer(
    module: nn.Module,
    options: QuantOptions,
    hessian: torch.Tensor | HessianStats | None = None,
    mask: torch.Tensor | None = None,
    keep_original: bool = True,
) -> LayerQuant:
    """Quantize one projection's weight in place (RTN, or GPTQ with `hessian`).

    `mask` (True = pruned) defaults to the weight's exact zeros: pruned weights stay exactly 0. With GPTQ
    the kept weights are updated to absorb the error, so the result is no longer "the pruned weight rounded".
    """
    weight = linear_weight(module)
    original = weight.detach().clone() if keep_original else None
    if options.method == "gptq":
        if hessian is None:
            raise PrunescopeError("GPTQ needs a calibration Hessian for every quantized layer")
        h = hessian.hessian if isinstance(hessian, HessianStats) else hessian
        pruned = (weight == 0) if mask is None else mask.to(torch.bool)
        quantized = gptq_quantize(weight, h.to(weight.device), options, pruned).quantized
    else:
        quantized = rtn_quantize(weight, options)
    weight.copy_(quantized.dequantize(weight.dtype))
    if mask is not None:
        weight.masked_fill_(mask.to(weight.device, torch.bool), 0)  # already 0; guards a future quantizer
    return LayerQuant(quantized, original)


@torch.no_grad()
def quantize_model(
    model: nn.Module,
    names: Iterable[str],
    options: QuantOptions,
    calibration_hessians: Mapping[str, torch.Tensor | HessianStats] | None = None,
    masks: Mapping[str, torch.Tensor] | None = None,
) -> QuantRecord:
    """Quantize the named projections of `model` in place; `record.restore(model)` undoes it bit-exactly.

    RTN needs nothing else. GPTQ needs `calibration_hessians[name]` (an (in, in) tensor or a `HessianStats`,
    e.g. from `collect_hessians` on the pruned model). `masks[name]` (True = pruned) overrides the default
    "exact zeros are pruned".
    """
    start = time.perf_counter()
    record = QuantRecord(options)
    for name in names:
        module = model.get_submodule(name)
        if not (isinstance(module, nn.Linear) or is_conv1d(module)):
            raise PrunescopeError(f"{name} is a {type(module).__name__}, not a dense projection to quantize")
        hessian = _hessian(calibration_hessians, name) if options.method == "gptq" else None
        mask = None if masks is None else masks.get(name)
        record.layers[name] = quantize_layer(module, options, hessian, mask)
    record.seconds = time.perf_counter() - start
    return record


@torch.no_grad()
def collect_hessians(
    model: nn.Module, names: Iterable[str], batches: Iterable[torch.Tensor | Mapping]
) -> dict[str, HessianStats]:
    """One-shot (not sequential) Hessians of the named projections' inputs over `batches`.

    Each batch is input ids (batch, seq) or a dict of model kwargs; every batch row is one sample.
    """
    stats: dict[str, HessianStats] = {}
    handles = []

    def hook(name: str):
        def record(_module, inputs, _output):
            stats[name].add(inputs[0].detach())

        return record

    try:
        for name in names:
            module = model.get_submodule(name)
            in_features = linear_weight(module).shape[1]
            device = linear_weight(module).device
            stats[name] = HessianStats(in_features, device)
            handles.append(module.register_forward_hook(hook(name)))
        for batch in batches:
            if isinstance(batch, Mapping):
                model(**batch)
            else:
                model(batch)
    finally:
        for handle in handles:
            handle.remove()
    return stats
