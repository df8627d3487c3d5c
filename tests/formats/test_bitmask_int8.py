"""bitmask-int8: every kernel path (AVX-512 VBMI2 / vpshufb, AVX2, scalar, panels, torch) against the
dequantized weight, the round trip through int8 RTN, bytes by hand, convert/revert, dtypes and state."""

from __future__ import annotations

import itertools

import pytest
import torch
import torch.nn.functional as F

from prunescope import PrunescopeError, prunable_layers
from prunescope.formats import FORMATS, convert, format_class, native
from prunescope.formats import bitmask_int8 as bi8
from prunescope.formats.bitmask_int8 import BitmaskInt8Linear
from prunescope.quantization import QuantOptions, quantized_storage_bytes, rtn_quantize
from tests.helpers import skip_unless_kernel, tiny_opt

pytestmark = pytest.mark.native

# (kernel, AVX-512 variant) pairs of the native one-token / few-token kernel
NATIVE = [("avx512", 0), ("avx512", 1), ("avx2", 0), ("scalar", 0)]
SHAPES = [(1, 1), (3, 7), (5, 16), (17, 63), (9, 64), (6, 65), (37, 203), (11, 1000)]
SPARSITIES = [0.0, 0.5, 0.9]
TOKENS = [1, 3, 9, 64]


def _skip_unless(kernel: str) -> None:
    skip_unless_kernel(kernel, bi8.HAS_NATIVE, "the native int8 kernels are")


def _pruned(out: int, inp: int, s: float, seed: int, zero_rows: bool = True) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(out, inp, generator=g)
    w[torch.rand(out, inp, generator=g) < s] = 0
    if zero_rows and out > 2:
        w[1] = 0  # an all-zero row (scale 1, no codes)
    return w


def _check(y: torch.Tensor, x: torch.Tensor, module: BitmaskInt8Linear) -> None:
    """float32 accumulation in another order: within 1e-5 of the summed magnitudes of the products."""
    deq = module.dequantized()
    bias = None if module.bias is None else module.bias.float()
    ref = F.linear(x.float(), deq, bias)
    bound = F.linear(x.float().abs(), deq.abs(), None if bias is None else bias.abs())
    err = (y.float() - ref).abs()
    assert (err <= 1e-5 * bound + 1e-6).all(), err.max()


def test_registered_and_round_trip_through_int8_rtn():
    assert FORMATS["bitmask-int8"] == "prunescope.formats.bitmask_int8:BitmaskInt8Linear"
    assert format_class("bitmask-int8") is BitmaskInt8Linear and not BitmaskInt8Linear.lossless
    w = _pruned(37, 203, 0.5, seed=0)
    module = BitmaskInt8Linear.from_dense(w)
    reference = rtn_quantize(w, QuantOptions("int8"))
    assert torch.equal(module.to_dense(), reference.dequantize(torch.float32))
    codes = reference.codes()
    assert module.nnz == int((codes != 0).sum())  # codes rounded to 0 are not stored
    assert torch.equal(module.values, codes[codes != 0].to(torch.int8))
    assert torch.equal(module.scales, reference.scales.reshape(-1))
    # pruned weights stay exactly zero, the all-zero row gets scale 1 and no codes
    assert (module.to_dense()[w == 0] == 0).all()
    assert module.scales[1] == 1 and module.row_offsets[2] == module.row_offsets[1]
    # scales by the formula: max|w_row| / 127
    expected = w.abs().amax(1) / 127
    expected[1] = 1
    assert torch.equal(module.scales, expected)


