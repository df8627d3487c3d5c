"""The Triton kernel of bitmask and bitmask-int8 (`formats.gpu.triton_bitmask`), checked against F.linear on
the weight the format stores, plus how the modules, `$PRUNESCOPE_KERNEL` and `auto` reach it.  On a GPU
host it runs compiled on CUDA; elsewhere on the CPU through Triton's interpreter (tests/conftest.py sets
TRITON_INTERPRET=1 before triton is imported), the same kernel source."""

from __future__ import annotations

import os

import pytest
import torch
import torch.nn.functional as F

from prunescope import PrunescopeError, PruneSpec, prunable_layers, prune
from prunescope.formats import convert, native
from prunescope.formats.auto import choose_format
from prunescope.formats.bitmask import BitmaskLinear
from prunescope.formats.bitmask_int8 import BitmaskInt8Linear, reference_linear
from prunescope.formats.csr16 import CSR16Linear
from prunescope.formats.gpu import triton_bitmask
from tests.helpers import tiny_opt

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


def _runs_here() -> bool:
    return triton_bitmask.available() and (DEVICE == "cuda" or triton_bitmask.interpreting())


pytestmark = [
    pytest.mark.triton,
    pytest.mark.skipif(not _runs_here(), reason="needs triton, and a GPU or TRITON_INTERPRET=1 at start"),
]


@pytest.fixture(autouse=True)
def no_forced_kernel_and_a_seed(monkeypatch):
    monkeypatch.delenv(native.ENV_VAR, raising=False)
    torch.manual_seed(0)  # the inputs of a test do not depend on the tests before it


