"""Layer-level and model-level latency of the dense, masked and sparse-format variants of a pruned model.

Every comparison follows the same steps: build each variant from the same pruned weights, run it on the
same inputs, check its output against the masked (dense-kernel, pruned-weight) reference BEFORE timing,
then time the variants that passed in interleaved rounds (see `hardware.timing`; on a CUDA device with
CUDA events, and "cold" flushes the GPU's L2). A variant that cannot run here is reported
`unsupported: reason`; one whose output differs is reported `error: ...`; neither is timed.

Pruning is the caller's: these functions take the pruned model and its dense layers (`BenchSubject`).
Every model-level variant but `masked` (the pruned model itself) is the pruned model with its pruned
projections swapped for the variant's modules, sharing every other tensor (`swapped_copy`): the model is
held once, plus per-layer modules.
"""

from __future__ import annotations

import copy
import inspect
import math
import os
import platform
import re
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from functools import partial

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import PrunescopeError, first_line
from ..formats import native
from ..hardware.machine import cache_flusher, last_level_cache, machine_facts, tensor_bytes
from ..hardware.timing import (
    Candidate,
    Clock,
    Timing,
    TimingPolicy,
    check_cache_mode,
    cold_candidate,
    measure_interleaved,
    timer_for,
    with_eviction,
)
from ..layers import linear_shape, linear_weight, set_module
from ..structure import layer_table
from ..util.model_config import FALLBACK_CONTEXT, context_length
from ..util.records import pick
from .variants import (
    BASELINE,
    LAYER_TOLERANCE,
    MASKED,
    MODEL_TOLERANCE,
    Unsupported,
    build_module,
    check_support,
    layer_theory,
    relative_error,
)

OK = "ok"


@dataclass
class LatencyConfig:
    """What to measure. `formats` always starts with the `dense` baseline (see `variants.parse_formats`)."""

    formats: list[str] = field(default_factory=lambda: [BASELINE, MASKED, "csr"])
    tokens: list[int] = field(default_factory=lambda: [1, 8, 64, 512])
    block_size: int = 16
    prefill_grid: list[tuple[int, int]] = field(default_factory=lambda: [(1, 128), (4, 128)])
    decode_batches: list[int] = field(default_factory=lambda: [1, 8])
    decode_tokens: int = 16
    decode_prompt: int = 16
    policy: TimingPolicy = field(default_factory=TimingPolicy)
    layer_level: bool = True
    model_level: bool = True
    seed: int = 0
    # "cold": every timed call reads weights that are in no cache, as decode of a model larger than the
    # last-level cache does (rotated copies, or an eviction before each sample); "hot": one copy, repeated.
    cache: str = "cold"
    # Token counts `auto` times each layer at: decode first, then the prefill size it must not lose.
    auto_tokens: tuple[int, ...] = (1, 64)

    def __post_init__(self) -> None:
        if BASELINE not in self.formats:
            self.formats = [BASELINE, *self.formats]
        self.cache = check_cache_mode(self.cache)
        self.auto_tokens = tuple(self.auto_tokens)
        if not self.auto_tokens or any(n < 1 for n in self.auto_tokens):
            raise PrunescopeError("auto's token counts must be >= 1")
        if any(n < 1 for n in self.tokens) or any(b < 1 or s < 1 for b, s in self.prefill_grid):
            raise PrunescopeError("token counts, batch sizes and sequence lengths must be >= 1")
        if any(b < 1 for b in self.decode_batches) or self.decode_tokens < 1 or self.decode_prompt < 1:
            raise PrunescopeError("decode batches, decode tokens and the decode prompt must be >= 1")

    def describe(self) -> dict:
        return asdict(self)

    @property
    def settings(self) -> dict:
        """What a format may take as options (each takes the ones it declares: BSR `block_size`, auto
        `n_tokens` and `cache`)."""
        return {"block_size": self.block_size, "n_tokens": self.auto_tokens, "cache": self.cache}


