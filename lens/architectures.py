"""Which HF decoder architectures lens converts to a `HookedTransformer`, and how each HF config becomes a
`HookedTransformerConfig`, read from the model's own local ``config.json`` and never from its directory name.

TransformerLens 3.9 maps an HF config itself for GPT-Neo, GPT-NeoX, OPT, Bloom, Mistral, Mixtral, Qwen2, Qwen3 and
Phi-3; lens calls that mapping on a copy of the config in a neutral temporary directory (the mapping chooses Llama
and Gemma configs by *name*: a path containing "llama" or "gemma" would change the result) and then sets the few
fields it ignores (``head_dim``, the context length, GPT-Neo's ``intermediate_size``). For the families the
library maps only by Hub name or not at all under transformers 5 (GPT-2, GPT-J, Llama, Gemma 1-3, Phi, OLMo,
OLMo 2) lens builds the config from the HF config. The weights always go through TransformerLens' own
``convert_*_weights``. Anything else is refused with one sentence pointing at ``backend="bridge"``.
"""

from __future__ import annotations

import json
import logging
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator

import torch
from transformer_lens.pretrained import weight_conversions as wc

from lens.errors import LensLoadError

# HF architecture -> TransformerLens weight converter; also the hooked backend's list of what it converts.
CONVERTERS: dict[str, Callable] = {
    "GPT2LMHeadModel": wc.convert_gpt2_weights, "GPTJForCausalLM": wc.convert_gptj_weights,
    "GPTNeoForCausalLM": wc.convert_neo_weights, "GPTNeoXForCausalLM": wc.convert_neox_weights,
    "OPTForCausalLM": wc.convert_opt_weights, "BloomForCausalLM": wc.convert_bloom_weights,
    "LlamaForCausalLM": wc.convert_llama_weights, "MistralForCausalLM": wc.convert_mistral_weights,
    "MixtralForCausalLM": wc.convert_mixtral_weights, "Qwen2ForCausalLM": wc.convert_qwen2_weights,
    "Qwen3ForCausalLM": wc.convert_qwen3_weights, "GemmaForCausalLM": wc.convert_gemma_weights,
    "Gemma2ForCausalLM": wc.convert_gemma_weights, "Gemma3ForCausalLM": wc.convert_gemma_weights,
    "PhiForCausalLM": wc.convert_phi_weights, "Phi3ForCausalLM": wc.convert_phi3_weights,
    "OlmoForCausalLM": wc.convert_olmo_weights, "Olmo2ForCausalLM": wc.convert_olmo2_weights,
}
SUPPORTED = tuple(CONVERTERS)
# Families whose TransformerLens 3.9 HF-config mapping works from a local config.
TL_MAPPED = frozenset({"GPTNeoForCausalLM", "GPTNeoXForCausalLM", "OPTForCausalLM", "BloomForCausalLM",
                       "MistralForCausalLM", "MixtralForCausalLM", "Qwen2ForCausalLM", "Qwen3ForCausalLM",
                       "Phi3ForCausalLM"})
# Substrings that make TL 3.9's mapping pick a config by name instead of reading config.json.
_NAME_TRIGGERS = ("llama", "gemma", "wav2vec2")
# Families whose tokenizers and TransformerLens defaults prepend no BOS token.
_NO_BOS = frozenset({"GPTNeoXForCausalLM", "BloomForCausalLM", "Qwen2ForCausalLM", "Qwen3ForCausalLM",
                     "PhiForCausalLM"})
_ROTARY_OK = {"default": None, "llama3": "LlamaForCausalLM"}  # rope type -> the one family it is allowed for


def unsupported(arch: str, why: str = "") -> LensLoadError:
    """The one-sentence error for an architecture (or config variant) the hooked backend cannot convert.

    Args:
        arch: The HF architecture name.
        why: The config option that blocks conversion, if the family itself is supported.

    Returns:
        A `LensLoadError` naming what is supported and pointing at ``backend="bridge"`` (raise it).

    Example:
        >>> str(unsupported("GraniteForCausalLM")).split(";")[0]
        'architecture GraniteForCausalLM cannot be converted to a HookedTransformer'
    """
    what = f"architecture {arch}" + (f" with {why}" if why else "")
    return LensLoadError(f"{what} cannot be converted to a HookedTransformer; supported: {', '.join(SUPPORTED)}; "
                         f"load it with backend=\"bridge\" (TransformerLens' TransformerBridge) instead")


