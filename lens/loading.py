"""Load a saved HF model, a PEFT adapter (merged) or an in-memory model into TransformerLens, fully offline.

`HookedTransformer.from_pretrained` refuses local paths, so the config is built by hand from the HF config and the
weights go through TransformerLens' own converters; every load is checked against the HF model's log-probs.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase  # noqa: E402

from lens.errors import LensLoadError  # noqa: E402

PARITY_PROMPTS = (
    "Problem: 12+3*4-5\n\n<|Round 1 - Initial Solutions|>\n\n<|Agent 1 Solution|>: 3*4=12; 12+12-5=19",
    "The quick brown fox jumps over the lazy dog, and then it rests.",
    "You are a helpful assistant. Answer the question step by step.",
)
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth")
SUPPORTED = ("LlamaForCausalLM", "Qwen2ForCausalLM", "MistralForCausalLM")


@dataclass(frozen=True)
class ModelProvenance:
    """Where a loaded model came from: paths, weight hashes, the transcripts it was trained on, parity checked."""

    path: str | None
    adapter: str | None = None
    base: str | None = None
    weights_sha256: dict[str, str] = field(default_factory=dict)
    transcripts: tuple[str, ...] = ()
    backend: str = "hooked"
    dtype: str = "float32"
    architecture: str = ""
    default_prepend_bos: bool = True
    parity_max_abs_logprob_diff: float | None = None

    @property
    def fingerprint(self) -> str | None:
        """One sha256 over all weight-file hashes (adapter included), or None for an in-memory model."""
        if not self.weights_sha256:
            return None
        joined = "\n".join(f"{k}={v}" for k, v in sorted(self.weights_sha256.items()))
        return hashlib.sha256(joined.encode()).hexdigest()

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "transcripts": list(self.transcripts), "fingerprint": self.fingerprint}


def load_model(path_or_model: str | Path | PreTrainedModel, *, tokenizer: PreTrainedTokenizerBase | None = None,
               adapter: str | Path | None = None, base: str | Path | None = None, dtype: torch.dtype = torch.float32,
               device: str = "cpu", n_ctx: int | None = None, backend: str = "hooked", check_parity: bool = True,
               parity_tol: float | None = None):
    """A TransformerLens model (``HookedTransformer``, or ``TransformerBridge`` in compatibility mode) with
    ``model.lens_provenance`` attached; raises `LensLoadError` if its log-probs differ from HF past ``parity_tol``."""
    if backend not in ("hooked", "bridge"):
        raise LensLoadError(f"backend {backend!r} is unknown; valid: 'hooked', 'bridge'")
    hf, tok, source = _resolve_hf(path_or_model, tokenizer=tokenizer, adapter=adapter, base=base, dtype=dtype)
    _check_vocab(hf, tok, source["name"])
    tok = _disk_backed(tok)
    arch = _architecture(hf)
    prepend_bos = tok.bos_token_id is not None and arch != "Qwen2ForCausalLM"
    if backend == "hooked":
        model = _hooked_from_hf(hf, tok, arch=arch, dtype=dtype, device=device, n_ctx=n_ctx,
                                default_prepend_bos=prepend_bos)
    else:
        model = _bridge_from_hf(hf, tok, source, dtype=dtype, device=device, n_ctx=n_ctx)
    parity = _parity(model, hf, tok, dtype, parity_tol, source["name"]) if check_parity else None
    model.lens_provenance = ModelProvenance(
        path=source["path"], adapter=source["adapter"], base=source["base"], weights_sha256=source["hashes"],
        transcripts=tuple(source["transcripts"]), backend=backend, dtype=str(dtype).removeprefix("torch."),
        architecture=arch, default_prepend_bos=prepend_bos, parity_max_abs_logprob_diff=parity)
    return model


def _resolve_hf(path_or_model, *, tokenizer, adapter, base, dtype) -> tuple[PreTrainedModel, Any, dict]:
    """The HF model (adapter merged), its tokenizer and a description of where both came from."""
    source = {"path": None, "adapter": None, "base": None, "hashes": {}, "transcripts": [], "name": "the model"}
    if isinstance(path_or_model, PreTrainedModel):
        if tokenizer is None:
            raise LensLoadError("an in-memory model needs tokenizer=...; pass the tokenizer it was trained with")
        hf = path_or_model
        if adapter is not None:
            return _merge_adapter(hf, Path(adapter), tokenizer, source, base_name="the in-memory model")
        return hf.eval(), tokenizer, source
    path = Path(path_or_model)
    if not path.is_dir():
        raise LensLoadError(f"{path}: no such model directory; pass a saved HF model dir or a PEFT adapter dir")
    if (path / "adapter_config.json").exists():
        if adapter is not None:
            raise LensLoadError(f"{path} is itself a PEFT adapter; pass it alone (base=... names its base model)")
        adapter, base_dir = path, _adapter_base(path, base)
    elif (path / "config.json").exists():
        base_dir = path
    else:
        raise LensLoadError(f"{path}: neither config.json nor adapter_config.json found; not a model or adapter dir")
    hf = _load_hf_dir(base_dir, dtype)
    source.update(path=str(path.resolve()), hashes=_weight_hashes(base_dir, "model"),
                  transcripts=_trained_on(Path(adapter) if adapter is not None else base_dir), name=str(path))
    if adapter is None:
        tok = tokenizer if tokenizer is not None else _load_tokenizer(base_dir)
        return hf, tok, source
    adapter = Path(adapter)
    if not (adapter / "adapter_config.json").exists():
        raise LensLoadError(f"{adapter}: no adapter_config.json; not a PEFT adapter dir")
    if tokenizer is None:
        tokenizer = _load_tokenizer(adapter if (adapter / "tokenizer_config.json").exists() else base_dir)
    source.update(base=str(base_dir.resolve()))
    return _merge_adapter(hf, adapter, tokenizer, source, base_name=str(base_dir))


def _adapter_base(adapter: Path, base: str | Path | None) -> Path:
    """The adapter's base model dir: ``base=`` if given, else adapter_config's path (relative to the adapter)."""
    if base is None:
        base = json.loads((adapter / "adapter_config.json").read_text()).get("base_model_name_or_path")
        if not base:
            raise LensLoadError(f"{adapter}: adapter_config.json names no base model; pass base=<model dir>")
        candidates = [Path(base), adapter / base]
        found = next((c for c in candidates if (c / "config.json").exists()), None)
        if found is None:
            raise LensLoadError(f"{adapter}: its base model {base!r} is not a local model dir (offline: nothing is "
                                f"downloaded); pass base=<local dir of {base}>")
        return found
    base = Path(base)
    if not (base / "config.json").exists():
        raise LensLoadError(f"base={base}: no config.json; not a saved HF model dir")
    return base


def _merge_adapter(hf: PreTrainedModel, adapter: Path, tok, source: dict, *, base_name: str):
    """Resize the base's embeddings to the adapter's vocabulary, apply the adapter and merge it."""
    from peft import PeftModel
    from safetensors import safe_open

    weights = adapter / "adapter_model.safetensors"
    saved_vocab = None
    if weights.exists():
        with safe_open(str(weights), "pt") as f:
            for key in f.keys():
                if key.endswith(("embed_tokens.weight", "lm_head.weight")) and "lora" not in key:
                    rows, cols = f.get_slice(key).get_shape()
                    if cols != hf.config.hidden_size:
                        raise LensLoadError(
                            f"adapter {adapter} does not fit base {base_name}: its {key} has width {cols}, the "
                            f"base has hidden size {hf.config.hidden_size}; pass base=<the model it was trained on>")
                    saved_vocab = rows
    vocab = saved_vocab or max(len(tok), hf.get_input_embeddings().weight.shape[0])
    if vocab != hf.get_input_embeddings().weight.shape[0]:
        hf.resize_token_embeddings(vocab)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            merged = PeftModel.from_pretrained(hf, str(adapter)).merge_and_unload()
    except (RuntimeError, ValueError, KeyError) as e:
        first = str(e).strip().splitlines()[0][:300]
        raise LensLoadError(f"adapter {adapter} does not fit base {base_name} ({first}); "
                            f"pass base=<the model it was trained on>") from None
    source.update(adapter=str(adapter.resolve()), hashes={**source["hashes"], **_weight_hashes(adapter, "adapter")},
                  transcripts=source["transcripts"] or _trained_on(adapter), name=str(adapter))
    return merged.eval(), tok, source


def _load_hf_dir(path: Path, dtype: torch.dtype) -> PreTrainedModel:
    try:
        return AutoModelForCausalLM.from_pretrained(str(path), dtype=dtype, attn_implementation="eager",
                                                    local_files_only=True).eval()
    except (OSError, ValueError) as e:
        raise LensLoadError(f"{path}: not a loadable HF causal LM ({str(e).splitlines()[0][:200]})") from None


def _load_tokenizer(path: Path) -> PreTrainedTokenizerBase:
    try:
        return AutoTokenizer.from_pretrained(str(path), local_files_only=True)
    except (OSError, ValueError) as e:
        raise LensLoadError(f"{path}: no tokenizer saved there ({str(e).splitlines()[0][:200]}); "
                            f"pass tokenizer=...") from None


def _disk_backed(tok: PreTrainedTokenizerBase) -> PreTrainedTokenizerBase:
    """TransformerLens reopens the tokenizer from ``name_or_path``; give an in-memory one a saved copy."""
    if (Path(tok.name_or_path or "") / "tokenizer_config.json").exists():
        return tok
    d = tempfile.mkdtemp(prefix="lens_tok_")
    tok.save_pretrained(d)
    return AutoTokenizer.from_pretrained(d, local_files_only=True)


def _check_vocab(hf: PreTrainedModel, tok, name: str) -> None:
    n_model, n_tok = hf.get_input_embeddings().weight.shape[0], len(tok)
    if n_tok > n_model:
        raise LensLoadError(f"vocab mismatch for {name}: the tokenizer has {n_tok} tokens but the model's embedding "
                            f"has {n_model} rows; pass the tokenizer the model was trained with (or the adapter dir "
                            f"whose tokenizer added tokens)")


def _architecture(hf: PreTrainedModel) -> str:
    arch = (hf.config.architectures or [type(hf).__name__])[0]
    if arch not in SUPPORTED:
        raise LensLoadError(f"architecture {arch} is not supported; supported: {', '.join(SUPPORTED)}")
    return arch


def _trained_on(model_dir: Path) -> list[str]:
    """Transcript JSONL paths from ``provenance.json`` (key ``transcripts``), made absolute."""
    prov = model_dir / "provenance.json"
    if not prov.exists():
        return []
    paths = json.loads(prov.read_text()).get("transcripts") or []
    if isinstance(paths, str):
        paths = [paths]
    return [str(p if Path(p).is_absolute() else (model_dir / p).resolve()) for p in paths]


def _weight_hashes(directory: Path, prefix: str) -> dict[str, str]:
    out = {}
    for f in sorted(directory.iterdir()):
        if f.is_file() and f.name.endswith(WEIGHT_SUFFIXES):
            h = hashlib.sha256()
            with f.open("rb") as fh:
                for chunk in iter(lambda: fh.read(1 << 24), b""):
                    h.update(chunk)
            out[f"{prefix}/{f.name}"] = h.hexdigest()
    return out


def _rope_fields(c) -> dict[str, Any]:
    """RoPE base and Llama-3 NTK-by-parts scaling from ``rope_parameters`` (transformers 5) or ``rope_scaling``."""
    params = dict(getattr(c, "rope_parameters", None) or {})
    params.update({k: v for k, v in (getattr(c, "rope_scaling", None) or {}).items() if k not in params})
    theta = params.get("rope_theta", getattr(c, "rope_theta", 10000.0))
    kind = params.get("rope_type", params.get("type", "default"))
    out: dict[str, Any] = {"rotary_base": theta}
    if kind == "llama3":
        out.update(use_NTK_by_parts_rope=True, NTK_by_parts_factor=params["factor"],
                   NTK_by_parts_low_freq_factor=params.get("low_freq_factor", 1.0),
                   NTK_by_parts_high_freq_factor=params.get("high_freq_factor", 4.0),
                   NTK_original_ctx_len=params.get("original_max_position_embeddings", c.max_position_embeddings))
    elif kind != "default":
        raise LensLoadError(f"rope type {kind!r} is not supported; supported: 'default', 'llama3'")
    return out


def tl_config(hf_config, *, arch: str, dtype: torch.dtype = torch.float32, device: str = "cpu",
              n_ctx: int | None = None, default_prepend_bos: bool = True):
    """A `HookedTransformerConfig` for a Llama / Qwen2 / Mistral HF config (GQA, head_dim, RoPE scaling)."""
    from transformer_lens import HookedTransformerConfig

    c = hf_config
    n_h, n_kv = c.num_attention_heads, c.num_key_value_heads or c.num_attention_heads
    d_head = getattr(c, "head_dim", None) or c.hidden_size // n_h
    n_ctx = n_ctx or c.max_position_embeddings
    fields: dict[str, Any] = dict(
        d_model=c.hidden_size, d_head=d_head, n_heads=n_h, n_key_value_heads=n_kv if n_kv != n_h else None,
        d_mlp=c.intermediate_size, n_layers=c.num_hidden_layers, n_ctx=n_ctx, eps=c.rms_norm_eps,
        d_vocab=c.vocab_size, act_fn=c.hidden_act, normalization_type="RMSPre", positional_embedding_type="rotary",
        rotary_adjacent_pairs=False, rotary_dim=d_head, final_rms=True, gated_mlp=True,
        original_architecture=arch, device=device, dtype=dtype, default_prepend_bos=default_prepend_bos,
        **_rope_fields(c))
    window = getattr(c, "sliding_window", None)
    uses_window = arch == "MistralForCausalLM" or getattr(c, "use_sliding_window", False)
    if uses_window and window and window < n_ctx:
        fields.update(use_local_attn=True, window_size=window, attn_types=["local"] * c.num_hidden_layers)
    if arch in ("Qwen2ForCausalLM", "MistralForCausalLM") and n_kv == n_h:
        fields["n_key_value_heads"] = n_kv  # their converters always split K/V per kv head
    return HookedTransformerConfig(**fields)


def _hooked_from_hf(hf, tok, *, arch, dtype, device, n_ctx, default_prepend_bos):
    from transformer_lens import HookedTransformer
    from transformer_lens.pretrained.weight_conversions import (convert_llama_weights, convert_mistral_weights,
                                                                convert_qwen2_weights)

    convert = {"LlamaForCausalLM": convert_llama_weights, "Qwen2ForCausalLM": convert_qwen2_weights,
               "MistralForCausalLM": convert_mistral_weights}[arch]
    cfg = tl_config(hf.config, arch=arch, dtype=dtype, device=device, n_ctx=n_ctx,
                    default_prepend_bos=default_prepend_bos)
    cfg.d_vocab = cfg.d_vocab_out = hf.get_input_embeddings().weight.shape[0]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        model = HookedTransformer(cfg, tokenizer=tok, move_to_device=False)
        model.load_and_process_state_dict({k: v.to(dtype) for k, v in convert(hf, cfg).items()})
    model.cfg.default_prepend_bos = default_prepend_bos
    return model.to(device).eval()


def _bridge_from_hf(hf, tok, source: dict, *, dtype, device, n_ctx):
    """Boot a `TransformerBridge` from a saved dir (a temp copy when merged or in memory), never from ``hf``."""
    from transformer_lens.model_bridge import TransformerBridge

    def boot(directory: str):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            bridge = TransformerBridge.boot_transformers(directory, device=device, dtype=dtype, tokenizer=tok,
                                                         n_ctx=n_ctx)
            bridge.enable_compatibility_mode(disable_warnings=True)
        return bridge.eval()

    if source["path"] is not None and source["adapter"] is None:
        return boot(source["path"])
    with tempfile.TemporaryDirectory(prefix="lens_bridge_") as d:
        hf.save_pretrained(d)
        tok.save_pretrained(d)
        return boot(d)


def parity_tokens(tok) -> list[torch.Tensor]:
    """Token ids of the fixed parity prompts (BOS first when the tokenizer has one)."""
    bos = [tok.bos_token_id] if tok.bos_token_id is not None else []
    return [torch.tensor([bos + tok(p, add_special_tokens=False)["input_ids"]]) for p in PARITY_PROMPTS]


@torch.no_grad()
def _parity(model, hf, tok, dtype, tol, name) -> float:
    """Max |Δ log-prob| between TL and HF over the parity prompts; raises past ``tol``."""
    tol = tol if tol is not None else (1e-3 if dtype == torch.float32 else 5e-2)
    worst = 0.0
    device = next(hf.parameters()).device
    for ids in parity_tokens(tok):
        ref = hf(ids.to(device)).logits.float().log_softmax(-1).cpu()
        got = model(ids.to(model.cfg.device)).float().log_softmax(-1).cpu()
        worst = max(worst, (ref - got).abs().max().item())
    if not worst <= tol:
        raise LensLoadError(f"parity check failed for {name}: max |Δ log-prob| TransformerLens vs HF = {worst:.3g} "
                            f"> tolerance {tol:g}; the conversion is wrong for this architecture/config")
    return worst
