"""Llama shapes for training from scratch: plain LlamaConfig keyword sets, by name.

`llama-135m` is SmolLM2-135M's shape, `llama-1b` is Llama-3.2-1B's with SmolLM2's vocabulary, and
`llama-20m` is small enough to train a few steps on a CPU in tests. The vocabulary size always
comes from the tokenizer.
"""

from __future__ import annotations

from typing import Any

PRESETS: dict[str, dict[str, Any]] = {
    "llama-20m": dict(hidden_size=256, intermediate_size=768, num_hidden_layers=6, num_attention_heads=4,
                      num_key_value_heads=2, max_position_embeddings=2048),
    "llama-135m": dict(hidden_size=576, intermediate_size=1536, num_hidden_layers=30, num_attention_heads=9,
                       num_key_value_heads=3, max_position_embeddings=8192),
    "llama-1b": dict(hidden_size=2048, intermediate_size=8192, num_hidden_layers=16, num_attention_heads=32,
                     num_key_value_heads=8, max_position_embeddings=8192),
}

SHARED = dict(hidden_act="silu", rms_norm_eps=1e-5, tie_word_embeddings=True, initializer_range=0.02,
              rope_parameters={"rope_type": "default", "rope_theta": 100000.0}, attention_bias=False,
              mlp_bias=False, use_cache=False)


def llama_config(preset: str, vocab_size: int, overrides: dict[str, Any] | None = None,
                 special_tokens: dict[str, int | None] | None = None):
    """The LlamaConfig for a preset name, sized to the tokenizer, with `overrides` applied."""
    from transformers import LlamaConfig

    if preset not in PRESETS:
        raise ValueError(f"unknown model preset {preset!r}; choose one of {', '.join(PRESETS)}")
    fields = {**SHARED, **PRESETS[preset], "vocab_size": vocab_size, **(special_tokens or {}), **(overrides or {})}
    return LlamaConfig(**fields)
