"""Quantization next to pruning (issue 25): int8/int4 RTN, GPTQ on the kept weights, the joint SparseGPT +
GPTQ pass, a `QuantizedLinear` on torch's weight-only CPU kernels, and bytes of quantized sparse formats.

Sits below pruning/, formats/, evaluation/ and experiments/: it imports only `prunescope.errors`,
`prunescope.layers`, `prunescope.util` and torch. See docs/quantization.md.
"""

from ..util.linalg import HessianStats
from .base import Quantizer
from .gptq import GPTQResult, gptq_quantize, inverse_hessian_factor, sparsegpt_gptq
from .linear import STORAGE_FORMATS, QuantizedLinear, bits_per_weight, quantized_storage_bytes
from .model import LayerQuant, QuantRecord, collect_hessians, quantize_layer, quantize_model
from .registry import QUANTIZERS, QuantOptions, get_quantizer, parse_quantizers
from .weight import QuantizedWeight, rtn_quantize

__all__ = [
    "GPTQResult",
    "HessianStats",
    "LayerQuant",
    "QUANTIZERS",
    "QuantOptions",
    "QuantRecord",
    "QuantizedLinear",
    "QuantizedWeight",
    "Quantizer",
    "STORAGE_FORMATS",
    "bits_per_weight",
    "collect_hessians",
    "get_quantizer",
    "gptq_quantize",
    "inverse_hessian_factor",
    "parse_quantizers",
    "quantize_layer",
    "quantize_model",
    "quantized_storage_bytes",
    "rtn_quantize",
    "sparsegpt_gptq",
]