def _blas_info() -> str:
    match = re.search(r"BLAS_INFO=([^,\s]+)", torch.__config__.show())
    return match.group(1) if match else "unknown"


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as handle:
            for line in handle:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def environment(device: torch.device, dtype: torch.dtype, cache: str | None = None) -> dict:
    """Everything a latency figure depends on besides the code: threads, BLAS, CPU/GPU, caches, versions."""
    env = {
        "machine": machine_facts(dtype, cache, isa=native.resolve_kernel(), device=device),
        "cache": cache,
        "device": str(device),
        "dtype": str(dtype).removeprefix("torch."),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "interop_threads": torch.get_num_interop_threads(),
        "cpu": _cpu_name(),
        "cpu_count": os.cpu_count(),
        "blas": _blas_info(),
        "mkl_available": torch.backends.mkl.is_available(),
        "mkldnn_available": torch.backends.mkldnn.is_available(),
        "mkldnn_enabled": bool(torch.backends.mkldnn.enabled),
        "openmp_available": torch.backends.openmp.is_available(),
        "omp_num_threads_env": os.environ.get("OMP_NUM_THREADS"),
        # PyTorch's own switch: tensors of 2 MB and more on transparent huge pages, dense and sparse alike.
        # Fewer TLB misses speed up every weight stream and steady per-allocation variance (measured ~10 %).
        "thp_mem_alloc": os.environ.get("THP_MEM_ALLOC_ENABLE") == "1",
        # Other processes on the machine are the main source of noise; say how busy it was.
        "load_average_1m": os.getloadavg()[0] if hasattr(os, "getloadavg") else None,
        "platform": platform.platform(),
        "parallel_info": torch.__config__.parallel_info(),
        "torch_config": torch.__config__.show(),
    }
    if device.type == "cuda":
        env["gpu"] = torch.cuda.get_device_name(device)
        env["cuda"] = torch.version.cuda
        env["timer"] = "cuda events"
    else:
        env["timer"] = "host clock"
    return env


def _timing_columns(timing: Timing | None) -> dict:
    if timing is None:
        return dict.fromkeys(("median_s", "min_s", "max_s", "mean_s", "stdev_s"), math.nan) | {
            "repeats": 0,
            "inner": 0,
        }
    return timing.as_dict()


def _ratios(row: dict, dense_median: float) -> dict:
    """Measured speedup vs dense and how it compares with the two theoretical ratios."""
    speedup = dense_median / row["median_s"] if row["median_s"] and row["median_s"] > 0 else math.nan
    return {
        "dense_median_s": dense_median,
        "speedup": speedup,
        "measured_over_flop": speedup / row["flop_theory"],
        "measured_over_bytes": speedup / row["byte_theory"],
    }


# ----------------------------------------------------------------------------------------------- layers


def distinct_shapes(model: nn.Module, names: list[str]) -> dict[tuple[int, int], list[str]]:
    """(out, in) -> the pruned layers of that shape, in model order."""
    shapes: dict[tuple[int, int], list[str]] = {}
    for name in names:
        shapes.setdefault(linear_shape(model.get_submodule(name)), []).append(name)
    return shapes


