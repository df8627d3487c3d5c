"""Random-weight checkpoints of any architecture, written tensor by tensor (tests and benchmarks).

The writing process never holds the model: each tensor is generated, appended to its shard and dropped.
`header_only=True` writes real safetensors headers over sparse files (no data blocks), enough to inspect a
7B-shaped checkpoint without 13 GB of disk.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path

import torch

from .model_map import meta_model
from .safetensors_io import DTYPES, ShardWriter, header_bound, plan_shards, write_index

_DTYPE_NAMES = {dtype: name for name, dtype in DTYPES.items()}


def _random_tensor(name: str, shape: tuple[int, ...], dtype: torch.dtype, generator: torch.Generator):
    if "norm" in name or "ln" in name.split(".")[-2:-1]:
        return torch.ones(shape, dtype=dtype) if name.endswith("weight") else torch.zeros(shape, dtype=dtype)
    return (torch.randn(shape, generator=generator) * 0.02).to(dtype)


def _write_tokenizer(folder: Path, vocab_size: int) -> None:
    """A small byte-level BPE tokenizer trained on the bundled English texts (no download needed)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    from ..evaluation.corpus import builtin_texts

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=min(vocab_size, 512),
        special_tokens=["<eos>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(builtin_texts(), trainer)
    PreTrainedTokenizerFast(tokenizer_object=tokenizer, eos_token="<eos>", pad_token="<eos>").save_pretrained(
        folder
    )


def write_random_checkpoint(
    folder: str | Path,
    config,
    dtype: torch.dtype = torch.float32,
    max_shard_bytes: int = 200 * 10**6,
    seed: int = 0,
    tokenizer: bool = True,
    header_only: bool = False,
) -> int:
    """Write config.json, shards (+ index) and a tokenizer for `config`; returns the tensor bytes."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    config.save_pretrained(folder)
    model = meta_model(folder)
    # named_parameters skips tied duplicates, like save_pretrained: a tied lm_head has no tensor.
    shapes = {name: tuple(p.shape) for name, p in model.named_parameters()}
    size = torch.tensor([], dtype=dtype).element_size()
    nbytes = {name: size * torch.Size(shape).numel() for name, shape in shapes.items()}
    plan = plan_shards(nbytes.items(), max_shard_bytes)
    generator = torch.Generator().manual_seed(seed)
    for file in plan.files:
        names = plan.names_in(file)
        if header_only:
            _write_header_only(folder / file, {n: shapes[n] for n in names}, dtype)
            continue
        writer = ShardWriter(folder / file, header_bound(names, {"format": "pt"}), {"format": "pt"})
        for name in names:
            writer.add(name, _random_tensor(name, shapes[name], dtype, generator))
        writer.close()
    write_index(folder, plan, sum(nbytes.values()))
    if tokenizer:
        _write_tokenizer(folder, config.vocab_size)
    return sum(nbytes.values())


def _write_header_only(path: Path, shapes: dict[str, tuple[int, ...]], dtype: torch.dtype) -> None:
    size = torch.tensor([], dtype=dtype).element_size()
    header, offset = {"__metadata__": {"format": "pt"}}, 0
    for name, shape in shapes.items():
        n = size * torch.Size(shape).numel()
        header[name] = {
            "dtype": _DTYPE_NAMES[dtype],
            "shape": list(shape),
            "data_offsets": [offset, offset + n],
        }
        offset += n
    text = json.dumps(header).encode()
    text += b" " * ((-len(text)) % 8)
    with path.open("wb") as f:
        f.write(struct.pack("<Q", len(text)) + text)
        f.truncate(8 + len(text) + offset)  # a sparse file: the data blocks are never allocated