@pytest.mark.parametrize("kernel,variant", NATIVE + [("torch", 0)])
@pytest.mark.parametrize("s", SPARSITIES)
def test_every_path_matches_dequantized_linear(kernel, variant, s):
    _skip_unless(kernel)
    for (out, inp), n, use_bias in itertools.product(SHAPES, TOKENS, (False, True)):
        seed = out * 1000 + inp
        w = _pruned(out, inp, s, seed)
        b = torch.randn(out, generator=torch.Generator().manual_seed(seed + 1)) if use_bias else None
        module = BitmaskInt8Linear.from_dense(w, b)
        x = torch.randn(n, inp, generator=torch.Generator().manual_seed(seed + 2))
        module.kernel = kernel
        if kernel == "torch":
            y = module(x)
            assert y.dtype == torch.float32 and y.shape == (n, out)
            _check(y, x, module)
            continue
        y_torch = module._torch(x)
        # the expand-and-FMA kernel at every token count, and the panel path (not for scalar)
        for panels in (False, True) if kernel != "scalar" else (False,):
            y = module._native(x, kernel, variant, panels=panels)
            assert y.shape == (n, out)
            _check(y, x, module)
            _check(y_torch, x, module)
        _check(module(x), x, module)  # forward: the dispatch of the pinned path


@pytest.mark.parametrize("kernel,variant", NATIVE)
def test_threaded_blocks_and_several_panels(kernel, variant):
    """Enough rows for several OpenMP row blocks and several decompressed panels."""
    _skip_unless(kernel)
    w = _pruned(1100, 600, 0.5, seed=3)
    module = BitmaskInt8Linear.from_dense(w, torch.randn(1100))
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        assert native.panel_rows(600, 64) < 1100  # the panel path runs more than one panel
        for n in (1, 5, 64):
            x = torch.randn(n, 600)
            _check(module._native(x, kernel, variant), x, module)
            _check(module._native(x, kernel, variant, panels=False), x, module)
    finally:
        torch.set_num_threads(threads)


@pytest.mark.parametrize("kernel,variant", NATIVE)
def test_unpack_rows_is_the_dequantized_weight(kernel, variant):
    _skip_unless(kernel)
    w = _pruned(40, 203, 0.5, seed=4)
    module = BitmaskInt8Linear.from_dense(w)
    out = torch.full((23, 203), float("nan"))
    module.unpack_rows(7, 30, out, kernel, variant)
    assert torch.equal(out, module.dequantized()[7:30])
    with pytest.raises(PrunescopeError):
        module.unpack_rows(30, 60, torch.empty(30, 203), kernel, variant)


def test_weight_bytes_by_hand():
    out, inp = 37, 203
    w = _pruned(out, inp, 0.5, seed=5)
    module = BitmaskInt8Linear.from_dense(w, torch.randn(out))
    nnz = int((rtn_quantize(w, QuantOptions("int8")).codes() != 0).sum())
    by_hand = {
        "values": nnz * 1,  # one int8 code per kept weight
        "mask": out * 13 * 2,  # ceil(203 / 16) = 13 int16 words per row, as the fp32 bitmask pads rows
        "row_offsets": (out + 1) * 8,
        "scales": out * 4,  # one float32 scale per row
    }
    assert module.weight_bytes() == by_hand
    assert module.stored_bytes() == sum(by_hand.values()) + out * 4  # + the float32 bias
    assert module.weight_bytes() == quantized_storage_bytes((out, inp), nnz, "bitmask", QuantOptions("int8"))


def test_forward_dtypes_batch_dims_and_env(monkeypatch):
    w = _pruned(24, 70, 0.5, seed=6).to(torch.bfloat16)
    b = torch.randn(24).to(torch.bfloat16)
    module = BitmaskInt8Linear.from_dense(w, b)
    assert module.dtype == torch.bfloat16 and module.to_dense().dtype == torch.bfloat16
    assert module.scales.dtype == torch.float32
    x = torch.randn(2, 3, 70).to(torch.bfloat16)
    y = module(x)
    assert y.shape == (2, 3, 24) and y.dtype == torch.bfloat16
    for kernel in native.available_kernels():
        monkeypatch.setenv(native.ENV_VAR, kernel)
        expected = kernel if bi8.HAS_NATIVE or kernel == "torch" else "torch"
        assert module.path == expected
        torch.testing.assert_close(module(x).float(), y.float(), rtol=1e-2, atol=1e-2)
    with pytest.raises(PrunescopeError):
        module(torch.randn(3, 71))