def _pruned(out: int, inp: int, sparsity: float, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(out, inp, generator=g)
    w[torch.rand(out, inp, generator=g) < sparsity] = 0
    if out > 2:
        w[1] = 0  # an all-zero row: its offset does not move
    return w.to(DEVICE)


def _randn(*shape: int) -> torch.Tensor:
    return torch.randn(*shape).to(DEVICE)


def _close(y: torch.Tensor, reference: torch.Tensor, tolerance: float = 1e-5) -> None:
    """Within `tolerance` of the reference's largest magnitude: float32 sums in another order."""
    assert y.shape == reference.shape
    assert float((y - reference).abs().max()) <= tolerance * max(float(reference.abs().max()), 1e-30)


# (out, in): fewer rows than a block, a width that is no multiple of 16, several column tiles (> 64)
SHAPES = [(5, 16), (37, 70), (70, 203)]
TOLERANCE = {torch.float32: 1e-5, torch.float16: 2e-3, torch.bfloat16: 1e-2}


@pytest.mark.parametrize("dtype", list(TOLERANCE))
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("n", [1, 3, triton_bitmask.MAX_TOKENS])
def test_kernel_matches_linear_on_the_stored_weight(dtype, shape, n):
    out, inp = shape
    weight = _pruned(out, inp, 0.6, seed=out + n).to(dtype)
    bias = _randn(out).to(dtype)
    module = BitmaskLinear.from_dense(weight, bias)
    x = _randn(n, inp).to(dtype)
    y = triton_bitmask.bitmask_matmul(x, module.values, module.mask, module.row_offsets, bias, inp)
    assert y.dtype == dtype and y.shape == (n, out)
    reference = F.linear(x.float(), weight.float(), bias.float())
    scale = reference.abs().max()
    assert float((y.float() - reference).abs().max() / scale) < TOLERANCE[dtype]


@pytest.mark.parametrize("sparsity", [0.0, 0.95, 1.0])
def test_kernel_at_the_sparsity_extremes_and_without_bias(sparsity):
    weight = _pruned(33, 150, sparsity, seed=3)
    module = BitmaskLinear.from_dense(weight)
    for n in (1, 4):
        x = _randn(n, 150)
        y = triton_bitmask.bitmask_matmul(x, module.values, module.mask, module.row_offsets, None, 150)
        _close(y, F.linear(x, weight))


@pytest.mark.parametrize("x_dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("n", [1, 5])
def test_int8_codes_times_row_scales(x_dtype, n):
    weight = _pruned(40, 203, 0.5, seed=7)
    bias = _randn(40)
    module = BitmaskInt8Linear.from_dense(weight, bias, kernel="triton")
    assert module.path == "triton"
    x = _randn(n, 203).to(x_dtype)
    y = module(x)
    assert y.dtype == x_dtype
    reference = reference_linear(x.float(), module)  # x @ (scale * code)^T + bias, float32
    assert float((y.float() - reference).abs().max() / reference.abs().max()) < TOLERANCE[x_dtype]


def test_modules_take_the_kernel_up_to_max_tokens_and_the_torch_path_beyond(monkeypatch):
    weight, bias = _pruned(24, 80, 0.5), _randn(24)
    module = BitmaskLinear.from_dense(weight, bias, kernel="triton")
    calls = []
    kernel = triton_bitmask.bitmask_matmul
    monkeypatch.setattr(triton_bitmask, "bitmask_matmul", lambda *a, **k: calls.append(1) or kernel(*a, **k))
    for n in (1, triton_bitmask.MAX_TOKENS, triton_bitmask.MAX_TOKENS + 1):
        x = _randn(n, 80)
        _close(module(x), F.linear(x, weight, bias))
    assert len(calls) == 2  # the prefill-sized call expanded the weight and ran one GEMM instead
    x = _randn(2, 3, 80)  # leading dims: 6 rows
    _close(module(x), F.linear(x, weight, bias))


def test_the_environment_variable_reaches_only_the_formats_with_a_triton_kernel(monkeypatch):
    weight = _pruned(16, 32, 0.5)
    monkeypatch.setenv(native.ENV_VAR, "triton")
    assert BitmaskLinear.from_dense(weight).path == "triton"
    assert BitmaskInt8Linear.from_dense(weight).path == "triton"
    # csr16 and the native entry points keep their best CPU path: the variable asks for a GPU kernel
    assert CSR16Linear.from_dense(weight).path == native.best_kernel()
    assert native.resolve_kernel() == native.best_kernel()
    with pytest.raises(PrunescopeError, match="csr16 has no Triton kernel"):
        _ = CSR16Linear.from_dense(weight, kernel="triton").path
    with pytest.raises(PrunescopeError, match="not a native CPU one"):
        native.resolve_kernel("triton")


def test_the_cpu_without_the_interpreter_gets_one_line(monkeypatch):
    module = BitmaskLinear.from_dense(_pruned(16, 32, 0.5).cpu(), kernel="triton")
    before = os.environ.get("TRITON_INTERPRET")
    monkeypatch.setattr(triton_bitmask, "interpreting", lambda: False)
    with pytest.raises(PrunescopeError, match="runs on CUDA") as error:
        module(torch.randn(1, 32))
    assert "\n" not in str(error.value)
    assert os.environ.get("TRITON_INTERPRET") == before  # decorating the kernel leaves the variable be


def test_auto_times_the_triton_kernel_as_a_candidate():
    weight, bias = _pruned(32, 64, 0.8), _randn(32)
    module = choose_format(weight, bias, n_tokens=1, candidates=("dense", "bitmask-triton"), repeats=1)
    assert set(module.auto_timings) == {"dense", "bitmask-triton"}
    x = _randn(1, 64)
    _close(module(x), F.linear(x, weight, bias))


def test_a_converted_model_on_the_kernel_predicts_as_the_masked_one():
    model = tiny_opt().to(DEVICE)
    layers = prunable_layers(model)
    prune(model, layers, PruneSpec.create("magnitude", 0.5), progress=False)
    ids = torch.randint(0, 320, (1, 8)).to(DEVICE)  # 8 tokens: every projection runs the kernel
    with torch.no_grad():
        masked = model(ids).logits
        conversion = convert(model, list(layers), "bitmask", {"kernel": "triton"})
        assert all(model.get_submodule(n).path == "triton" for n in layers)
        logits = model(ids).logits
        conversion.revert()
    torch.testing.assert_close(logits, masked, rtol=1e-4, atol=1e-4)
