"""Tiny causal LMs of the Llama, Qwen2 and Mistral architectures, built locally from a config.

The toy study trains a Llama one from scratch; the tests build all three to exercise the real loading code.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from transformers import AutoModelForCausalLM, LlamaConfig, MistralConfig, PreTrainedModel, Qwen2Config

ARCHITECTURES = {"llama": LlamaConfig, "qwen2": Qwen2Config, "mistral": MistralConfig}


@dataclass(frozen=True)
class TinyModelSpec:
    """The shape of a tiny model; defaults give about 1M parameters with a 1k vocabulary."""

    arch: str = "llama"
    d_model: int = 128
    n_layers: int = 4
    n_heads: int = 4
    n_kv_heads: int | None = None
    d_mlp: int = 512
    n_ctx: int = 512
    tie_embeddings: bool = False
    rope_theta: float = 10000.0


def make_tiny_model(spec: TinyModelSpec, tokenizer, *, seed: int = 0) -> PreTrainedModel:
    """A freshly initialised model of ``spec`` whose vocabulary and special ids match ``tokenizer``.

    Args:
        spec: The model's shape.
        tokenizer: Gives the vocabulary size and the BOS, EOS and pad ids.
        seed: The torch seed of the initialisation.

    Returns:
        The model, float32, in eval mode.

    Raises:
        ValueError: an unknown architecture, or ``d_model`` not divisible by ``n_heads``.

    Example:
        >>> model = make_tiny_model(TinyModelSpec(arch="qwen2", n_layers=2), tok)  # doctest: +SKIP
        >>> model.config.num_hidden_layers  # doctest: +SKIP
        2
    """
    if spec.arch not in ARCHITECTURES:
        raise ValueError(f"unknown architecture {spec.arch!r}; valid: {sorted(ARCHITECTURES)}")
    if spec.d_model % spec.n_heads:
        raise ValueError(f"d_model {spec.d_model} is not divisible by n_heads {spec.n_heads}")
    config = ARCHITECTURES[spec.arch](
        vocab_size=len(tokenizer), hidden_size=spec.d_model, intermediate_size=spec.d_mlp,
        num_hidden_layers=spec.n_layers, num_attention_heads=spec.n_heads,
        num_key_value_heads=spec.n_kv_heads or spec.n_heads, max_position_embeddings=spec.n_ctx,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id, tie_word_embeddings=spec.tie_embeddings,
        rope_theta=spec.rope_theta,
    )
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    return model.eval()
