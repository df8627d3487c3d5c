"""prunescope.quantization: RTN formulas, GPTQ and the joint SparseGPT + GPTQ pass against ports of the
IST-DASLab references, QuantizedLinear against torch's weight-only kernels, byte counts by hand."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from prunescope.errors import PrunescopeError
from prunescope.quantization import (
    HessianStats,
    QuantizedLinear,
    QuantOptions,
    bits_per_weight,
    collect_hessians,
    gptq_quantize,
    parse_quantizers,
    quantize_model,
    quantized_storage_bytes,
    rtn_quantize,
    sparsegpt_gptq,
)

# ---------------------------------------------------------------------------------------------------------
# Plain numpy re-implementation of issue 25's RTN formulas


def numpy_int8(w: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    codes = np.zeros(w.shape, dtype=np.float32)
    scales = np.zeros(w.shape[0], dtype=np.float32)
    for r in range(w.shape[0]):
        scale = np.float32(np.abs(w[r]).max() / np.float32(127))
        if scale == 0:
            scale = np.float32(1)
        scales[r] = scale
        for c in range(w.shape[1]):
            codes[r, c] = min(max(np.round(w[r, c] / scale), -127), 127)
    return codes, scales, codes * scales[:, None]


def numpy_int4(w: np.ndarray, group: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    rows, cols = w.shape
    codes = np.zeros(w.shape, dtype=np.float32)
    deq = np.zeros(w.shape, dtype=np.float32)
    scales = np.zeros((rows, cols // group), dtype=np.float32)
    zeros = np.zeros((rows, cols // group), dtype=np.float32)
    for r in range(rows):
        for g in range(cols // group):
            x = w[r, g * group : (g + 1) * group]
            lo, hi = min(x.min(), np.float32(0)), max(x.max(), np.float32(0))
            if lo == 0 and hi == 0:
                lo, hi = np.float32(-1), np.float32(1)
            scale = np.float32((hi - lo) / np.float32(15))
            zero = np.round(-lo / scale)
            scales[r, g], zeros[r, g] = scale, zero
            for k, value in enumerate(x):
                code = min(max(np.round(value / scale) + zero, 0), 15)
                codes[r, g * group + k] = code
                deq[r, g * group + k] = scale * (code - zero)
    return codes, scales, zeros, deq


def pruned_weight(rows: int, cols: int, sparsity: float = 0.5, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(rows, cols, generator=g) * 0.05
    w[torch.rand(rows, cols, generator=g) < sparsity] = 0
    w[3] = 0  # an all-zero row
    return w


def test_rtn_int8_matches_the_formula_and_keeps_zeros():
    w = pruned_weight(12, 40)
    q = rtn_quantize(w, QuantOptions("int8"))
    codes, scales, deq = numpy_int8(w.numpy())
    assert q.packed.dtype == torch.int8 and q.zeros is None and q.scales.shape == (12, 1)
    assert np.array_equal(q.codes().numpy(), codes.astype(np.int32))
    assert np.array_equal(q.scales[:, 0].numpy(), scales)
    assert np.array_equal(q.dequantize().numpy(), deq)
    assert q.scales[3, 0] == 1  # zero row: scale 1
    dense = q.dequantize()
    assert torch.all(dense[w == 0] == 0) and int(q.codes().abs().max()) <= 127


@pytest.mark.parametrize("group", [8, None])
def test_rtn_int4_matches_the_formula_and_keeps_zeros(group):
    w = pruned_weight(10, 32)
    w[5, 8:16] = 0  # an all-zero group
    w[6] = w[6].abs()  # a row whose min is 0
    q = rtn_quantize(w, QuantOptions("int4", group_size=group))
    codes, scales, zeros, deq = numpy_int4(w.numpy(), group or 32)
    assert q.packed.dtype == torch.uint8 and q.packed.shape == (10, 16)
    assert np.array_equal(q.codes().numpy(), codes.astype(np.int32))
    assert np.array_equal(q.scales.numpy(), scales)
    assert np.array_equal(q.zeros.numpy(), zeros.astype(np.uint8))
    assert np.array_equal(q.dequantize().numpy(), deq)
    assert torch.all(q.dequantize()[w == 0] == 0)  # round(0/s) + zero − zero = 0, exactly
    assert not q.nonzero()[w == 0].any()


def test_int4_pack_roundtrip_with_odd_columns():
    codes = torch.randint(0, 16, (3, 7), dtype=torch.int32)
    from prunescope.quantization import get_quantizer

    quantizer = get_quantizer("int4")
    packed = quantizer.pack(codes)
    assert packed.shape == (3, 4)
    assert int(packed[0, 0]) == int(codes[0, 0]) | int(codes[0, 1]) << 4  # low nibble = even column
    assert torch.equal(quantizer.unpack(packed, 7), codes)


def test_scales_are_stored_at_the_weight_dtype():
    w = pruned_weight(16, 64).to(torch.bfloat16)
    q = rtn_quantize(w, QuantOptions("int4", group_size=32))
    assert q.scales.dtype == torch.bfloat16 and q.zeros.dtype == torch.uint8
    assert q.dequantize().dtype == torch.bfloat16
    assert torch.all(q.dequantize()[w == 0] == 0)


# ---------------------------------------------------------------------------------------------------------
# Line-by-line ports of the references (IST-DASLab/gptq gptq.py + quant.py, IST-DASLab/sparsegpt
# sparsegpt.py), torch fp32 as they run. The int4 quantizer is theirs (perchannel=True, sym=False,
# mse=False); int8 is issue 25's symmetric formula behind the same interface.


def ref_quantize(x, scale, zero, maxq):
    q = torch.clamp(torch.round(x / scale) + zero, 0, maxq)
    return scale * (q - zero)


class RefQuantizer:
    def __init__(self, bits):
        self.bits = bits
        self.maxq = torch.tensor(2**bits - 1)
        self.scale = torch.zeros(1)

    def find_params(self, x, weight=True):
        x = x.flatten(1)
        if self.bits == 8:  # issue 25 int8: symmetric, scale = max|w| / 127
            scale = x.abs().max(1)[0] / 127
            scale[scale == 0] = 1
            self.scale, self.zero = scale.reshape(-1, 1), None
            return
        tmp = torch.zeros(x.shape[0])
        xmin = torch.minimum(x.min(1)[0], tmp)
        xmax = torch.maximum(x.max(1)[0], tmp)
        tmp = (xmin == 0) & (xmax == 0)
        xmin[tmp] = -1
        xmax[tmp] = +1
        self.scale = (xmax - xmin) / self.maxq
        self.zero = torch.round(-xmin / self.scale)
        self.scale = self.scale.reshape(-1, 1)
        self.zero = self.zero.reshape(-1, 1)

    def quantize(self, x):
        if self.bits == 8:
            return self.scale * torch.clamp(torch.round(x / self.scale), -127, 127)
        return ref_quantize(x, self.scale, self.zero, self.maxq)


def ref_damped_inverse_cholesky(H, percdamp):
    """The upper Cholesky factor of (H + damp I)^-1, damp = percdamp * mean(diag H), as gptq.py / sparsegpt.py
    compute it (H is modified in place, as there)."""
    damp = percdamp * torch.mean(torch.diag(H))
    diag = torch.arange(H.shape[0])
    H[diag, diag] += damp
    H = torch.linalg.cholesky(H)
    H = torch.cholesky_inverse(H)
    return torch.linalg.cholesky(H, upper=True)


def ref_fasterquant(W, H, bits, blocksize=128, percdamp=0.01, groupsize=-1, actorder=False,
                    static_groups=False, mask=None):  # fmt: skip
    """gptq.py GPTQ.fasterquant; `mask` adds sparsegpt.py's fixed-mask lines (q[mask] = 0)."""
    import copy

    W = W.clone().float()
    H = H.clone()
    columns = W.shape[1]
    quantizer = RefQuantizer(bits)
    if mask is not None:
        W[mask] = 0
    quantizer.find_params(W, weight=True)
    dead = torch.diag(H) == 0
    H[dead, dead] = 1
    W[:, dead] = 0
    if static_groups:
        groups = []
        for i in range(0, columns, groupsize):
            quantizer = copy.deepcopy(quantizer)
            quantizer.find_params(W[:, i : (i + groupsize)], weight=True)
            groups.append(quantizer)
    if actorder:
        perm = torch.argsort(torch.diag(H), descending=True)
        W = W[:, perm]
        H = H[perm][:, perm]
        mask = mask[:, perm] if mask is not None else None
        invperm = torch.argsort(perm)
    Q = torch.zeros_like(W)
    Hinv = ref_damped_inverse_cholesky(H, percdamp)
    for i1 in range(0, columns, blocksize):
        i2 = min(i1 + blocksize, columns)
        count = i2 - i1
        W1 = W[:, i1:i2].clone()
        Q1 = torch.zeros_like(W1)
        Err1 = torch.zeros_like(W1)
        Hinv1 = Hinv[i1:i2, i1:i2]
        for i in range(count):
            w = W1[:, i]
            d = Hinv1[i, i]
            if groupsize != -1:
                if not static_groups:
                    if (i1 + i) % groupsize == 0:
                        sl = W[:, (i1 + i) : (i1 + i + groupsize)]
                        if mask is not None:
                            sl = sl.masked_fill(mask[:, (i1 + i) : (i1 + i + groupsize)], 0)
                        quantizer.find_params(sl, weight=True)
                else:
                    idx = i1 + i
                    if actorder:
                        idx = perm[idx]
                    quantizer = groups[idx // groupsize]
            q = w.clone()
            if mask is not None:
                q[mask[:, i1 + i]] = 0
            q = quantizer.quantize(q.unsqueeze(1)).flatten()
            Q1[:, i] = q
            err1 = (w - q) / d
            W1[:, i:] -= err1.unsqueeze(1).matmul(Hinv1[i, i:].unsqueeze(0))
            Err1[:, i] = err1
        Q[:, i1:i2] = Q1
        W[:, i2:] -= Err1.matmul(Hinv[i1:i2, i2:])
    if actorder:
        Q = Q[:, invperm]
    return Q


def ref_fasterprune(W, H, sparsity, bits, prunen=0, prunem=0, blocksize=128, percdamp=0.01):
    """sparsegpt.py SparseGPT.fasterprune with self.quantizer (per row, found on the dense W)."""
    W = W.clone().float()
    H = H.clone()
    columns = W.shape[1]
    quantizer = RefQuantizer(bits)
    quantizer.find_params(W, weight=True)
    dead = torch.diag(H) == 0
    H[dead, dead] = 1
    W[:, dead] = 0
    Hinv = ref_damped_inverse_cholesky(H, percdamp)
    full_mask = torch.zeros_like(W, dtype=torch.bool)
    for i1 in range(0, columns, blocksize):
        i2 = min(i1 + blocksize, columns)
        count = i2 - i1
        W1 = W[:, i1:i2].clone()
        Q1 = torch.zeros_like(W1)
        Err1 = torch.zeros_like(W1)
        Hinv1 = Hinv[i1:i2, i1:i2]
        if prunen == 0:
            tmp = W1**2 / (torch.diag(Hinv1).reshape((1, -1))) ** 2
            # The one deliberate change (as prunescope.pruning.sparsegpt): exactly round(p·n) weights;
            # the reference's sorted[int(n·p)] with `<=` takes one more.
            thresh = torch.sort(tmp.flatten())[0][round(tmp.numel() * sparsity) - 1]
            mask1 = tmp <= thresh
        else:
            mask1 = torch.zeros_like(W1) == 1
        for i in range(count):
            w = W1[:, i]
            d = Hinv1[i, i]
            if prunen != 0 and i % prunem == 0:
                tmp = (
                    W1[:, i : (i + prunem)] ** 2 / (torch.diag(Hinv1)[i : (i + prunem)].reshape((1, -1))) ** 2
                )
                mask1.scatter_(1, i + torch.topk(tmp, prunen, dim=1, largest=False)[1], True)
            q = w.clone()
            q[mask1[:, i]] = 0
            q = quantizer.quantize(q.unsqueeze(1)).flatten()
            Q1[:, i] = q
            err1 = (w - q) / d
            W1[:, i:] -= err1.unsqueeze(1).matmul(Hinv1[i, i:].unsqueeze(0))
            Err1[:, i] = err1
        W[:, i1:i2] = Q1
        full_mask[:, i1:i2] = mask1
        W[:, i2:] -= Err1.matmul(Hinv[i1:i2, i2:])
    return W, full_mask


@pytest.fixture(scope="module")
def layer():
    """A 32 x 192 layer (two column blocks of 128, the second partial) and H from 256 correlated inputs."""
    g = torch.Generator().manual_seed(1)
    cols = 192
    w = torch.randn(32, cols, generator=g) * 0.1
    mixing = torch.randn(cols, cols, generator=g) / cols**0.5 + torch.eye(cols)
    x = torch.randn(4, 64, cols, generator=g) @ mixing
    x[..., 7] = 0  # a dead input
    stats = HessianStats(cols)
    stats.add(x[:2])
    stats.add(x[2:])
    return w, stats.hessian, x


def test_hessian_stats_is_the_running_mean(layer):
    _, h, x = layer
    flat = x.reshape(-1, x.shape[-1]).double()
    assert torch.allclose(h.double(), 2 / 4 * flat.T @ flat, rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize(
    "name, group, act_order, masked",
    [
        ("int4", 64, False, False),  # groups re-found inside a block from the lazily updated W
        ("int4", None, False, True),
        ("int4", 64, True, True),  # act-order + groups = the reference's static groups
        ("int8", None, True, False),
        ("int8", None, False, True),
    ],
)
def test_gptq_matches_the_reference_port(layer, name, group, act_order, masked):
    w, h, _ = layer
    mask = (torch.rand(w.shape, generator=torch.Generator().manual_seed(2)) < 0.5) if masked else None
    options = QuantOptions(name, group_size=group, method="gptq", act_order=act_order)
    result = gptq_quantize(w, h, options, mask)
    bits = 4 if name == "int4" else 8
    ref = ref_fasterquant(
        w,
        h,
        bits,
        groupsize=group or -1,
        actorder=act_order,
        static_groups=act_order and group is not None,
        mask=mask,
    )
    assert (result.weight - ref).abs().max() <= 1e-5
    assert torch.equal(result.quantized.dequantize(), result.weight)  # codes + params give the same values
    if masked:
        assert torch.all(result.weight[mask] == 0)


def test_gptq_beats_rtn_on_the_layer_output(layer):
    w, h, x = layer
    options = QuantOptions("int4", group_size=64, method="gptq")
    gptq = gptq_quantize(w, h, options).weight
    rtn = rtn_quantize(w * (torch.diag(h) != 0), options).dequantize()
    err = lambda q: float(torch.linalg.norm((x @ (w - q).T).reshape(-1)))  # noqa: E731
    assert err(gptq) < 0.8 * err(rtn)


@pytest.mark.parametrize(
    "name, sparsity, nm", [("int4", 0.5, (0, 0)), ("int8", 0.6, (0, 0)), ("int4", 0, (2, 4))]
)
def test_joint_sparsegpt_gptq_matches_the_reference_port(layer, name, sparsity, nm):
    w, h, _ = layer
    options = QuantOptions(name, group_size=None, method="gptq")
    new, mask, quantized = sparsegpt_gptq(w, h, sparsity, options, prune_n=nm[0], prune_m=nm[1])
    ref, ref_mask = ref_fasterprune(w, h, sparsity, 4 if name == "int4" else 8, prunen=nm[0], prunem=nm[1])
    assert torch.equal(mask, ref_mask)
    assert (new - ref).abs().max() <= 1e-5
    assert torch.all(new[mask] == 0) and torch.equal(quantized.dequantize(), new)
    if nm == (0, 0):  # exact count per block
        assert int(mask[:, :128].sum()) == round(sparsity * 32 * 128)
    else:
        assert torch.all(mask.view(32, -1, 4).sum(-1) == 2)


def test_joint_pass_with_groups_keeps_zeros(layer):
    w, h, _ = layer
    new, mask, quantized = sparsegpt_gptq(w, h, 0.5, QuantOptions("int4", group_size=32, method="gptq"))
    assert torch.all(new[mask] == 0) and quantized.scales.shape == (32, 6)
    assert torch.equal(quantized.dequantize(), new)


# ---------------------------------------------------------------------------------------------------------
# QuantizedLinear


@pytest.mark.parametrize("name, group", [("int8", None), ("int4", 32), ("int4", 64)])
def test_quantized_linear_uses_torch_kernels_and_matches_dequantized_matmul(name, group):
    w = pruned_weight(32, 128)
    bias = torch.randn(32)
    layer = QuantizedLinear.from_dense(w, bias, QuantOptions(name, group_size=group))
    x = torch.randn(2, 3, 128)
    assert layer.kernel_path(x) == ("int8pack" if name == "int8" else "int4pack")
    y = layer(x)
    dense = layer.to_dense()
    expected = F.linear(x.double(), dense.double(), bias.double()).float()
    assert y.shape == (2, 3, 32)
    assert torch.allclose(y, expected, rtol=1e-5, atol=1e-5)
    fallback = QuantizedLinear.from_dense(w, bias, QuantOptions(name, group_size=group), kernel="dequant")
    assert torch.allclose(fallback(x), expected, rtol=1e-5, atol=1e-5)
    # The kernel itself, called directly, agrees with our dequantized weight.
    x2 = x.reshape(-1, 128)
    if name == "int8":
        direct = torch.ops.aten._weight_int8pack_mm(x2, layer.values, layer.scales.reshape(-1))
    else:
        packed, scale_zero = layer._int4_operands(torch.float32)
        direct = torch.ops.aten._weight_int4pack_mm_for_cpu(x2, packed, group, scale_zero)
    assert torch.allclose(direct, x2.double().matmul(dense.double().T).float(), rtol=1e-5, atol=1e-5)
    # bf16 activations run the same kernels
    assert layer(x.bfloat16()).dtype == torch.bfloat16


def test_quantized_linear_falls_back_where_no_kernel_applies():
    w = pruned_weight(10, 48)  # 10 rows: torch's int4 kernel needs a multiple of 16
    layer = QuantizedLinear.from_dense(w, None, QuantOptions("int4", group_size=16))
    x = torch.randn(4, 48)
    assert layer.kernel_path(x) == "dequant"
    assert torch.allclose(layer(x), x @ layer.to_dense().T, atol=1e-6)
    with pytest.raises(PrunescopeError, match="no torch weight-only kernel"):
        QuantizedLinear.from_dense(w, None, QuantOptions("int4", group_size=16), kernel="aten")(x)


def test_quantized_linear_bytes_and_state():
    w = pruned_weight(32, 128)
    int8 = QuantizedLinear.from_dense(w, None, QuantOptions("int8"))
    assert int8.weight_bytes() == {"values": 32 * 128, "scales": 32 * 4}
    assert int8.bits_per_weight() == pytest.approx(8 + 32 / 128)
    int4 = QuantizedLinear.from_dense(w, None, QuantOptions("int4", group_size=64))
    assert int4.weight_bytes() == {"values": 32 * 64, "scales": 32 * 2 * 4, "zeros": 32 * 2}
    assert int4.nnz == int((int4.to_dense() != 0).sum()) <= int((w != 0).sum())
    state = int4.state_dict()
    assert set(state) == {"values", "scales", "zeros"} and state["values"].dtype == torch.uint8
    assert int4.weight_bytes() == quantized_storage_bytes((32, 128), 0, "dense", QuantOptions("int4", 64))


# ---------------------------------------------------------------------------------------------------------
# Bytes of quantized sparse formats, counted by hand for a 64 x 96 layer with 2000 non-zeros


def test_storage_bytes_by_hand():
    shape, nnz = (64, 96), 2000
    int8, int4 = QuantOptions("int8"), QuantOptions("int4", group_size=32)
    # int8: 1 byte per value, one fp32 scale per row. int4 (group 32): half a byte per value, 3 groups a row.
    assert quantized_storage_bytes(shape, nnz, "dense", int8) == {"values": 6144, "scales": 256}
    assert quantized_storage_bytes(shape, nnz, "dense", int4) == {"values": 3072, "scales": 768, "zeros": 192}
    assert quantized_storage_bytes(shape, nnz, "bitmask", int4) == {
        "values": 1000, "mask": 64 * 6 * 2, "row_offsets": 65 * 8, "scales": 768, "zeros": 192,
    }  # fmt: skip
    assert quantized_storage_bytes(shape, nnz, "csr", int8) == {
        "values": 2000, "col_indices": 8000, "crow_indices": 260, "scales": 256,
    }  # fmt: skip
    assert quantized_storage_bytes(shape, nnz + 1, "csr16", int4, torch.float16) == {
        "values": 1001, "col_indices": 4002, "row_offsets": 520, "scales": 384, "zeros": 192,
    }  # fmt: skip
    assert quantized_storage_bytes(shape, nnz, "bitmask", None, torch.bfloat16)["values"] == 4000
    # bitmask + int4 at s = 0.5, group 128, fp16 scales: 0.5·4 + 1 bit + (16 + 8)/128 + row offsets
    parts = quantized_storage_bytes((4096, 4096), 4096 * 2048, "bitmask", QuantOptions("int4"), torch.float16)
    assert bits_per_weight(parts, (4096, 4096)) == pytest.approx(2 + 1 + 24 / 128 + 8 * 4097 * 8 / 4096**2)


def test_unquantized_storage_bytes_match_the_format_modules():
    formats = pytest.importorskip("prunescope.formats")
    w = pruned_weight(64, 96)
    nnz = int((w != 0).sum())
    for name in ("dense", "bitmask", "csr", "csr16"):
        try:
            if name == "dense":
                from prunescope.formats.dense import DenseLinear

                module = DenseLinear.from_dense(w)
            else:
                module = formats.format_class(name).from_dense(w)
        except (PrunescopeError, ImportError):
            continue
        assert module.weight_bytes() == quantized_storage_bytes(w.shape, nnz, name, None), name


# ---------------------------------------------------------------------------------------------------------
# The model-level API: quantize in place, install QuantizedLinear, restore bit-exactly


def small_model() -> nn.Module:
    torch.manual_seed(3)
    model = nn.Sequential(nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 64, bias=False))
    with torch.no_grad():
        for layer in (model[0], model[2]):
            layer.weight[torch.rand(layer.weight.shape) < 0.5] = 0
    return model


@pytest.mark.parametrize("method", ["rtn", "gptq"])
def test_quantize_model_in_place_and_restore_bit_exact(method):
    model = small_model()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    names = ["0", "2"]
    batches = [torch.randn(8, 64) for _ in range(2)]
    hessians = collect_hessians(model, names, batches) if method == "gptq" else None
    options = QuantOptions("int4", group_size=32, method=method)
    record = quantize_model(model, names, options, hessians)
    for name in names:
        weight = model.get_submodule(name).weight
        assert torch.all(weight[before[f"{name}.weight"] == 0] == 0)  # pruned zeros stay zero
        assert torch.equal(weight, record.layers[name].quantized.dequantize())
    assert record.bits_per_weight() == pytest.approx(4 + 8 * (4 + 1) / 32)
    x = torch.randn(5, 64)
    fake = model(x)
    record.install(model)
    assert isinstance(model[0], QuantizedLinear) and isinstance(model[2], QuantizedLinear)
    assert torch.allclose(model(x), fake, atol=1e-5)
    record.restore(model)
    assert isinstance(model[0], nn.Linear)
    for key, value in model.state_dict().items():
        assert torch.equal(value, before[key]), key


def test_gpt2_conv1d_is_quantized_in_its_own_orientation():
    from transformers.pytorch_utils import Conv1D

    torch.manual_seed(4)
    model = nn.Sequential(Conv1D(48, 32))  # (in, out) weight: 32 -> 48
    before = model[0].weight.clone()
    hessians = collect_hessians(model, ["0"], [torch.randn(2, 8, 32)])
    record = quantize_model(model, ["0"], QuantOptions("int8", method="gptq"), hessians)
    assert record.layers["0"].quantized.shape == (48, 32)
    assert torch.equal(model[0].weight.T, record.layers["0"].quantized.dequantize())
    x = torch.randn(3, 32)
    fake = model(x)
    record.install(model)
    assert torch.allclose(model(x), fake, atol=1e-5)
    record.restore(model)
    assert isinstance(model[0], Conv1D) and torch.equal(model[0].weight, before)


def test_restore_after_spill(tmp_path):
    model = small_model()
    before = model[0].weight.clone()
    record = quantize_model(model, ["0"], QuantOptions("int8"))
    assert not torch.equal(model[0].weight, before)
    record.spill(tmp_path / "q.pt")
    assert record.nbytes == 0
    record.restore(model)
    assert torch.equal(model[0].weight, before)


# ---------------------------------------------------------------------------------------------------------
# Bad input: one-line PrunescopeErrors


def test_bad_inputs_are_one_line_errors(layer):
    w, h, _ = layer
    cases = [
        (lambda: QuantOptions("int3"), "unknown quantizer 'int3'"),
        (lambda: QuantOptions("int8", method="awq"), "unknown quantization method"),
        (lambda: QuantOptions("int4", group_size=0), "group size must be a positive integer"),
        (lambda: rtn_quantize(w, QuantOptions("int4", group_size=100)), "does not divide in_features 192"),
        (lambda: rtn_quantize(w[0], QuantOptions()), "expected a 2-D"),
        (lambda: rtn_quantize(w.to(torch.int32), QuantOptions()), "floating-point"),
        (lambda: gptq_quantize(w, h[:10, :10], QuantOptions(method="gptq")), "does not match"),
        (lambda: sparsegpt_gptq(w, h, 1.5, QuantOptions()), "sparsity must be in"),
        (lambda: sparsegpt_gptq(w, h, 0, QuantOptions(), prune_n=4, prune_m=2), "N:M pattern"),
        (lambda: sparsegpt_gptq(w, h, 0.5, QuantOptions(act_order=True)), "act-order"),
        (lambda: quantized_storage_bytes((4, 4), 3, "bsr", None), "no byte count for format 'bsr'"),
        (lambda: quantized_storage_bytes((4, 4), 30, "csr", None), "outside"),
        (lambda: quantize_model(small_model(), ["0"], QuantOptions(method="gptq")), "needs a calibration"),
        (lambda: quantize_model(small_model(), ["1"], QuantOptions()), "not a dense projection"),
        (lambda: parse_quantizers(" , "), "needs at least one"),
        (lambda: QuantizedLinear.from_dense(w, kernel="fast"), "unknown quantized kernel"),
    ]
    for call, message in cases:
        with pytest.raises(PrunescopeError, match=message) as info:
            call()
        assert "\n" not in str(info.value)


def test_parse_quantizers_and_labels():
    options = parse_quantizers("int8, int4,int8", group_size=64, method="gptq")
    assert [o.name for o in options] == ["int8", "int4"]
    assert [o.label for o in options] == ["int8-gptq", "int4-g64-gptq"]
    assert QuantOptions("int4").label == "int4" and QuantOptions("int4").bits == 4
    assert math.isclose(QuantOptions("int8").bits, 8)