def _expected(module, x: torch.Tensor, reference: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """What a variant must compute: the pruned layer's output, or for a format that changes the values it
    stores (bitmask-int8 quantizes them) the output of its own `to_dense()` weight, so the check is on the
    kernel, not on the quantization error."""
    if module is None or getattr(module, "lossless", True):
        return reference
    weight = module.to_dense().double()
    return F.linear(x.double(), weight, bias.double() if bias is not None else None)


def _build_layer_variants(
    names: list[str],
    pruned: torch.Tensor,
    bias: torch.Tensor | None,
    settings: dict | None = None,
) -> dict[str, nn.Module | str | None]:
    """Per format: its module, None for the dense-kernel variants, or the `unsupported: ...` status."""
    built: dict[str, nn.Module | str | None] = {}
    for name in names:
        if name in (BASELINE, MASKED):
            built[name] = None
            continue
        try:
            built[name] = build_module(name, pruned, bias, settings).eval()
        except Unsupported as reason:
            built[name] = f"unsupported: {reason}"
        except (RuntimeError, ValueError) as error:
            built[name] = f"error: build failed ({first_line(error)})"
    return built


@torch.inference_mode()
def bench_weight(
    dense_weight: torch.Tensor,
    pruned_weight: torch.Tensor,
    bias: torch.Tensor | None,
    config: LatencyConfig,
    clock: Clock | None = None,
    sync: Callable[[], None] | None = None,
    build: Callable[..., dict] | None = None,
) -> list[dict]:
    """Rows (format x token count) for one (out, in) weight: `dense` runs F.linear on `dense_weight`,
    the others run the pruned weight; outputs are checked against F.linear(x, pruned) in float64.
    `clock`/`sync` replace the device's timer (CUDA events on CUDA, else the host clock)."""
    device, dtype = pruned_weight.device, pruned_weight.dtype
    timer = timer_for(device, clock, sync)
    out_features, in_features = pruned_weight.shape
    if build is None:
        build = partial(_build_layer_variants, settings=config.settings)
    built = build(config.formats, pruned_weight, bias)
    llc = last_level_cache(device)
    tolerance = LAYER_TOLERANCE.get(dtype, 1e-2)
    sparsity = 1.0 - int(torch.count_nonzero(pruned_weight)) / pruned_weight.numel()
    generator = torch.Generator(device="cpu").manual_seed(config.seed)
    rows = []
    for n in config.tokens:
        # One input per token count, shared by every format.
        x = torch.randn(n, in_features, generator=generator, dtype=torch.float32).to(device, dtype)
        reference = F.linear(x.double(), pruned_weight.double(), bias.double() if bias is not None else None)
        calls = {
            BASELINE: lambda x=x: F.linear(x, dense_weight, bias),
            MASKED: lambda x=x: F.linear(x, pruned_weight, bias),
        }
        status: dict[str, str] = {}
        errors: dict[str, float] = {}
        candidates: dict[str, Candidate] = {}
        for name, module in built.items():
            if isinstance(module, str):
                status[name] = module
                continue
            call = calls[name] if module is None else (lambda x=x, module=module: module(x))
            if name != BASELINE:
                try:
                    errors[name] = relative_error(call(), _expected(module, x, reference, bias))
                except (RuntimeError, NotImplementedError) as error:
                    status[name] = f"unsupported: forward failed ({first_line(error)})"
                    continue
                if not errors[name] <= tolerance:
                    status[name] = f"error: output differs from dense (rel err {errors[name]:.2e})"
                    continue
            status[name] = OK
            candidates[name] = _layer_candidate(
                config.cache, llc, call, _copier(name, module, x, dense_weight, pruned_weight, bias), device
            )
        timings = measure_interleaved(candidates, config.policy, timer=timer)
        dense_median = timings[BASELINE].median if BASELINE in timings else math.nan
        for name, module in built.items():
            row = {
                "level": "layer",
                "shape": f"{out_features}x{in_features}",
                "out_features": out_features,
                "in_features": in_features,
                "n": n,
                "format": name,
                "status": status[name],
                "sparsity": sparsity,
                "max_rel_err": errors.get(name, math.nan),
                **_timing_columns(timings.get(name)),
                **layer_theory(
                    module if not isinstance(module, str) else None, out_features, in_features, dtype, bias
                ),
            }
            rows.append(row | _ratios(row, dense_median))
    return rows


def _module_bytes(module: nn.Module) -> int:
    return tensor_bytes([*module.parameters(), *module.buffers()])


def _copier(name, module, x, dense_weight, pruned_weight, bias) -> tuple[Callable[[], Callable], list]:
    """(make, tensors): `make()` returns the variant's call on a fresh copy of `tensors`, its weights."""
    if module is None:
        weight = dense_weight if name == BASELINE else pruned_weight

        def make_linear() -> Callable:
            w = weight.clone()
            return lambda: F.linear(x, w, bias)

        return make_linear, [weight]

    def make_module() -> Callable:
        m = module.clone()
        return lambda: m(x)

    return make_module, [*module.parameters(), *module.buffers()]


def _layer_candidate(
    cache: str, llc: int, call: Callable, copier: tuple[Callable, list], device: torch.device
) -> Candidate:
    if cache == "hot":
        return Candidate(call)
    make, tensors = copier
    calls = iter([call])  # the first copy is the variant itself

    def first_then_copies() -> Callable:
        return next(calls, None) or make()

    # the device, not the tensors, says which cache to flush: a format may hold its weight outside its
    # parameters and buffers (semi-structured keeps a tensor subclass as a plain attribute)
    flush = cache_flusher(tensors, llc, native.flush_cache, device=device)
    return cold_candidate(first_then_copies, tensor_bytes(tensors), llc, flush)


@dataclass
class BenchSubject:
    """What a layer- or model-level benchmark times: the pruned model's `names` (and their formats)
    against the same layers dense, under `config`; `clock` / `sync` replace the timer's (tests),
    `on_step` hears each step.

    `dense_layer(name)` gives the dense projection `name`: a dense model's `get_submodule`, or a layer
    rebuilt from a prune record (then only the pruned layers exist twice, never the whole model)."""

    dense_layer: Callable[[str], nn.Module]
    pruned_model: nn.Module
    names: list[str]
    config: LatencyConfig
    clock: Clock | None = None
    sync: Callable[[], None] | None = None
    on_step: Callable[[str], None] | None = None


def bench_layers(subject: BenchSubject) -> list[dict]:
    """`bench_weight` on the first pruned layer of each distinct shape (they share kernels and sizes)."""
    pruned_model, config = subject.pruned_model, subject.config
    clock, sync, on_shape = subject.clock, subject.sync, subject.on_step
    names = subject.names
    rows = []
    for (out_features, in_features), members in distinct_shapes(pruned_model, names).items():
        if on_shape is not None:
            on_shape(f"{out_features}x{in_features}")
        first = members[0]
        pruned_module = pruned_model.get_submodule(first)
        dense_weight = linear_weight(subject.dense_layer(first)).detach().contiguous()
        pruned_weight = linear_weight(pruned_module).detach().contiguous()
        bias = getattr(pruned_module, "bias", None)
        bias = bias.detach() if bias is not None else None
        for row in bench_weight(dense_weight, pruned_weight, bias, config, clock, sync):
            rows.append({"layer": first, "layers_of_shape": len(members), **row})
    return rows


# ------------------------------------------------------------------------------------------------ model


def swapped_copy(model: nn.Module, names: list[str], layer: Callable[[str], nn.Module]) -> nn.Module:
    """`model` with each of its `names` sub-modules swapped for `layer(name)`, in a copy of its module tree
    that shares every parameter and buffer with `model` (no weight is copied; `model` is left alone)."""
    shared = {id(t): t for t in [*model.parameters(), *model.buffers()]}
    variant = copy.deepcopy(model, shared)  # the memo hands back the tensors themselves
    for name in names:
        set_module(variant, name, layer(name))
    return variant


def convert_copy(
    pruned_model: nn.Module, names: list[str], name: str, settings: dict | None = None
) -> nn.Module:
    """The pruned model with its `names` projections as `name` modules (`Unsupported` if not), sharing
    every other tensor (`swapped_copy`); `settings` as for `variants.build_module`."""

    def build(layer: str) -> nn.Module:
        module = pruned_model.get_submodule(layer)
        weight, bias = linear_weight(module).detach(), getattr(module, "bias", None)
        return build_module(name, weight, bias, settings)

    return swapped_copy(pruned_model, names, build)


def model_theory(model: nn.Module) -> dict:
    """Whole-model figures: stored bytes (tied weights once) and executed projection FLOPs per token."""
    table = layer_table(model)
    return {
        "stored_bytes": int(table["stored_bytes"].sum()),
        "flops_per_token": int(table["flops_per_token"].sum()),
    }


def _context_length(model: nn.Module) -> int:
    return context_length(getattr(model, "config", None), FALLBACK_CONTEXT)


def _cache_keyword(model: nn.Module) -> str:
    # transformers 5 renamed `past_key_values` to `cache`; older versions know only the former.
    return "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"


def _returned_cache(output) -> object:
    cache = getattr(output, "cache", None)
    return cache if cache is not None else output.past_key_values


def _decode_candidate(model: nn.Module, prompt: torch.Tensor, steps: torch.Tensor) -> Candidate:
    """Untimed: prefill the prompt into a fresh KV cache. Timed: one token per step through the cache."""
    keyword = _cache_keyword(model)
    state: dict = {}

    def setup() -> None:
        state["cache"] = _returned_cache(model(prompt, use_cache=True))

    def run() -> None:
        cache = state["cache"]
        for t in range(steps.shape[1]):
            cache = _returned_cache(model(steps[:, t : t + 1], use_cache=True, **{keyword: cache}))

    return Candidate(run, setup)


def _model_variants(subject: BenchSubject) -> dict[str, nn.Module | str]:
    """Per format its model, or why it has none: masked is the pruned model, the others share its tensors
    but the pruned projections' (dense: the dense layers; a format: its modules)."""
    pruned_model, names, config = subject.pruned_model, subject.names, subject.config
    variants: dict[str, nn.Module | str] = {}
    device, dtype = _device_dtype(pruned_model)
    for name in config.formats:
        if name == BASELINE:
            variants[name] = swapped_copy(pruned_model, names, subject.dense_layer)
        elif name == MASKED:
            variants[name] = pruned_model
        else:
            try:
                check_support(name, dtype, device)
                variants[name] = convert_copy(pruned_model, names, name, config.settings).eval()
            except Unsupported as reason:
                variants[name] = f"unsupported: {reason}"
            except (RuntimeError, ValueError) as error:
                variants[name] = f"error: build failed ({first_line(error)})"
    return variants


def _device_dtype(model: nn.Module) -> tuple[torch.device, torch.dtype]:
    parameter = next(model.parameters())
    return parameter.device, parameter.dtype


def _check_model_outputs(variants: dict[str, nn.Module | str], ids: torch.Tensor, dtype) -> dict:
    """Status and logits error of each variant against the masked model (same pruned weights)."""
    reference_model = variants.get(MASKED)
    status: dict[str, str] = {}
    errors: dict[str, float] = {}
    reference = (
        reference_model(ids, use_cache=False).logits if isinstance(reference_model, nn.Module) else None
    )
    tolerance = MODEL_TOLERANCE.get(dtype, 5e-2)
    for name, model in variants.items():
        if isinstance(model, str):
            status[name] = model
            continue
        if name in (BASELINE, MASKED) or reference is None:
            status[name] = OK
            continue
        try:
            expected = _stored_values_logits(model, ids)
            against = "masked" if expected is None else "its own dequantized weights"
            expected = reference if expected is None else expected
            errors[name] = relative_error(model(ids, use_cache=False).logits, expected)
        except (RuntimeError, NotImplementedError) as error:
            status[name] = f"unsupported: forward failed ({first_line(error)})"
            continue
        ok = errors[name] <= tolerance
        status[name] = OK if ok else f"error: logits differ from {against} (rel err {errors[name]:.2e})"
    return {"status": status, "errors": errors}


def _stored_values_logits(model: nn.Module, ids: torch.Tensor) -> torch.Tensor | None:
    """For a variant whose format changes the values it stores (bitmask-int8 quantizes), the logits of the
    same model with each such layer as a plain linear layer of its `to_dense()` weight: the check is then on
    the kernels, not on the quantization error. None when every layer is lossless (compare with masked)."""
    lossy = {
        name: module for name, module in model.named_modules() if getattr(module, "lossless", True) is False
    }
    if not lossy:
        return None
    for name, module in lossy.items():
        weight = module.to_dense()
        plain = nn.Linear(module.in_features, module.out_features, bias=module.bias is not None)
        plain.to(weight.device, weight.dtype)
        with torch.no_grad():
            plain.weight.copy_(weight)
            if module.bias is not None:
                plain.bias.copy_(module.bias)
        set_module(model, name, plain)
    try:
        return model(ids, use_cache=False).logits
    finally:
        for name, module in lossy.items():
            set_module(model, name, module)


def _model_rows(kind: str, shape: dict, tokens: int, variants, checks, timings, theories) -> list[dict]:
    dense_median = timings[BASELINE].median if BASELINE in timings else math.nan
    dense_theory = theories[BASELINE]
    rows = []
    for name in variants:
        theory = theories.get(name)
        row = {
            "level": "model",
            "kind": kind,
            **shape,
            "tokens": tokens,
            "format": name,
            "status": checks["status"][name],
            "max_rel_err": checks["errors"].get(name, math.nan),
            **_timing_columns(timings.get(name)),
            "stored_bytes": theory["stored_bytes"] if theory else math.nan,
            "flops_per_token": theory["flops_per_token"] if theory else math.nan,
            "flop_theory": dense_theory["flops_per_token"] / theory["flops_per_token"]
            if theory
            else math.nan,
            "byte_theory": dense_theory["stored_bytes"] / theory["stored_bytes"] if theory else math.nan,
        }
        row["tokens_per_s"] = (
            tokens / row["median_s"] if row["median_s"] and row["median_s"] > 0 else math.nan
        )
        rows.append(row | _ratios(row, dense_median))
    return rows


@torch.inference_mode()
def bench_model(subject: BenchSubject) -> list[dict]:
    """Prefill latency over the (batch x seqlen) grid and KV-cache decode throughput per batch size."""
    pruned_model, config = subject.pruned_model, subject.config
    clock, sync, on_step = subject.clock, subject.sync, subject.on_step
    device, dtype = _device_dtype(pruned_model)
    timer = timer_for(device, clock, sync)
    context = _context_length(pruned_model)
    longest = max([s for _, s in config.prefill_grid] + [config.decode_prompt + config.decode_tokens])
    if longest > context:
        raise PrunescopeError(f"{longest} positions requested; the model's context is {context}")
    vocab = pruned_model.get_input_embeddings().num_embeddings
    generator = torch.Generator(device="cpu").manual_seed(config.seed)

    def ids(batch: int, length: int) -> torch.Tensor:
        return torch.randint(0, vocab, (batch, length), generator=generator).to(device)

    variants = _model_variants(subject)
    theories = {n: model_theory(m) for n, m in variants.items() if isinstance(m, nn.Module)}
    checks = _check_model_outputs(variants, ids(1, min(16, context)), dtype)
    runnable = {n: m for n, m in variants.items() if checks["status"][n] == OK}
    llc = last_level_cache(device)
    # A model larger than twice the LLC (the L2 on a GPU) streams from memory by itself; a smaller one is
    # evicted first.
    evict = {n for n, m in runnable.items() if config.cache == "cold" and _module_bytes(m) <= 2 * llc}

    def flusher(model: nn.Module) -> Callable[[], None]:
        return cache_flusher([*model.parameters(), *model.buffers()], llc, native.flush_cache, device=device)

    flushers = {n: flusher(runnable[n]) for n in evict}

    def timed(name: str, candidate: Candidate) -> Candidate:
        return with_eviction(candidate, llc, flushers[name]) if name in evict else candidate

    rows = []
    for batch, seqlen in config.prefill_grid:
        if on_step is not None:
            on_step(f"prefill {batch}x{seqlen}")
        tokens_in = ids(batch, seqlen)
        candidates = {
            n: timed(n, Candidate(lambda m=m, t=tokens_in: m(t, use_cache=False)))
            for n, m in runnable.items()
        }
        timings = measure_interleaved(candidates, config.policy, timer=timer)
        shape = {"batch": batch, "seqlen": seqlen}
        rows += _model_rows("prefill", shape, batch * seqlen, variants, checks, timings, theories)
    for batch in config.decode_batches:
        if on_step is not None:
            on_step(f"decode batch {batch}")
        prompt, steps = ids(batch, config.decode_prompt), ids(batch, config.decode_tokens)
        candidates = {n: timed(n, _decode_candidate(m, prompt, steps)) for n, m in runnable.items()}
        timings = measure_interleaved(candidates, config.policy, timer=timer)
        shape = {"batch": batch, "seqlen": config.decode_tokens}
        rows += _model_rows(
            "decode", shape, batch * config.decode_tokens, variants, checks, timings, theories
        )
    return rows


# --------------------------------------------------------------------------------------------- together


@dataclass
class LatencyResult:
    layers: list[dict]
    model: list[dict]
    environment: dict
    config: dict
    info: dict = field(default_factory=dict)

    def as_dict(self) -> dict:
        return pick(self, "environment", "config", "info", "layers", "model")


def run_latency(
    dense_layer: Callable[[str], nn.Module],
    pruned_model: nn.Module,
    names: list[str],
    config: LatencyConfig,
    clock: Clock | None = None,
    sync: Callable[[], None] | None = None,
    on_step: Callable[[str], None] | None = None,
    info: dict | None = None,
) -> LatencyResult:
    """Layer-level then model-level benchmarks of `pruned_model` (and its formats) against its dense
    layers (`dense_layer`, see `BenchSubject`)."""
    device, dtype = _device_dtype(pruned_model)
    subject = BenchSubject(dense_layer, pruned_model, names, config, clock, sync, on_step)
    layers = bench_layers(subject) if config.layer_level else []
    model = bench_model(subject) if config.model_level else []
    env = environment(device, dtype, config.cache)
    return LatencyResult(layers, model, env, config.describe(), info or {})
