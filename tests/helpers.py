"""Helpers shared by the tests: tiny random models built from configs (no download), token samples, the CLI,
a toy pruning plug-in."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

from prunescope.errors import PrunescopeError
from prunescope.pruning import PruneSpec
from prunescope.pruning.registry import MethodPlugin


def make_tokenizer(vocab_size: int = 320):
    """A byte-level BPE tokenizer trained on the builtin English texts: small, offline, deterministic."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    from prunescope.evaluation.corpus import builtin_texts

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=["<pad>", "</s>"],
        show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator(builtin_texts(), trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token="<pad>", eos_token="</s>", bos_token="</s>"
    )


def _dims(vocab_size: int, blocks: int, heads: int) -> dict:
    """What the tiny models share: width 32, a 64-token context."""
    return dict(
        vocab_size=vocab_size,
        hidden_size=32,
        num_hidden_layers=blocks,
        num_attention_heads=heads,
        max_position_embeddings=64,
    )


# `train_demo`'s keyword arguments that shrink the demo's recipe to a few seconds: a 1-block model on 30
# documents, 4 held-out windows.
TINY_DEMO_RECIPE = {
    "config_overrides": {
        "vocab_size": 300,
        "hidden_size": 32,
        "word_embed_proj_dim": 32,
        "num_hidden_layers": 1,
        "num_attention_heads": 2,
        "ffn_dim": 64,
        "max_position_embeddings": 64,
    },
    "max_documents": 30,
    "batch_size": 2,
    "seqlen": 64,
    "eval_max_windows": 4,
}


def tiny_opt(vocab_size: int = 320, seed: int = 0, *, blocks: int = 2, heads: int = 4):
    """A random OPT of `blocks` decoder blocks, hidden size 32, in eval mode, seeded."""
    from transformers import OPTConfig, OPTForCausalLM

    torch.manual_seed(seed)
    special = dict(pad_token_id=0, bos_token_id=1, eos_token_id=1)
    config = OPTConfig(**_dims(vocab_size, blocks, heads), ffn_dim=64, word_embed_proj_dim=32, **special)
    return OPTForCausalLM(config).eval()


def tiny_llama(vocab_size: int = 320, seed: int = 0):
    """A random 2-block Llama, grouped-query attention (2 heads, 1 key/value head), eval mode, seeded."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(**_dims(vocab_size, 2, 2), intermediate_size=64, num_key_value_heads=1)
    return LlamaForCausalLM(config).eval()


def magnitude_pruned_opt(sparsity: float = 0.5):
    """The default tiny OPT with its prunable layers pruned by magnitude: (model, layers)."""
    from prunescope.layers import prunable_layers
    from prunescope.pruning import prune

    model = tiny_opt()
    layers = prunable_layers(model)
    prune(model, layers, PruneSpec.create("magnitude", sparsity), progress=False)
    return model, layers


def token_samples(
    count: int = 4, seqlen: int = 24, seed: int = 1, vocab_size: int = 320
) -> list[torch.Tensor]:
    """`count` calibration samples of shape (1, seqlen): random token ids above the special ids 0, 1."""
    generator = torch.Generator().manual_seed(seed)
    return [torch.randint(2, vocab_size, (1, seqlen), generator=generator) for _ in range(count)]


def layer_inputs(model, layers: dict, samples: list[torch.Tensor]) -> dict[str, list[torch.Tensor]]:
    """Per layer, per sample: the (tokens, in) inputs the projection received, hooked on a forward pass."""
    seen: dict[str, list[torch.Tensor]] = {name: [] for name in layers}
    handles = [
        module.register_forward_hook(
            lambda mod, args, out, name=name: seen[name].append(
                args[0].detach().reshape(-1, args[0].shape[-1]).clone()
            )
        )
        for name, module in layers.items()
    ]
    with torch.no_grad():
        for sample in samples:
            model(input_ids=sample, use_cache=False)
    for handle in handles:
        handle.remove()
    return seen


# The command-line options of a quick calibrated run on the tiny model: 4 calibration samples of 16 tokens,
# then 200 tokens of evaluation in windows of 32.
QUICK_CALIBRATED = ["--calib-samples", "4", "--calib-seqlen", "16", "--seqlen", "32", "--max-tokens", "200"]


def flags(**options) -> list[str]:
    """CLI flags from keywords, in order: `max_tokens=200` gives "--max-tokens", "200"; True, bare."""
    argv = []
    for key, value in options.items():
        argv.append("--" + key.replace("_", "-"))
        if value is not True:
            argv.append(str(value))
    return argv


def run_cli(args: list[str], app=None, expect: int = 0):
    """Invoke the prunescope CLI (or `app`) with `args`; assert the exit code, showing the output if not."""
    from typer.testing import CliRunner

    if app is None:
        from prunescope.cli import app
    result = CliRunner().invoke(app, [str(arg) for arg in args])
    assert result.exit_code == expect, (result.output, result.exception)
    return result


def study_cli(*args, expect: int = 0):
    """`prunescope study --no-progress ARGS`, its exit code asserted."""
    return run_cli(["study", "--no-progress", *args], expect=expect)


def plain_percentile(values, q: float) -> float:
    """Sorted values, linear interpolation at f·(N−1) (llama.cpp's `percentile`)."""
    ordered = sorted(float(v) for v in values)
    position = q / 100.0 * (len(ordered) - 1)
    low = math.floor(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (position - low) * (ordered[high] - ordered[low])


# ------------------------------------------------------------------ a toy pruning method, as a plug-in
TOY = "largest"


@dataclass(frozen=True)
class LargestOptions:
    power: float = field(default=1.0, metadata={"help": "largest: scores are 1 / (1 + |W|^power)."})

    def __post_init__(self) -> None:
        if self.power <= 0:
            raise PrunescopeError(f"--largest-power must be > 0, got {self.power}")


def largest_scores(weight: torch.Tensor, spec: PruneSpec, index: int) -> torch.Tensor:
    """The reverse of magnitude (largest |W| pruned first), elementwise and >= 0 as the disk path needs."""
    magnitude = weight.detach().abs().to(torch.float32)
    return 1.0 / (1.0 + magnitude.pow(spec.method_options.power))


def toy_plugin() -> MethodPlugin:
    """The toy method plug-in: magnitude reversed, with one option `--largest-power`."""
    return MethodPlugin(
        name=TOY,
        cite="a test toy: magnitude reversed",
        options=LargestOptions,
        prefix="largest",
        natural_scope="layer",
        score=largest_scores,
    )


def skip_unless_kernel(kernel: str, built: bool, what: str) -> None:
    """Skip a native-kernel test where `kernel` cannot run: `what` is not built into the extension, or this
    CPU lacks the kernel's ISA ("torch" always runs)."""
    import pytest

    from prunescope.formats import native

    if kernel == "torch":
        return
    if not built:
        pytest.skip(f"{what} not built ({native.IMPORT_ERROR or 'old extension'})")
    if kernel not in native.available_kernels():
        pytest.skip(f"this CPU lacks {kernel}")
