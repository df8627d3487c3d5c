"""`SparseLinear.clone`: an independent copy of every format's module, torch sparse tensors included."""

from __future__ import annotations

import pytest
import torch

from prunescope.errors import PrunescopeError
from prunescope.formats import FORMATS, format_class


def _storages(module: torch.nn.Module) -> set[int]:
    """Data pointers of every tensor the module holds (a sparse tensor's values and indices)."""
    tensors = [*module.parameters(), *module.buffers()]
    parts = []
    for t in tensors:
        if t.layout in (torch.sparse_csr, torch.sparse_bsr):
            parts += [t.values(), t.crow_indices(), t.col_indices()]
        else:
            parts.append(t)
    return {p.data_ptr() for p in parts if p.numel()}


@pytest.mark.parametrize("name", list(FORMATS))
def test_a_clone_computes_the_same_on_its_own_weights(name):
    generator = torch.Generator().manual_seed(0)
    weight = torch.randn(32, 64, generator=generator)
    weight[torch.rand(weight.shape, generator=generator) < 0.6] = 0
    bias, x = torch.randn(32, generator=generator), torch.randn(3, 64, generator=generator)
    try:
        module = format_class(name).build(weight, bias, {"n_tokens": (1,)} if name == "auto" else None)
    except PrunescopeError as error:  # semi-structured: CUDA only
        pytest.skip(str(error))
    cloned = module.clone()
    assert type(cloned) is type(module) and vars(cloned).get("auto_choice") == vars(module).get("auto_choice")
    assert torch.equal(cloned(x), module(x))
    assert not _storages(cloned) & _storages(module)


@pytest.mark.parametrize("name", ["bitmask", "bitmask-int8"])
def test_cached_kernel_addresses_follow_copies_and_moves(name):
    """The one-token native path calls the kernel with buffer addresses cached when the buffers were set:
    a deepcopy, a pickle round trip and a dtype move must each run on their own buffers, not freed ones."""
    import copy
    import io

    g = torch.Generator().manual_seed(1)
    weight = torch.randn(48, 96, generator=g)
    weight[torch.rand(48, 96, generator=g) < 0.5] = 0
    bias = torch.randn(48, generator=g)
    module = format_class(name).from_dense(weight, bias)
    x = torch.randn(1, 96, generator=g)
    expected = module(x)
    copied = copy.deepcopy(module)
    buffer = io.BytesIO()
    torch.save(module, buffer)
    buffer.seek(0)
    loaded = torch.load(buffer, weights_only=False)
    moved = copy.deepcopy(module).to(torch.bfloat16).to(torch.float32)
    module.values.zero_()  # in place: a copy still reading the original's addresses would see it
    for other in (copied, loaded):
        torch.testing.assert_close(other(x), expected, rtol=0, atol=0)
    torch.testing.assert_close(moved(x), expected, rtol=2e-2, atol=2e-2)  # bf16 round trip of the values
