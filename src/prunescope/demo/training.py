"""The demo model's training recipe: `prunescope train-demo --out DIR`.

A small OPT trained from scratch on the train split of this interpreter's standard library (`demo.py` holds
the corpus, the split, the BOS convention and the held-out evaluation), with a byte-level BPE tokenizer
trained on the same split. Deterministic given the seed; checkpoints let an interrupted run resume with
the same learning-rate schedule.
"""

from __future__ import annotations

import json
import math
import os
import shlex
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import PrunescopeError
from .corpus import (
    BOS_ID,
    BOS_TOKEN,
    HELDOUT_FILE,
    METRICS_FILE,
    PAD_ID,
    PAD_TOKEN,
    UNIGRAM_FILE,
    _token_stream,
    evaluate_heldout,
    heldout_texts,
    split_modules,
    stdlib_documents,
)

DEFAULT_CONFIG: dict[str, Any] = {
    "vocab_size": 4096,
    "hidden_size": 256,
    "word_embed_proj_dim": 256,
    "num_hidden_layers": 4,
    "num_attention_heads": 4,
    "ffn_dim": 1024,
    "max_position_embeddings": 256,
    "do_layer_norm_before": True,
    # ~1.5 epochs over a few million tokens: too little training for dropout to pay for itself.
    "dropout": 0.0,
    "attention_dropout": 0.0,
    "activation_dropout": 0.0,
    "layerdrop": 0.0,
}


def _train_tokenizer(texts: list[str], vocab_size: int, max_length: int) -> Any:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    # add_prefix_space=False: source code's leading indentation must round-trip exactly.
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[PAD_TOKEN, BOS_TOKEN],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    assert tok.token_to_id(PAD_TOKEN) == PAD_ID and tok.token_to_id(BOS_TOKEN) == BOS_ID
    tok.post_processor = processors.TemplateProcessing(
        single=f"{BOS_TOKEN} $A", pair=f"{BOS_TOKEN} $A {BOS_TOKEN} $B", special_tokens=[(BOS_TOKEN, BOS_ID)]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=BOS_TOKEN,
        eos_token=BOS_TOKEN,
        pad_token=PAD_TOKEN,
        model_max_length=max_length,
    )


def _encode_stream(tokenizer: Any, texts: list[str]) -> np.ndarray:
    ids = _token_stream(tokenizer, texts)
    return ids.astype(np.uint16 if ids.max() < 2**16 else np.int32)


