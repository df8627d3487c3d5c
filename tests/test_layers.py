"""Group classification and the default prunable set, per architecture, on tiny random models."""

from __future__ import annotations

import pytest
import torch
import transformers as tf

from prunescope import PrunescopeError
from prunescope.layers import parameter_modules, prunable_layers

SMALL = dict(vocab_size=64)


def _build(name: str):
    torch.manual_seed(0)
    if name == "opt":
        return tf.OPTForCausalLM(
            tf.OPTConfig(
                hidden_size=16,
                num_hidden_layers=2,
                ffn_dim=32,
                num_attention_heads=2,
                max_position_embeddings=32,
                word_embed_proj_dim=16,
                **SMALL,
            )
        )
    if name == "gpt2":
        return tf.GPT2LMHeadModel(tf.GPT2Config(n_embd=16, n_layer=2, n_head=2, n_positions=32, **SMALL))
    if name == "gpt_neox":
        return tf.GPTNeoXForCausalLM(
            tf.GPTNeoXConfig(
                hidden_size=16,
                num_hidden_layers=2,
                num_attention_heads=2,
                intermediate_size=32,
                max_position_embeddings=32,
                **SMALL,
            )
        )
    common = dict(
        hidden_size=16,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=32,
        max_position_embeddings=32,
        **SMALL,
    )
    if name == "llama":
        return tf.LlamaForCausalLM(tf.LlamaConfig(num_key_value_heads=1, **common))
    if name == "mistral":
        return tf.MistralForCausalLM(tf.MistralConfig(num_key_value_heads=1, **common))
    if name == "qwen2":
        return tf.Qwen2ForCausalLM(tf.Qwen2Config(num_key_value_heads=1, **common))
    if name == "phi":
        return tf.PhiForCausalLM(tf.PhiConfig(**common))
    if name == "falcon":
        return tf.FalconForCausalLM(
            tf.FalconConfig(hidden_size=16, num_hidden_layers=2, num_attention_heads=2, **SMALL)
        )
    if name == "bloom":
        return tf.BloomForCausalLM(tf.BloomConfig(hidden_size=16, n_layer=2, n_head=2, **SMALL))
    raise ValueError(name)


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
