"""Group classification and the default prunable set, per architecture, on tiny random models."""

from __future__ import annotations

import pytest
import torch
import transformers as tf

from prunescope import PrunescopeError
from prunescope.layers import parameter_modules, prunable_layers

# The dimensions most tiny configs share: 2 blocks of width 16, 2 heads, MLP width 32, a 64-token vocabulary.
BASE = dict(vocab_size=64, hidden_size=16, num_hidden_layers=2, num_attention_heads=2)
COMMON = dict(BASE, intermediate_size=32, max_position_embeddings=32)
GQA = dict(COMMON, num_key_value_heads=1)

# Per architecture: the model class and its config.
MODELS = {
    "opt": (
        tf.OPTForCausalLM,
        lambda: tf.OPTConfig(**BASE, ffn_dim=32, max_position_embeddings=32, word_embed_proj_dim=16),
    ),
    "gpt2": (
        tf.GPT2LMHeadModel,
        lambda: tf.GPT2Config(vocab_size=64, n_embd=16, n_layer=2, n_head=2, n_positions=32),
    ),
    "gpt_neox": (tf.GPTNeoXForCausalLM, lambda: tf.GPTNeoXConfig(**COMMON)),
    "llama": (tf.LlamaForCausalLM, lambda: tf.LlamaConfig(**GQA)),
    "mistral": (tf.MistralForCausalLM, lambda: tf.MistralConfig(**GQA)),
    "qwen2": (tf.Qwen2ForCausalLM, lambda: tf.Qwen2Config(**GQA)),
    "phi": (tf.PhiForCausalLM, lambda: tf.PhiConfig(**COMMON)),
    "falcon": (tf.FalconForCausalLM, lambda: tf.FalconConfig(**BASE)),
    "bloom": (
        tf.BloomForCausalLM,
        lambda: tf.BloomConfig(vocab_size=64, hidden_size=16, n_layer=2, n_head=2),
    ),
}


def _build(name: str):
    model_class, config = MODELS[name]
    torch.manual_seed(0)
    return model_class(config())


# Per architecture: the module-name suffixes of block 0 expected in each linear group, and the lm_head name.
EXPECTED = {
    "opt": (
        {"self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.out_proj"},
        {"fc1", "fc2"},
    ),
    "gpt2": ({"attn.c_attn", "attn.c_proj"}, {"mlp.c_fc", "mlp.c_proj"}),
    "gpt_neox": (
        {"attention.query_key_value", "attention.dense"},
        {"mlp.dense_h_to_4h", "mlp.dense_4h_to_h"},
    ),
    "llama": (
        {"self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj"},
        {"mlp.gate_proj", "mlp.up_proj", "mlp.down_proj"},
    ),
    "phi": (
        {"self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.dense"},
        {"mlp.fc1", "mlp.fc2"},
    ),
    "falcon": (
        {"self_attention.query_key_value", "self_attention.dense"},
        {"mlp.dense_h_to_4h", "mlp.dense_4h_to_h"},
    ),
    "bloom": (
        {"self_attention.query_key_value", "self_attention.dense"},
        {"mlp.dense_h_to_4h", "mlp.dense_4h_to_h"},
    ),
}
EXPECTED["mistral"] = EXPECTED["qwen2"] = EXPECTED["llama"]


@pytest.mark.parametrize("arch", sorted(EXPECTED))
def test_groups_and_prunable_set(arch):
    model = _build(arch)
    groups: dict[str, set[str]] = {}
    for info in parameter_modules(model):
        groups.setdefault(info.group, set()).add(info.name)
    attention, mlp = EXPECTED[arch]

    def suffixes(group: str) -> set[str]:
        names = {n for n in groups.get(group, ()) if ".0." in n}
        prefix = min(names, key=len).split(".0.")[0] + ".0."
        return {n.removeprefix(prefix) for n in names}

    assert suffixes("attention_linear") == attention
    assert suffixes("mlp_linear") == mlp
    assert len(groups["lm_head"]) == 1
    assert groups["embedding"], "token embedding must be classified"
    assert groups["norm"], "layer norms must be classified"
    # No projection lands in 'other' for these families.
    assert not any(isinstance(model.get_submodule(n), torch.nn.Linear) for n in groups.get("other", ()))
    prunable = prunable_layers(model)
    assert set(prunable) == groups["attention_linear"] | groups["mlp_linear"]
    assert all(n not in prunable for n in groups["lm_head"] | groups["embedding"] | groups["norm"])


def test_include_exclude_globs():
    model = _build("llama")
    only_mlp = prunable_layers(model, include=["*.mlp.*"])
    assert only_mlp and all(".mlp." in n for n in only_mlp)
    no_down = prunable_layers(model, exclude=["*down_proj"])
    assert not any(n.endswith("down_proj") for n in no_down)
    assert len(no_down) == len(prunable_layers(model)) - 2
    untied = _build("llama")  # Llama does not tie by default: lm_head may be pruned when asked for
    assert "lm_head" in prunable_layers(untied, include=["lm_head"])


def test_no_match_and_tied_lm_head_are_errors():
    model = _build("opt")
    with pytest.raises(PrunescopeError, match="no prunable layer matched"):
        prunable_layers(model, include=["*nothing*"])
    with pytest.raises(PrunescopeError, match="shares its weight"):
        prunable_layers(model, include=["lm_head"])