def architecture_of(hf_config, model=None) -> str:
    """The HF architecture name of a config.

    Args:
        hf_config: A ``transformers`` config.
        model: The model the config belongs to, if any (its class names the architecture when the config does not,
            as for a model built in memory and not yet saved).

    Returns:
        ``architectures[0]``, else the model's class name, else ``"<model_type ...>"``.

    Example:
        >>> from transformers import GPT2Config
        >>> architecture_of(GPT2Config(architectures=["GPT2LMHeadModel"])), architecture_of(GPT2Config())
        ('GPT2LMHeadModel', '<model_type gpt2>')
    """
    archs = getattr(hf_config, "architectures", None) or ([type(model).__name__] if model is not None else [])
    return archs[0] if archs else f"<model_type {getattr(hf_config, 'model_type', '?')}>"


def hooked_config(hf_config, *, dtype: torch.dtype, device: str, n_ctx: int | None = None,
                  default_prepend_bos: bool = True, arch: str | None = None):
    """The `HookedTransformerConfig` for a local HF decoder config.

    Args:
        hf_config: The model's ``transformers`` config (``model.config``).
        dtype: Parameter dtype of the HookedTransformer.
        device: Device the HookedTransformer will live on.
        n_ctx: Context length; ``None`` takes the HF config's own maximum.
        default_prepend_bos: Whether lens prepends BOS when it tokenizes text for this model (see
            `prepends_bos`).
        arch: The HF architecture name; default: the config's own (a config built in memory names none until the
            model is saved: pass ``type(model).__name__``).

    Returns:
        A ``HookedTransformerConfig`` whose ``original_architecture`` is the HF architecture name.

    Raises:
        LensLoadError: the architecture or one of its config options cannot be converted (one sentence, pointing
            at ``backend="bridge"``).

    Example:
        >>> from transformers import LlamaConfig
        >>> c = LlamaConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
        ...                 num_key_value_heads=2, vocab_size=100, architectures=["LlamaForCausalLM"])
        >>> cfg = hooked_config(c, dtype=torch.float32, device="cpu")
        >>> (cfg.n_layers, cfg.d_head, cfg.n_key_value_heads)
        (2, 16, 2)
    """
    from transformer_lens import HookedTransformerConfig

    arch = arch or architecture_of(hf_config)
    if arch not in CONVERTERS:
        raise unsupported(arch)
    fields = _tl_mapping(hf_config, arch) if arch in TL_MAPPED else _BUILDERS[arch](hf_config)
    _check_rope(hf_config, arch)
    fields.update(_corrections(hf_config, arch, fields))
    fields.pop("tokenizer_name", None)
    fields.pop("quantization_method", None)
    fields.update(original_architecture=arch, model_name=arch, dtype=dtype, device=device, init_weights=False,
                  default_prepend_bos=default_prepend_bos)
    if n_ctx is not None:
        fields["n_ctx"] = n_ctx
    return HookedTransformerConfig.from_dict(fields)


def prepends_bos(arch: str) -> bool:
    """Whether a family's text starts with BOS (TransformerLens' convention: not GPT-NeoX, Bloom, Qwen2/3, Phi).

    Args:
        arch: An HF architecture name.

    Returns:
        True unless the family is trained without a leading BOS.

    Example:
        >>> prepends_bos("LlamaForCausalLM"), prepends_bos("Qwen2ForCausalLM")
        (True, False)
    """
    return arch not in _NO_BOS