def test_half_keeps_float32_scales_and_state_dict_round_trips():
    w = _pruned(16, 40, 0.5, seed=7)
    module = BitmaskInt8Linear.from_dense(w, torch.randn(16))
    scales = module.scales.clone()
    module.half()
    assert module.dtype == torch.float16 and torch.equal(module.scales, scales)
    assert module.to_dense().dtype == torch.float16
    module.float()
    assert module.dtype == torch.float32 and torch.equal(module.scales, scales)
    other = BitmaskInt8Linear.from_dense(_pruned(16, 40, 0.5, seed=8), torch.randn(16))
    if other.nnz == module.nnz:
        other.load_state_dict(module.state_dict())
        x = torch.randn(2, 40)
        torch.testing.assert_close(other(x), module(x))
    corrupt = module.state_dict()
    corrupt["row_offsets"] = corrupt["row_offsets"].clone()
    corrupt["row_offsets"][-1] += 1
    with pytest.raises(PrunescopeError):
        module.load_state_dict(corrupt)


def test_copies_use_their_own_buffers():
    import copy
    import pickle

    module = BitmaskInt8Linear.from_dense(_pruned(16, 40, 0.5, seed=10), torch.randn(16))
    x = torch.randn(3, 40)
    y = module(x)
    for clone in (copy.deepcopy(module), pickle.loads(pickle.dumps(module))):
        assert clone._args()[2] == clone.values.data_ptr() != module.values.data_ptr()
        torch.testing.assert_close(clone(x), y)


def test_corrupt_buffers_are_rejected_at_construction():
    m = BitmaskInt8Linear.from_dense(_pruned(8, 20, 0.5, seed=9))
    args = (m.values, m.mask, m.row_offsets, m.scales, 20)
    BitmaskInt8Linear(*args)  # as built
    with pytest.raises(PrunescopeError):
        BitmaskInt8Linear(m.values.float(), *args[1:])
    with pytest.raises(PrunescopeError):
        BitmaskInt8Linear(m.values, m.mask, m.row_offsets, m.scales.half(), 20)
    with pytest.raises(PrunescopeError):
        BitmaskInt8Linear(m.values, m.mask, m.row_offsets, m.scales, 40)
    with pytest.raises(PrunescopeError):
        BitmaskInt8Linear(m.values[:-1], m.mask, m.row_offsets, m.scales, 20)
    with pytest.raises(PrunescopeError):
        BitmaskInt8Linear.from_dense(torch.randn(3, 4, 5))


def test_convert_and_revert_on_a_tiny_model():
    model = tiny_opt()
    layers = prunable_layers(model)
    for module in layers.values():
        module.weight.data[torch.rand_like(module.weight) < 0.5] = 0
    before = {n: m.weight.clone() for n, m in layers.items()}
    ids = torch.randint(0, 320, (2, 12))
    with torch.no_grad():
        masked = model(ids).logits
    conversion = convert(model, list(layers), "bitmask-int8")
    converted = {n: model.get_submodule(n) for n in layers}
    assert all(isinstance(m, BitmaskInt8Linear) for m in converted.values())
    with torch.no_grad():
        quantized = model(ids).logits
        # the model computes with the dequantized weights: swap them in densely and compare
        for name, module in converted.items():
            torch.testing.assert_close(
                module.to_dense(), rtn_quantize(before[name], QuantOptions("int8")).dequantize()
            )
    assert (quantized - masked).abs().max() <= 0.1 * masked.abs().max()
    conversion.revert()
    for name, module in prunable_layers(model).items():
        assert torch.equal(module.weight, before[name]), name
    with torch.no_grad():
        torch.testing.assert_close(model(ids).logits, masked)
