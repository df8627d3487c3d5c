"""Byte, parameter and FLOP accounting against hand-computed values for a tiny model."""

from __future__ import annotations

import torch
from transformers import OPTConfig, OPTForCausalLM

from prunescope import PruneSpec, prunable_layers, prune
from prunescope.formats import convert
from prunescope.structure import attention_score_flops, global_summary, group_table, layer_table

V, D, F, P = 20, 8, 16, 16  # vocab, hidden, ffn, positions


def _model():
    torch.manual_seed(0)
    config = OPTConfig(
        vocab_size=V,
        hidden_size=D,
        num_hidden_layers=1,
        ffn_dim=F,
        num_attention_heads=2,
        max_position_embeddings=P,
        word_embed_proj_dim=D,
        pad_token_id=0,
    )
    return OPTForCausalLM(config).eval()


def test_dense_accounting_by_hand():
    model = _model()
    table = layer_table(model).set_index("module")
    # OPT's learned positions have 2 extra rows; lm_head is tied to embed_tokens and counted once.
    expected_params = (
        V * D + (P + 2) * D + 2 * D + 4 * (D * D + D) + 2 * D + (F * D + F) + (D * F + D) + 2 * D
    )
    assert table["params"].sum() == expected_params == sum(p.numel() for p in model.parameters())
    assert table["stored_bytes"].sum() == 4 * expected_params
    assert (
        table.loc["lm_head", "params"] == 0
        and table.loc["lm_head", "tied_to"] == "model.decoder.embed_tokens"
    )
    # Embedding lookups are free; every projection, the tied lm_head included, costs 2·in·out per token.
    assert table.loc["model.decoder.embed_tokens", "flops_per_token"] == 0
    assert table["flops_per_token"].sum() == 4 * 2 * D * D + 2 * 2 * D * F + 2 * D * V
    assert attention_score_flops(model, 10) == 4 * 10 * D * 1


def test_groups_and_globals_add_up_from_the_layer_table():
    model = _model()
    layers = prunable_layers(model)
    prune(model, layers, PruneSpec.create("magnitude", 0.5), progress=False)
    table = layer_table(model)
    groups = group_table(table)
    summary = global_summary(table, list(layers))
    for column in ("params", "nonzero", "stored_bytes", "flops_per_token"):
        assert groups[column].sum() == table[column].sum() == summary[column]
    assert abs(groups["param_share"].sum() - 1.0) < 1e-12
    assert summary["pruned_layer_sparsity"] == 0.5  # 4·64 + 2·128 weights: an exact half
    assert summary["pruned_layers"] == 6


def test_csr_bytes_and_flops_by_hand():
    model = _model()
    layers = prunable_layers(model)
    prune(model, layers, PruneSpec.create("magnitude", 0.5, scope="layer"), progress=False)
    convert(model, list(layers), "csr")
    table = layer_table(model).set_index("module")
    fc1 = table.loc["model.decoder.layers.0.fc1"]
    nnz = F * D // 2
    # values fp32 + int32 column indices + int32 row pointers (F + 1) + fp32 bias
    assert fc1["stored_bytes"] == nnz * 4 + nnz * 4 + (F + 1) * 4 + F * 4
    assert fc1["flops_per_token"] == 2 * nnz
    assert fc1["format"] == "csr" and fc1["params"] == F * D + F