def convert_weights(hf_model, cfg) -> dict[str, torch.Tensor]:
    """TransformerLens' own converter for ``cfg.original_architecture`` applied to ``hf_model``.

    Args:
        hf_model: The HF causal LM (weights already merged if it carried an adapter).
        cfg: The config from `hooked_config`.

    Returns:
        A HookedTransformer-format state dict (tensors may share storage with ``hf_model``).

    Example:
        >>> from transformers import AutoModelForCausalLM, LlamaConfig
        >>> c = LlamaConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
        ...                 vocab_size=100, architectures=["LlamaForCausalLM"])
        >>> sd = convert_weights(AutoModelForCausalLM.from_config(c), hooked_config(c, dtype=torch.float32,
        ...                      device="cpu"))
        >>> tuple(sd["blocks.0.attn.W_Q"].shape)
        (4, 64, 16)
    """
    return CONVERTERS[cfg.original_architecture](hf_model, cfg)


def processing_flags(cfg) -> dict[str, bool]:
    """The weight processing `HookedTransformer.from_pretrained` applies to this architecture.

    Args:
        cfg: A config from `hooked_config`.

    Returns:
        Keyword arguments for ``HookedTransformer.load_and_process_state_dict``: LayerNorm folding and centring
        of writing weights, except for post-norm blocks (OLMo 2), where neither is valid algebra.

    Example:
        >>> from transformer_lens import HookedTransformerConfig
        >>> cfg = HookedTransformerConfig(d_model=8, d_head=4, n_layers=1, n_ctx=8, act_fn="relu",
        ...                               original_architecture="Olmo2ForCausalLM")
        >>> processing_flags(cfg)["fold_ln"]
        False
    """
    from transformer_lens.utilities.architectures import POST_NORM_ARCHITECTURES

    post_norm = cfg.original_architecture in POST_NORM_ARCHITECTURES
    return dict(fold_ln=not post_norm, center_writing_weights=not post_norm, center_unembed=True,
                fold_value_biases=True)


def _tl_mapping(hf_config, arch: str) -> dict[str, Any]:
    """TransformerLens' own HF-config mapping, run on a copy of the config in a directory with a neutral name."""
    from transformer_lens.loading_from_pretrained import convert_hf_model_config

    for _ in range(8):
        with tempfile.TemporaryDirectory(prefix="lens_cfg_") as d:
            if any(t in d.lower() for t in _NAME_TRIGGERS):
                continue
            config = {**json.loads(hf_config.to_json_string()), "architectures": [arch]}
            (Path(d) / "config.json").write_text(json.dumps(config))
            with quiet_logging():
                return dict(convert_hf_model_config(d, local_files_only=True))
    raise LensLoadError(f"the temporary directory {tempfile.gettempdir()} has a model-family name in its path, "
                        f"which TransformerLens 3.9 reads as a Hub model name; set TMPDIR to another directory")


@contextmanager
def quiet_logging() -> Iterator[None]:
    """Silence TransformerLens' root-logger warnings (missing positional embeddings etc.) for a conversion.

    Returns:
        A context manager; logging is restored on exit.

    Example:
        >>> with quiet_logging():
        ...     logging.warning("not shown")
    """
    previous = logging.root.manager.disable
    logging.disable(logging.WARNING)
    try:
        yield
    finally:
        logging.disable(previous)


def _get(c, *names, default=None):
    """The first of ``names`` that ``c`` sets (not None)."""
    for n in names:
        v = getattr(c, n, None)
        if v is not None:
            return v
    return default


def _rope_params(c) -> dict[str, Any]:
    """RoPE settings from ``rope_parameters`` (transformers 5) merged over the older ``rope_scaling``/attributes."""
    params = {k: v for k, v in (getattr(c, "rope_scaling", None) or {}).items()}
    params.update(getattr(c, "rope_parameters", None) or {})
    if "rope_theta" not in params and getattr(c, "rope_theta", None) is not None:
        params["rope_theta"] = c.rope_theta
    return params


def _check_rope(c, arch: str) -> None:
    if arch == "Gemma3ForCausalLM" or not (_rope_params(c) or getattr(c, "rope_theta", None)):
        return
    kind = _rope_params(c).get("rope_type", _rope_params(c).get("type", "default"))
    if kind not in _ROTARY_OK or _ROTARY_OK[kind] not in (None, arch):
        raise unsupported(arch, f"rope type {kind!r}")


def _context(c) -> int | None:
    return _get(c, "max_position_embeddings", "n_positions")


