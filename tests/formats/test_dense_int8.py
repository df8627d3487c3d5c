"""Dense int8 one-token kernel (the bitmask-int8 baseline): every path against the dequantized matmul, exact
on integer data, odd shapes around the vector widths, threaded row blocks, input checks."""

from __future__ import annotations

import itertools

import pytest
import torch
import torch.nn.functional as F

from prunescope.errors import PrunescopeError
from prunescope.formats import dense_int8, native
from prunescope.formats.dense_int8 import dense_int8_matvec
from prunescope.quantization import QuantOptions, rtn_quantize
from tests.helpers import skip_unless_kernel

pytestmark = [pytest.mark.native, pytest.mark.usefixtures("one_thread")]

KERNELS = ["avx512", "avx2", "scalar", "torch"]
# columns around the 16-lane word, the 64-code AVX-512 step and the 32 / 16-code AVX2 steps, and below them
COLS = [1, 5, 15, 16, 17, 31, 32, 33, 63, 64, 65, 127, 130, 203]
ROWS = [1, 3, 7]


def _skip_unless(kernel: str) -> None:
    skip_unless_kernel(kernel, dense_int8.HAS_NATIVE, "the dense int8 kernel is")


def _rtn(out: int, inp: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """int8 RTN codes and row scales of a random weight (the layout the benchmark times)."""
    w = torch.randn(out, inp, generator=torch.Generator().manual_seed(seed))
    q = rtn_quantize(w, QuantOptions("int8"))
    return q.packed.contiguous(), q.scales.reshape(-1).float().contiguous()


def _check(y: torch.Tensor, x: torch.Tensor, codes, scales, bias) -> None:
    """float32 accumulation in another order: within 1e-5 of the summed magnitudes of the products."""
    deq = dense_int8.dequantized(codes, scales)
    ref = F.linear(x, deq, bias)
    bound = F.linear(x.abs(), deq.abs(), None if bias is None else bias.abs())
    err = (y - ref).abs()
    assert (err <= 1e-5 * bound + 1e-6).all(), err.max()


@pytest.mark.parametrize("kernel", KERNELS)
def test_exact_on_integer_data(kernel):
    """Integer codes over the whole int8 range (-128 too), integer inputs and bias, scale 1: every partial
    sum is an integer below 2^24, so any order of float32 accumulation is exact and a code FMA'd with the
    wrong input, or a lane lost or read twice in a tail, shows as a mismatch."""
    _skip_unless(kernel)
    g = torch.Generator().manual_seed(0)
    for out, inp in itertools.product(ROWS, COLS):
        codes = torch.randint(-128, 128, (out, inp), generator=g, dtype=torch.int8)
        x = torch.randint(-3, 4, (inp,), generator=g).float()
        bias = torch.randint(-9, 10, (out,), generator=g).float()
        exact = (codes.long() @ x.long() + bias.long()).float()
        y = dense_int8_matvec(codes, torch.ones(out), x, bias, kernel)
        assert torch.equal(y, exact), (out, inp)


@pytest.mark.parametrize("kernel", KERNELS)
def test_matches_dequantized_matmul(kernel):
    _skip_unless(kernel)
    for (out, inp), use_bias, batched in itertools.product(
        itertools.product(ROWS + [37], COLS + [1000]), (False, True), (False, True)
    ):
        seed = out * 10_000 + inp
        codes, scales = _rtn(out, inp, seed)
        bias = torch.randn(out, generator=torch.Generator().manual_seed(seed + 1)) if use_bias else None
        x = torch.randn(1, inp, generator=torch.Generator().manual_seed(seed + 2))
        y = dense_int8_matvec(codes, scales, x if batched else x[0], bias, kernel)
        assert y.dtype == torch.float32 and y.shape == ((1, out) if batched else (out,))
        _check(y.reshape(1, out), x, codes, scales, bias)


@pytest.mark.parametrize("kernel", KERNELS[:3])
def test_threaded_row_blocks(kernel):
    """601 rows of 1000 codes are 3 OpenMP row blocks of 272 (the last one short) over 3 threads: rows that
    split evenly neither over the blocks nor over the threads; the result is the one-thread result."""
    _skip_unless(kernel)
    codes, scales = _rtn(601, 1000, seed=5)
    bias, x = torch.randn(601), torch.randn(1000)
    serial = dense_int8_matvec(codes, scales, x, bias, kernel)
    threads = torch.get_num_threads()
    torch.set_num_threads(3)
    try:
        threaded = dense_int8_matvec(codes, scales, x, bias, kernel)
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(threaded, serial)  # each row is summed by one thread in the same order
    _check(threaded[None], x[None], codes, scales, bias)


def test_float_input_dtypes_and_non_contiguous_codes():
    _skip_unless(native.best_kernel())
    codes, scales = _rtn(9, 70, seed=6)
    x = torch.randn(70)
    expected = dense_int8_matvec(codes, scales, x)
    assert torch.allclose(dense_int8_matvec(codes, scales, x.double()), expected)
    wide = torch.zeros(9, 140, dtype=torch.int8)
    wide[:, ::2] = codes
    assert torch.equal(dense_int8_matvec(wide[:, ::2], scales, x), expected)


@pytest.mark.parametrize(
    "change",
    [
        {"codes": torch.zeros(4, 8)},  # float codes
        {"codes": torch.zeros(8, dtype=torch.int8)},  # 1-D codes
        {"scales": torch.ones(4, dtype=torch.float64)},
        {"scales": torch.ones(5)},
        {"x": torch.zeros(2, 8)},  # two tokens
        {"x": torch.zeros(7)},
        {"bias": torch.zeros(3)},
    ],
)
def test_bad_arguments_are_one_clear_error(change):
    args = {"codes": torch.zeros(4, 8, dtype=torch.int8), "scales": torch.ones(4), "x": torch.zeros(8)}
    args.update(change)
    with pytest.raises(PrunescopeError):
        dense_int8_matvec(**args)
