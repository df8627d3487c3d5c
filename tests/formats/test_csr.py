"""The CSR variant: same outputs as the masked model, exact byte accounting, clear errors for half types."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from prunescope import PrunescopeError, prunable_layers
from prunescope.formats import convert
from prunescope.formats.csr import CSRLinear
from tests.helpers import magnitude_pruned_opt


def test_csr_linear_matches_dense_with_leading_dims_and_bias():
    torch.manual_seed(0)
    weight = torch.randn(12, 20)
    weight[torch.rand_like(weight) < 0.6] = 0
    bias = torch.randn(12)
    module = CSRLinear.from_dense(weight, bias)
    x = torch.randn(2, 3, 5, 20)
    torch.testing.assert_close(module(x), nn.functional.linear(x, weight, bias), rtol=1e-5, atol=1e-5)
    assert module(x).shape == (2, 3, 5, 12)
    assert torch.equal(module.to_dense(), weight)
    no_bias = CSRLinear.from_dense(weight)
    torch.testing.assert_close(no_bias(x[0, 0]), x[0, 0] @ weight.T, rtol=1e-5, atol=1e-5)


def test_csr_bytes_are_values_plus_indices_at_real_dtypes():
    weight = torch.zeros(4, 6)
    weight[0, 1] = weight[2, 5] = weight[3, 0] = 1.0
    module = CSRLinear.from_dense(weight, torch.ones(4))
    assert module.nnz == 3
    # fp32 values, int32 column indices and row pointers (out + 1 entries).
    assert module.weight_bytes() == {"values": 3 * 4, "col_indices": 3 * 4, "crow_indices": 5 * 4}
    assert module.stored_bytes() == 12 + 12 + 20 + 4 * 4
    assert module.flops_per_token() == 6


def test_csr_model_logits_match_masked_and_revert_restores():
    model, layers = magnitude_pruned_opt()
    ids = torch.randint(0, 320, (3, 17))
    masked = model(ids).logits
    weights = {n: m.weight.clone() for n, m in layers.items()}
    conversion = convert(model, list(layers), "csr")
    assert all(isinstance(model.get_submodule(n), CSRLinear) for n in layers)
    torch.testing.assert_close(model(ids).logits, masked, rtol=1e-4, atol=1e-5)
    conversion.revert()
    for name, module in prunable_layers(model).items():
        assert isinstance(module, nn.Linear) and torch.equal(module.weight, weights[name])


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_csr_on_cpu_is_a_clear_error(dtype):
    with pytest.raises(PrunescopeError, match="does not support"):
        CSRLinear.from_dense(torch.eye(4, dtype=dtype))