def _rotary(c, d_head: int, *, factor: float | None = None) -> dict[str, Any]:
    params = _rope_params(c)
    factor = factor if factor is not None else _get(c, "partial_rotary_factor",
                                                    default=params.get("partial_rotary_factor", 1.0))
    out: dict[str, Any] = dict(positional_embedding_type="rotary", rotary_dim=round(d_head * factor),
                               rotary_base=params.get("rope_theta", 10000.0), rotary_adjacent_pairs=False)
    if params.get("rope_type") == "llama3":
        out.update(use_NTK_by_parts_rope=True, NTK_by_parts_factor=params["factor"],
                   NTK_by_parts_low_freq_factor=params.get("low_freq_factor", 1.0),
                   NTK_by_parts_high_freq_factor=params.get("high_freq_factor", 4.0),
                   NTK_original_ctx_len=params.get("original_max_position_embeddings", _context(c)))
    return out


def _heads(c) -> dict[str, Any]:
    n_h = c.num_attention_heads
    d_head = _get(c, "head_dim", default=c.hidden_size // n_h)
    n_kv = _get(c, "num_key_value_heads", default=n_h)
    return dict(d_model=c.hidden_size, n_heads=n_h, d_head=d_head, n_layers=c.num_hidden_layers,
                d_mlp=c.intermediate_size, n_ctx=_context(c), d_vocab=c.vocab_size,
                n_key_value_heads=n_kv if n_kv != n_h else None)


def _require_mha(c, arch: str) -> None:
    if _get(c, "num_key_value_heads", default=c.num_attention_heads) != c.num_attention_heads:
        raise unsupported(arch, "grouped-query attention (its TransformerLens converter splits K/V per head)")


def _layer_windows(c) -> dict[str, Any]:
    """Local (sliding-window) attention per layer from ``layer_types``."""
    types = getattr(c, "layer_types", None) or ["full_attention"] * c.num_hidden_layers
    attn_types = ["local" if t == "sliding_attention" else "global" for t in types]
    if "local" not in attn_types or not getattr(c, "sliding_window", None):
        return {}
    return dict(use_local_attn=True, window_size=c.sliding_window, attn_types=attn_types)


def _gpt2(c) -> dict[str, Any]:
    return dict(d_model=c.n_embd, d_head=c.n_embd // c.n_head, n_heads=c.n_head, d_mlp=c.n_inner or 4 * c.n_embd,
                n_layers=c.n_layer, n_ctx=c.n_positions, eps=c.layer_norm_epsilon, d_vocab=c.vocab_size,
                act_fn=c.activation_function, use_attn_scale=c.scale_attn_weights,
                scale_attn_by_inverse_layer_idx=c.scale_attn_by_inverse_layer_idx, normalization_type="LN")


def _gptj(c) -> dict[str, Any]:
    d_head = c.n_embd // c.n_head
    # HF slices q/k[..., :rotary_dim], so a rotary_dim past the head width means the whole head.
    return dict(d_model=c.n_embd, d_head=d_head, n_heads=c.n_head, d_mlp=c.n_inner or 4 * c.n_embd,
                n_layers=c.n_layer, n_ctx=c.n_positions, eps=c.layer_norm_epsilon, d_vocab=c.vocab_size,
                act_fn=c.activation_function, parallel_attn_mlp=True, normalization_type="LN",
                positional_embedding_type="rotary", rotary_dim=min(c.rotary_dim or d_head, d_head),
                rotary_adjacent_pairs=True)


def _llama(c) -> dict[str, Any]:
    heads = _heads(c)
    return dict(**heads, eps=c.rms_norm_eps, act_fn=c.hidden_act, normalization_type="RMS", final_rms=True,
                gated_mlp=True, **_rotary(c, heads["d_head"]))


def _gemma(c) -> dict[str, Any]:
    heads = _heads(c)
    heads["n_key_value_heads"] = _get(c, "num_key_value_heads", default=c.num_attention_heads)
    fields = dict(**heads, eps=c.rms_norm_eps, act_fn=_get(c, "hidden_activation", "hidden_act"),
                  normalization_type="RMS", final_rms=True, gated_mlp=True, use_attn_scale=True,
                  **_rotary(c, heads["d_head"]))
    if getattr(c, "query_pre_attn_scalar", None):
        fields["attn_scale"] = c.query_pre_attn_scalar ** 0.5
    if getattr(c, "attn_logit_softcapping", None):
        fields["attn_scores_soft_cap"] = float(c.attn_logit_softcapping)
    if getattr(c, "final_logit_softcapping", None):
        fields["output_logits_soft_cap"] = float(c.final_logit_softcapping)
    return fields


def _gemma2(c) -> dict[str, Any]:
    return {**_gemma(c), "use_normalization_before_and_after": True, **_layer_windows(c)}


def _gemma3(c) -> dict[str, Any]:
    rope = getattr(c, "rope_parameters", None) or {}
    full, local = rope.get("full_attention", rope), rope.get("sliding_attention", {})
    for kind in (full.get("rope_type", "default"), local.get("rope_type", "default")):
        if kind not in ("default", "linear"):
            raise unsupported("Gemma3ForCausalLM", f"rope type {kind!r}")
    if local.get("rope_type", "default") != "default":
        raise unsupported("Gemma3ForCausalLM", "scaled RoPE on its sliding-window layers")
    fields = {**_gemma2(c), "use_qk_norm": True, "rotary_base": full.get("rope_theta", 1e6)}
    if local.get("rope_theta") is not None:
        fields["rotary_base_local"] = local["rope_theta"]
    if full.get("rope_type") == "linear":
        fields["rotary_scaling_factor"] = float(full["factor"])
    return fields


def _phi(c) -> dict[str, Any]:
    if getattr(c, "qk_layernorm", False):
        raise unsupported("PhiForCausalLM", "qk_layernorm")
    _require_mha(c, "PhiForCausalLM")
    heads = _heads(c)
    return dict(**heads, eps=c.layer_norm_eps, act_fn=c.hidden_act, normalization_type="LN", parallel_attn_mlp=True,
                **_rotary(c, heads["d_head"]))


def _olmo(c) -> dict[str, Any]:
    _require_mha(c, "OlmoForCausalLM")
    heads = _heads(c)
    # OLMo's LayerNorm has no parameters; the converter supplies w=1, b=0.
    return dict(**heads, eps=1e-5, act_fn=c.hidden_act, normalization_type="LN", gated_mlp=True,
                clip_qkv=getattr(c, "clip_qkv", None), **_rotary(c, heads["d_head"]))


def _olmo2(c) -> dict[str, Any]:
    _require_mha(c, "Olmo2ForCausalLM")
    heads = _heads(c)
    return dict(**heads, eps=c.rms_norm_eps, act_fn=c.hidden_act, normalization_type="RMS", gated_mlp=True,
                **_rotary(c, heads["d_head"]))


_BUILDERS: dict[str, Callable[[Any], dict[str, Any]]] = {
    "GPT2LMHeadModel": _gpt2, "GPTJForCausalLM": _gptj, "LlamaForCausalLM": _llama, "GemmaForCausalLM": _gemma,
    "Gemma2ForCausalLM": _gemma2, "Gemma3ForCausalLM": _gemma3, "PhiForCausalLM": _phi, "OlmoForCausalLM": _olmo,
    "Olmo2ForCausalLM": _olmo2,
}


def _corrections(c, arch: str, fields: dict[str, Any]) -> dict[str, Any]:
    """Fields TL 3.9's own mapping leaves at a Hub model's value although the local config states them."""
    if arch not in TL_MAPPED:
        return {}
    out: dict[str, Any] = {}
    if _context(c):
        out["n_ctx"] = _context(c)  # TL caps some families at 2048
    head_dim = getattr(c, "head_dim", None)
    if head_dim and head_dim != fields["d_head"]:
        out["d_head"] = head_dim
        if fields.get("rotary_dim") == fields["d_head"]:
            out["rotary_dim"] = head_dim
    if arch == "GPTNeoForCausalLM" and getattr(c, "intermediate_size", None):
        out["d_mlp"] = c.intermediate_size
    if arch == "Qwen2ForCausalLM" and getattr(c, "use_sliding_window", False):
        out.update(_layer_windows(c))
    return out

