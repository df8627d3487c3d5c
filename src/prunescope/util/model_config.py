"""Facts read from a model's config, whatever its architecture names them."""

from __future__ import annotations

# What `context_length` callers that need a number fall back to when a config names no context.
FALLBACK_CONTEXT = 2048
_CONTEXT_KEYS = ("max_position_embeddings", "n_positions", "seq_length", "max_sequence_length", "n_ctx")


def context_length(config, fallback: int | None = None) -> int | None:
    """The context length (in tokens) a model config names, else `fallback` (None unless given).

    Reads `max_position_embeddings` (Llama, OPT, Mistral, ...), then `n_positions` (GPT-2),
    `seq_length`, `max_sequence_length`, `n_ctx`; a multimodal config's `text_config` if the top level
    has none. Accepts a config, a model (its `.config`) or a plain dict. Callers that need a number pass
    `fallback=FALLBACK_CONTEXT` (2048); checks that only apply when the context is known use None."""
    if config is not None and not isinstance(config, dict) and hasattr(config, "config"):
        config = config.config
    for candidate in (config, _get(config, "text_config")):
        for key in _CONTEXT_KEYS:
            value = _get(candidate, key)
            if isinstance(value, int) and not isinstance(value, bool) and value > 0:
                return value
    return fallback


def _get(config, key: str):
    if config is None:
        return None
    if isinstance(config, dict):
        return config.get(key)
    return getattr(config, key, None)