def _lr_at(step: int, total: int, warmup: int, peak: float, floor_ratio: float = 0.1) -> float:
    """Linear warmup, then cosine decay to ``floor_ratio * peak`` at ``total``."""
    if step < warmup:
        return peak * (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return peak * (floor_ratio + (1 - floor_ratio) * 0.5 * (1 + math.cos(math.pi * progress)))


def _atomic_save(obj: Any, path: Path) -> None:
    import torch

    tmp = path.with_suffix(".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def _dir_size(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def train_demo(
    out_dir: str | Path,
    seed: int = 0,
    minutes: float = 40.0,
    max_steps: int | None = None,
    resume: bool = True,
    threads: int | None = None,
    progress: bool = True,
    *,
    config_overrides: dict | None = None,
    max_documents: int | None = None,
    seqlen: int = 256,
    batch_size: int = 16,
    lr: float = 1e-3,
    weight_decay: float = 0.1,
    checkpoint_minutes: float = 3.0,
    checkpoint_steps: int | None = None,
    eval_max_windows: int | None = None,
    stop_after_steps: int | None = None,
    device: str = "cpu",
) -> Path:
    """Train the demo OPT model from scratch on this interpreter's stdlib; return the final model folder.

    Layout of ``out_dir``: ``work/`` (tokenizer, train token stream, split; reused on resume),
    ``checkpoints/last.pt`` (model, optimizer, step, planned total steps, RNG states) and ``model/`` (the
    final folder: fp16 weights, tokenizer, ``heldout_modules.json``, ``unigram.json``, ``metrics.json``,
    ``README.md``).

    Schedule. With ``max_steps`` the run is exactly that many steps. Otherwise the optimisation loop gets a
    ``minutes`` wall-clock budget: the first steps are timed and the total step count is fixed from the
    measured rate, then stored in the checkpoint so a resumed run keeps the same LR schedule. As a guard the
    loop also stops once it has used 1.25x the budget; the card then reports the steps actually run.

    ``stop_after_steps`` simulates an interruption (checkpoint, then return ``out_dir`` without a final
    model); it exists for tests. ``config_overrides``/``max_documents`` make tiny test runs possible.
    """
    import torch
    from tqdm.auto import tqdm
    from transformers import AutoTokenizer, OPTConfig, OPTForCausalLM

    t_start = time.perf_counter()
    out = Path(out_dir)
    work, ckpt_dir, final_dir = out / "work", out / "checkpoints", out / "model"
    work.mkdir(parents=True, exist_ok=True)
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    ckpt_path = ckpt_dir / "last.pt"
    if threads is not None:
        torch.set_num_threads(threads)
    n_threads = torch.get_num_threads()

    cfg_kwargs = {**DEFAULT_CONFIG, **(config_overrides or {})}
    seqlen = min(seqlen, cfg_kwargs["max_position_embeddings"])
    recipe = {
        "seed": seed,
        "config": cfg_kwargs,
        "max_documents": max_documents,
        "seqlen": seqlen,
        "batch_size": batch_size,
        "lr": lr,
        "weight_decay": weight_decay,
        "python": sys.version.split()[0],
    }

    # ---- data: the split and tokenizer are cached in work/ so a resumed run trains on identical ids
    docs = stdlib_documents()
    names = list(docs)[:max_documents] if max_documents else list(docs)
    train_names, held_names = split_modules(names, seed=seed)
    prep_file = work / "prep.json"
    prep = json.loads(prep_file.read_text()) if prep_file.is_file() else None
    if prep is None or prep["recipe"] != recipe or not resume:
        train_texts = [docs[n] for n in train_names]
        tokenizer = _train_tokenizer(train_texts, cfg_kwargs["vocab_size"], seqlen)
        tokenizer.save_pretrained(work / "tokenizer")
        stream = _encode_stream(tokenizer, train_texts)
        np.save(work / "train_ids.npy", stream)
        held_tokens = int(len(_token_stream(tokenizer, [docs[n] for n in held_names])))
        prep = {
            "recipe": recipe,
            "train_modules": train_names,
            "heldout_modules": held_names,
            "corpus": {
                "train": {
                    "documents": len(train_names),
                    "characters": sum(len(docs[n]) for n in train_names),
                    "tokens": int(len(stream)),
                },
                "heldout": {
                    "documents": len(held_names),
                    "characters": sum(len(docs[n]) for n in held_names),
                    "tokens": held_tokens,
                },
            },
        }
        prep_file.write_text(json.dumps(prep, indent=1))
        if ckpt_path.exists():
            ckpt_path.unlink()  # a checkpoint of another recipe must not be resumed
    tokenizer = AutoTokenizer.from_pretrained(work / "tokenizer")
    stream = torch.from_numpy(np.load(work / "train_ids.npy").astype(np.int64))
    counts = np.bincount(stream.numpy(), minlength=len(tokenizer)).tolist()

    # ---- model, optimizer, state
    config = OPTConfig(
        **cfg_kwargs, pad_token_id=PAD_ID, bos_token_id=BOS_ID, eos_token_id=BOS_ID, tie_word_embeddings=True
    )
    if len(tokenizer) != config.vocab_size:
        raise PrunescopeError(f"tokenizer has {len(tokenizer)} tokens, config expects {config.vocab_size}")
    torch.manual_seed(seed)
    # The weights are initialised on the CPU whatever the device, so a seed gives the same start anywhere.
    model = OPTForCausalLM(config).to(device)
    decay = [p for n, p in model.named_parameters() if p.dim() >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.dim() < 2]
    optim = torch.optim.AdamW(
        [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=lr,
        betas=(0.9, 0.95),
    )
    rng = np.random.Generator(np.random.PCG64(seed))
    step, total_steps, tokens_seen, train_seconds, loss_ema = 0, max_steps, 0, 0.0, None
    if resume and ckpt_path.is_file():
        state = torch.load(ckpt_path, weights_only=False, map_location=device)
        model.load_state_dict(state["model"])
        optim.load_state_dict(state["optim"])
        rng.bit_generator.state = state["numpy_rng"]
        torch.set_rng_state(state["torch_rng"].cpu())
        step, total_steps = state["step"], state["total_steps"]
        tokens_seen, train_seconds, loss_ema = state["tokens_seen"], state["train_seconds"], state["loss_ema"]
        if progress:
            print(f"resuming from {ckpt_path} at step {step}/{total_steps}", file=sys.stderr)

    def save_checkpoint() -> None:
        _atomic_save(
            {
                "model": model.state_dict(),
                "optim": optim.state_dict(),
                "numpy_rng": rng.bit_generator.state,
                "torch_rng": torch.get_rng_state(),
                "step": step,
                "total_steps": total_steps,
                "tokens_seen": tokens_seen,
                "train_seconds": train_seconds,
                "loss_ema": loss_ema,
                "recipe": recipe,
            },
            ckpt_path,
        )

    # ---- training loop
    budget_s = minutes * 60.0
    calib_from = step + 3  # time 20 steps after the first 3, which pay for allocator warm-up
    calib_to = calib_from + 20
    calib_t0 = None
    # Warmup must not depend on the planned total: it starts before the timing plan exists.
    warmup = 100 if max_steps is None else max(1, min(100, max_steps // 10))
    model.train()
    bar = tqdm(total=total_steps, initial=step, disable=not progress, desc="train-demo", dynamic_ncols=True)
    last_ckpt = time.perf_counter()
    n_pos = len(stream) - seqlen
    while total_steps is None or step < total_steps:
        t0 = time.perf_counter()
        if total_steps is None:
            if step == calib_from:
                calib_t0 = t0
            elif step == calib_to:
                sec_per_step = (t0 - calib_t0) / (calib_to - calib_from)
                total_steps = max(calib_to + 1, int(budget_s / sec_per_step))
                bar.total = total_steps
                bar.refresh()
        # The total is only needed once warmup ends, and the plan is made well before that.
        cur_lr = _lr_at(step, total_steps or 10**9, warmup, lr)
        for group in optim.param_groups:
            group["lr"] = cur_lr
        starts = rng.integers(0, n_pos + 1, size=batch_size)
        batch = torch.stack([stream[s : s + seqlen] for s in starts])
        batch = batch.to(device)
        loss = model(input_ids=batch, labels=batch).loss
        optim.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optim.step()
        step += 1
        tokens_seen += batch.numel()
        train_seconds += time.perf_counter() - t0
        loss_value = loss.item()
        loss_ema = loss_value if loss_ema is None else 0.98 * loss_ema + 0.02 * loss_value
        bar.update(1)
        bar.set_postfix(loss=f"{loss_ema:.3f}", lr=f"{cur_lr:.2e}", refresh=False)
        due = (checkpoint_steps and step % checkpoint_steps == 0) or (
            time.perf_counter() - last_ckpt > checkpoint_minutes * 60
        )
        stopping = stop_after_steps is not None and step >= stop_after_steps
        if due or stopping:
            save_checkpoint()
            last_ckpt = time.perf_counter()
        if stopping:
            bar.close()
            return out
        if max_steps is None and train_seconds > 1.25 * budget_s:
            break  # guard against a machine that slowed down after the plan was made
    bar.close()
    planned_steps = total_steps
    save_checkpoint()

    # ---- final folder: fp16 weights + tokenizer + split + unigram stats, then measure from what was saved
    if final_dir.exists():
        for p in final_dir.iterdir():
            p.unlink()
    final_dir.mkdir(parents=True, exist_ok=True)
    model.to("cpu", torch.float16).save_pretrained(final_dir, safe_serialization=True)
    tokenizer.save_pretrained(final_dir)
    (final_dir / HELDOUT_FILE).write_text(
        json.dumps(
            {"seed": seed, "split": "top-level module name", "modules": prep["heldout_modules"]}, indent=1
        )
    )
    (final_dir / UNIGRAM_FILE).write_text(
        json.dumps({"source": "train split token stream", "counts": counts}, separators=(",", ":"))
    )
    saved = OPTForCausalLM.from_pretrained(final_dir, dtype=torch.float32)
    saved_tok = AutoTokenizer.from_pretrained(final_dir)
    t_eval = time.perf_counter()
    figures = evaluate_heldout(
        saved, saved_tok, heldout_texts(final_dir), seqlen=seqlen, max_windows=eval_max_windows
    )
    eval_seconds = time.perf_counter() - t_eval

    import transformers

    call = f"train_demo({str(out)!r}, seed={seed}, minutes={minutes}" + (
        f", max_steps={max_steps}" if max_steps is not None else ""
    )
    call += f", threads={threads})" if threads is not None else ")"
    metrics = {
        "heldout": figures,
        "eval_seconds": round(eval_seconds, 1),
        "steps": step,
        "planned_steps": planned_steps,
        "tokens_seen": tokens_seen,
        "train_seconds": round(train_seconds, 1),
        "total_seconds_this_run": round(time.perf_counter() - t_start, 1),
        "threads": n_threads,
        "seed": seed,
        "recipe": recipe,
        "corpus": prep["corpus"],
        "parameters": sum(p.numel() for p in saved.parameters()),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "command": {
            "python": f"from prunescope.demo.training import train_demo; {call}",
            "cli": f"prunescope train-demo --out {shlex.quote(str(out))} --seed {seed} --minutes {minutes}",
        },
    }
    (final_dir / METRICS_FILE).write_text(json.dumps(metrics, indent=1))
    (final_dir / "README.md").write_text(_model_card(metrics))
    metrics["size_bytes"] = _dir_size(final_dir)
    (final_dir / METRICS_FILE).write_text(json.dumps(metrics, indent=1))
    return final_dir


def _model_card(m: dict) -> str:
    c, h, cfg = m["corpus"], m["heldout"], m["recipe"]["config"]

    def fmt(x: float | None, spec: str) -> str:
        return "n/a" if x is None else format(x, spec)

    guard = ""
    if m["planned_steps"] is None:  # a budget shorter than the timing steps that plan the total
        guard = "; the time budget ran out during the timing steps, before a total was planned"
    elif m["steps"] < m["planned_steps"]:
        guard = (
            "; the loop stopped at its 1.25x time guard before the planned total because the machine ran"
            " slower than during the timing steps, so the LR had not fully decayed"
        )
    return f"""# prunescope demo model

A small OPT causal language model trained from scratch on Python source code: the standard library of
the interpreter that trained it (Python {m["recipe"]["python"]}). It exists so that `prunescope --model
demo` has a real, trained model that fits in the package. All figures below were measured by
`prunescope.demo.evaluate_heldout` at the end of training and written by the recipe, not by hand
(`metrics.json` holds them too).

## Recipe

```
HF_HUB_OFFLINE=1 python -c "{m["command"]["python"]}"
```

CLI equivalent: `{m["command"]["cli"]}` (this run used {m["threads"]} torch thread(s)).

- seed {m["seed"]}; everything (split, tokenizer, init, window sampling) derives from it
- architecture: `OPTForCausalLM`, vocab {cfg["vocab_size"]}, hidden {cfg["hidden_size"]},
  {cfg["num_hidden_layers"]} layers, {cfg["num_attention_heads"]} heads, FFN {cfg["ffn_dim"]},
  context {cfg["max_position_embeddings"]}, tied embeddings, pre-LayerNorm, no dropout;
  {m["parameters"]:,} parameters, stored as fp16 safetensors
- tokenizer: byte-level BPE (`tokenizers`), trained on the train split only; specials `<pad>` (0) and
  `</s>` (1, BOS = EOS). As in OPT, the tokenizer prepends `</s>` to every text; training concatenates
  documents as `</s> doc1 </s> doc2 ...`
- data: random windows of {m["recipe"]["seqlen"]} tokens from the train token stream, batch
  {m["recipe"]["batch_size"]}
- optimiser: AdamW (betas 0.9/0.95, weight decay {m["recipe"]["weight_decay"]} on matrices), peak LR
  {m["recipe"]["lr"]}, linear warmup then cosine decay to 10 %, gradient clipping at 1.0. The step count was
  planned from the speed measured in the first steps to fit the time budget.

## Corpus

The `*.py` files of the standard library, without `site-packages` and the test suites (`test/`,
`tests/`, `idle_test/`), split by top-level module name with seed {m["seed"]} (`heldout_modules.json`
lists the held-out modules; their text is read from the running interpreter, nothing of it is stored).

| split | documents | characters | tokens |
|---|---:|---:|---:|
| train | {c["train"]["documents"]:,} | {c["train"]["characters"]:,} | {c["train"]["tokens"]:,} |
| held-out | {c["heldout"]["documents"]:,} | {c["heldout"]["characters"]:,} | {c["heldout"]["tokens"]:,} |

## Training

- steps: {m["steps"]:,} (planned {fmt(m["planned_steps"], ",")}){guard}
- tokens seen: {m["tokens_seen"]:,}
- training time: {m["train_seconds"] / 60:.1f} min of optimisation on {m["threads"]} CPU thread(s)
- torch {m["torch"]}, transformers {m["transformers"]}

## Held-out evaluation

{h["windows"]} non-overlapping windows of {h["seqlen"]} tokens ({h["tokens"]:,} predicted tokens) over the
held-out modules. The unigram baseline predicts from train-split token frequencies (`unigram.json`,
add-one smoothed).

| | loss (nats/token) | perplexity | next-token top-1 |
|---|---:|---:|---:|
| this model | {h["loss"]:.4f} | {h["perplexity"]:.2f} | {h["top1_accuracy"]:.2%} |
| unigram baseline | {fmt(h["unigram_loss"], ".4f")} | {fmt(h["unigram_perplexity"], ".2f")} \
| {fmt(h["unigram_top1_accuracy"], ".2%")} |

Figures depend on the Python version whose stdlib is read at evaluation time.
"""
