"""Load a saved HF model, a PEFT adapter (merged) or an in-memory model into TransformerLens, offline.

Two backends. ``"hooked"`` builds a `HookedTransformer` from the model's own ``config.json`` (see
`lens.architectures`) and TransformerLens' weight converters, for the 18 decoder families listed in
`lens.architectures.SUPPORTED`. ``"bridge"`` boots TransformerLens' `TransformerBridge` around the HF model in
compatibility mode (HookedTransformer numerics, the same hook names), for any architecture the bridge knows.

Every load is checked: the weights must be finite, and the model's log-probs on three fixed prompts must match
the HF model's within the tolerance for its dtype (`PARITY_TOL`). The HF reference is computed first and the HF
copy is dropped as soon as the conversion has consumed it, so the two copies of a large model coexist only while
the weights are converted. Only lens' own loads are offline (``local_files_only=True``); importing lens changes
nothing in the process environment.
"""

from __future__ import annotations

import copy
import gc
import hashlib
import json
import tempfile
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

from lens.architectures import (SUPPORTED, architecture_of, convert_weights, hooked_config, prepends_bos,
                                processing_flags, quiet_logging, unsupported)
from lens.errors import LensLoadError
from lens.integrity import BASE_RECORD, check_weight_files, fingerprint_model, read_base_record

PARITY_PROMPTS = (
    "Problem: 12+3*4-5\n\n<|Round 1 - Initial Solutions|>\n\n<|Agent 1 Solution|>: 3*4=12; 12+12-5=19",
    "The quick brown fox jumps over the lazy dog, and then it rests.",
    "You are a helpful assistant. Answer the question step by step.",
)
# Max |Δ log-prob| vs HF accepted per dtype. In float32 a correct conversion lands near 1e-6 (a wrong one, e.g.
# LayerNorm folded into OLMo 2's post-norm blocks, at 7.6e-2). In reduced precision both models round every
# activation: on the 18 tiny perturbed test models (CPU) float16 measured <= 2.2e-3 and bfloat16 <= 1.8e-2 for
# dense models and 0.10 for Mixtral (bf16 rounding flips near-tied expert choices). The bf16 bound therefore only
# catches gross conversion errors; check a new architecture once in float32.
PARITY_TOL = {torch.float32: 1e-3, torch.float64: 1e-3, torch.float16: 2e-2, torch.bfloat16: 0.25}
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth")
BACKENDS = ("hooked", "bridge")
_DTYPES = {"float32": torch.float32, "fp32": torch.float32, "float64": torch.float64, "bfloat16": torch.bfloat16,
           "bf16": torch.bfloat16, "float16": torch.float16, "fp16": torch.float16}


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
    device: str = "cpu"
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
        """JSON-serialisable fields, with ``fingerprint``."""
        return {**asdict(self), "transcripts": list(self.transcripts), "fingerprint": self.fingerprint}


@dataclass(frozen=True)
class HFTwin:
    """The HF model a TransformerLens model was converted from (a plain holder, so it is not a submodule)."""

    model: PreTrainedModel


def resolve_device(device: str | torch.device = "auto") -> str:
    """The device lens loads onto: ``"auto"`` is CUDA when present, else CPU.

    Args:
        device: ``"auto"``, or any torch device string (``"cpu"``, ``"cuda"``, ``"cuda:1"``).

    Returns:
        A torch device string.

    Example:
        >>> resolve_device("cpu")
        'cpu'
    """
    if str(device) == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    try:
        return str(torch.device(device))
    except (RuntimeError, TypeError) as e:
        raise LensLoadError(f"device {device!r} is not a torch device; valid: 'auto', 'cpu', 'cuda', 'cuda:N'") from e


def resolve_dtype(dtype: str | torch.dtype = "auto", device: str = "cpu") -> torch.dtype:
    """The parameter dtype lens loads in: ``"auto"`` is bfloat16 on CUDA and float32 on CPU.

    Args:
        dtype: ``"auto"``, a torch dtype, or its name (``"float32"``, ``"bfloat16"``, ``"bf16"``, ``"float16"``).
        device: The resolved device (see `resolve_device`).

    Returns:
        A torch dtype.

    Example:
        >>> resolve_dtype("auto", "cpu"), resolve_dtype("bf16")
        (torch.float32, torch.bfloat16)
    """
    if isinstance(dtype, torch.dtype):
        if dtype not in PARITY_TOL:
            raise LensLoadError(f"dtype {dtype} is not supported; valid: {', '.join(map(str, PARITY_TOL))} or 'auto'")
        return dtype
    if dtype == "auto":
        return torch.bfloat16 if str(device).startswith("cuda") else torch.float32
    if dtype not in _DTYPES:
        raise LensLoadError(f"dtype {dtype!r} is unknown; valid: 'auto', {', '.join(map(repr, _DTYPES))}")
    return _DTYPES[dtype]


def load_model(path_or_model: str | Path | PreTrainedModel, *, tokenizer: PreTrainedTokenizerBase | None = None,
               adapter: str | Path | None = None, base: str | Path | None = None, allow_other_base: bool = False,
               dtype: str | torch.dtype = "auto", device: str = "auto", n_ctx: int | None = None,
               backend: str = "hooked", check_parity: bool = True, parity_tol: float | None = None,
               keep_hf: bool = False):
    """A TransformerLens model of a local HF causal LM, checked against HF, with ``model.lens_provenance``.

    Nothing is downloaded: the model, tokenizer and any adapter base must be local directories.

    Args:
        path_or_model: A saved HF model dir, a PEFT adapter dir (merged into its base), or an in-memory
            ``PreTrainedModel`` (then ``tokenizer`` is required; it is not modified: the bridge backend and an
            adapter merge work on a copy).
        tokenizer: The tokenizer; default: the one saved in the model dir (or the adapter dir, if it has one).
        adapter: A PEFT adapter dir to merge into ``path_or_model``.
        base: The base model dir of an adapter; default: the one named in its ``adapter_config.json``.
        allow_other_base: Load an adapter onto a base whose fingerprint differs from the one recorded in its
            ``base_model.json`` (or, with no record, onto a base other than the one its config names).
        dtype: Parameter dtype; ``"auto"`` is bfloat16 on CUDA and float32 on CPU (see `resolve_dtype`).
        device: ``"auto"`` (CUDA when present), ``"cpu"``, ``"cuda"``, ``"cuda:N"``.
        n_ctx: Context length; default: the HF config's maximum.
        backend: ``"hooked"`` (a ``HookedTransformer``; the architectures in `lens.architectures.SUPPORTED`) or
            ``"bridge"`` (a ``TransformerBridge`` in compatibility mode; any architecture TransformerLens' bridge
            supports). Both expose the same hook names (``blocks.{L}.hook_resid_post``, ...).
        check_parity: Check finite weights and log-prob parity with HF (default True).
        parity_tol: Max |Δ log-prob| accepted; default `PARITY_TOL` for the dtype.
        keep_hf: Keep the HF model as ``model.lens_hf.model`` (``"hooked"`` backend only), so `lens.generate` can
            steer it through forward hooks, about twice as fast on CPU; it holds a second copy of the weights.

    Returns:
        The TransformerLens model in eval mode, with ``lens_provenance`` (a `ModelProvenance`) attached.

    Raises:
        LensLoadError: one sentence naming the problem: missing dir, corrupt weights file, architecture not
            convertible, adapter on another base, vocab mismatch, non-finite weights or logits, parity failure.

    Example:
        >>> import tempfile
        >>> from tokenizers import Tokenizer, models, pre_tokenizers
        >>> from transformers import AutoModelForCausalLM, GPT2Config, PreTrainedTokenizerFast
        >>> words = "<s> the quick brown fox jumps over lazy dog".split()
        >>> tk = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="<s>"))
        >>> tk.pre_tokenizer = pre_tokenizers.Whitespace()
        >>> d = tempfile.mkdtemp()
        >>> _ = PreTrainedTokenizerFast(tokenizer_object=tk, bos_token="<s>").save_pretrained(d)
        >>> gpt2 = GPT2Config(n_layer=2, n_embd=32, n_head=4, vocab_size=len(words), bos_token_id=0, eos_token_id=0)
        >>> AutoModelForCausalLM.from_config(gpt2).save_pretrained(d)
        >>> model = load_model(d, device="cpu")
        >>> model.lens_provenance.architecture, model.lens_provenance.parity_max_abs_logprob_diff < 1e-3
        ('GPT2LMHeadModel', True)
    """
    if backend not in BACKENDS:
        raise LensLoadError(f"backend {backend!r} is unknown; valid: {', '.join(map(repr, BACKENDS))}")
    device = resolve_device(device)
    dtype = resolve_dtype(dtype, device)
    hf, tok, source = _resolve_hf(path_or_model, tokenizer=tokenizer, adapter=adapter, base=base,
                                  allow_other_base=allow_other_base, dtype=dtype, device=device, backend=backend)
    _check_vocab(hf, tok, source["name"])
    tok = _disk_backed(tok)
    arch = architecture_of(hf.config, hf)
    if backend == "hooked" and arch not in SUPPORTED:
        raise unsupported(arch)
    prepend_bos = tok.bos_token_id is not None and prepends_bos(arch)
    reference = None
    if check_parity:
        _check_finite_weights(hf, source["name"])
        reference = _reference(hf, tok, str(hf.device), source["name"])
    if backend == "hooked":
        model = _hooked_from_hf(hf, tok, arch=arch, dtype=dtype, device=device, n_ctx=n_ctx,
                                default_prepend_bos=prepend_bos)
    else:
        model = _bridge_from_hf(hf if source["owned"] else copy.deepcopy(hf), tok, source, dtype=dtype, device=device,
                                n_ctx=n_ctx, default_prepend_bos=prepend_bos)
    if keep_hf and backend != "hooked":
        raise LensLoadError("keep_hf=True needs backend='hooked' (the bridge wraps the HF model itself)")
    twin = HFTwin(hf) if keep_hf else None
    del hf  # the HF copy is no longer needed unless kept (the bridge keeps its own wrapped model)
    _free_memory()
    parity = _parity(model, tok, reference, parity_tol if parity_tol is not None else PARITY_TOL[dtype],
                     source["name"], dtype) if check_parity else None
    model.lens_provenance = ModelProvenance(
        path=source["path"], adapter=source["adapter"], base=source["base"], weights_sha256=source["hashes"],
        transcripts=tuple(source["transcripts"]), backend=backend, dtype=str(dtype).removeprefix("torch."),
        device=device, architecture=arch, default_prepend_bos=bool(model.cfg.default_prepend_bos),
        parity_max_abs_logprob_diff=parity)
    if twin is not None:
        model.lens_hf = twin
    return model


def _resolve_hf(path_or_model, *, tokenizer, adapter, base, allow_other_base, dtype, device, backend):
    """The HF model (adapter merged), its tokenizer and a description of where both came from."""
    source = {"path": None, "adapter": None, "base": None, "hashes": {}, "transcripts": [], "name": "the model",
              "owned": False}
    if isinstance(path_or_model, PreTrainedModel):
        if tokenizer is None:
            raise LensLoadError("an in-memory model needs tokenizer=...; pass the tokenizer it was trained with")
        hf = path_or_model
        if adapter is not None:
            adapter = Path(adapter)
            _check_adapter_dir(adapter)
            warnings.warn(f"the base of adapter {adapter} is an in-memory model, which lens cannot fingerprint; "
                          f"make sure it is the model the adapter was trained on", stacklevel=3)
            source["owned"] = True  # the merge works on a copy; the caller's model stays as it was
            return _merge_adapter(copy.deepcopy(hf), adapter, tokenizer, source, base_name="the in-memory model")
        return hf.eval(), tokenizer, source
    path = Path(path_or_model)
    if not path.is_dir():
        raise LensLoadError(f"{path}: no such model directory; pass a saved HF model dir or a PEFT adapter dir")
    if (path / "adapter_config.json").exists():
        if adapter is not None:
            raise LensLoadError(f"{path} is itself a PEFT adapter; pass it alone (base=... names its base model)")
        adapter, base_dir = path, _adapter_base(path, base)
    elif (path / "config.json").exists():
        if base is not None and adapter is None:
            raise LensLoadError(f"base={base} was given but {path} is a full model, not an adapter; drop base=")
        base_dir = path
    else:
        raise LensLoadError(f"{path}: neither config.json nor adapter_config.json found; not a model or adapter dir")
    if adapter is not None:
        _check_adapter_dir(Path(adapter))
        _check_base(Path(adapter), base_dir, allow_other_base)
    named = (json.loads((base_dir / "config.json").read_text()).get("architectures") or [None])[0]
    if backend == "hooked" and named is not None and named not in SUPPORTED:
        raise unsupported(named)  # before loading gigabytes of weights
    hf = _load_hf_dir(base_dir, dtype, device)
    source.update(path=str(path.resolve()), hashes=_weight_hashes(base_dir, "model"), owned=True,
                  transcripts=_trained_on(Path(adapter) if adapter is not None else base_dir), name=str(path))
    if adapter is None:
        tok = tokenizer if tokenizer is not None else _load_tokenizer(base_dir)
        return hf, tok, source
    adapter = Path(adapter)
    if tokenizer is None:
        tokenizer = _load_tokenizer(adapter if (adapter / "tokenizer_config.json").exists() else base_dir)
    source.update(base=str(base_dir.resolve()))
    return _merge_adapter(hf, adapter, tokenizer, source, base_name=str(base_dir))


def _check_adapter_dir(adapter: Path) -> None:
    if not (adapter / "adapter_config.json").exists():
        raise LensLoadError(f"{adapter}: no adapter_config.json; not a PEFT adapter dir")
    check_weight_files(adapter)


def _adapter_base(adapter: Path, base: str | Path | None) -> Path:
    """The adapter's base model dir: ``base=`` if given, else the local dir its adapter_config.json names."""
    if base is None:
        named, named_dir = _named_base(adapter)
        if not named:
            raise LensLoadError(f"{adapter}: adapter_config.json names no base model; pass base=<model dir>")
        if named_dir is None:
            raise LensLoadError(f"{adapter}: its base model {named!r} is not a local model dir (offline: nothing is "
                                f"downloaded); pass base=<local dir of {named}>")
        return named_dir
    base = Path(base)
    if not (base / "config.json").exists():
        raise LensLoadError(f"base={base}: no config.json; not a saved HF model dir")
    return base


def _named_base(adapter: Path) -> tuple[str | None, Path | None]:
    """The base named in adapter_config.json, and its local dir (absolute, or relative to the adapter) if any."""
    named = json.loads((adapter / "adapter_config.json").read_text()).get("base_model_name_or_path")
    candidates = [Path(named), adapter / named] if named else []
    return named, next((c for c in candidates if (c / "config.json").exists()), None)


def _check_base(adapter: Path, base_dir: Path, allow_other_base: bool) -> None:
    """Refuse an adapter on a base other than the one it was trained on (``allow_other_base``: warn instead).

    With a ``base_model.json`` record the base's fingerprint must match it; without one the base must be the dir
    named in adapter_config.json, and a warning says the base could not be verified.
    """
    recorded = read_base_record(adapter)
    if recorded is None:
        named, named_dir = _named_base(adapter)
        if named_dir is not None and named_dir.resolve() == base_dir.resolve():
            warnings.warn(f"adapter {adapter} has no {BASE_RECORD}, so its base cannot be verified; loading it on "
                          f"{base_dir}, the base its adapter_config.json names", stacklevel=4)
            return
        msg = f"adapter {adapter} has no {BASE_RECORD} and its adapter_config.json names base {named!r}, not {base_dir}"
    else:
        why = recorded.difference(fingerprint_model(base_dir))
        if why is None:
            return
        msg = (f"adapter {adapter} was trained on base {recorded.path}, but {base_dir} has {why} compared with that "
               f"base's recorded fingerprint")
    if not allow_other_base:
        raise LensLoadError(f"{msg}; pass the base it was trained on, or allow_other_base=True to load it anyway")
    warnings.warn(f"{msg}; loading it anyway (allow_other_base=True)", stacklevel=4)


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
                            f"pass base=<the model it was trained on>") from e
    source.update(adapter=str(adapter.resolve()), hashes={**source["hashes"], **_weight_hashes(adapter, "adapter")},
                  transcripts=source["transcripts"] or _trained_on(adapter), name=str(adapter))
    return merged.eval(), tok, source


def _load_hf_dir(path: Path, dtype: torch.dtype, device: str) -> PreTrainedModel:
    check_weight_files(path)
    try:
        hf = AutoModelForCausalLM.from_pretrained(str(path), dtype=dtype, attn_implementation="eager",
                                                  local_files_only=True,
                                                  device_map=device if device != "cpu" else None)
    except (OSError, ValueError, KeyError) as e:
        raise LensLoadError(f"{path}: not a loadable HF causal LM ({str(e).splitlines()[0][:200]})") from e
    return hf.eval()


def _load_tokenizer(path: Path) -> PreTrainedTokenizerBase:
    try:
        return AutoTokenizer.from_pretrained(str(path), local_files_only=True)
    except (OSError, ValueError) as e:
        raise LensLoadError(f"{path}: no tokenizer saved there ({str(e).splitlines()[0][:200]}); "
                            f"pass tokenizer=...") from e


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


def _hooked_from_hf(hf, tok, *, arch, dtype, device, n_ctx, default_prepend_bos):
    from transformer_lens import HookedTransformer

    cfg = hooked_config(hf.config, dtype=dtype, device=device, n_ctx=n_ctx, default_prepend_bos=default_prepend_bos,
                        arch=arch)
    cfg.d_vocab = cfg.d_vocab_out = hf.get_input_embeddings().weight.shape[0]
    with warnings.catch_warnings(), quiet_logging():
        warnings.simplefilter("ignore")
        model = HookedTransformer(cfg, tokenizer=tok, move_to_device=False)
        state = {k: v.to(dtype) for k, v in convert_weights(hf, cfg).items()}
        model.load_and_process_state_dict(state, **processing_flags(cfg))
    model.cfg.default_prepend_bos = cfg.default_prepend_bos
    _cast_parameters(model, dtype)  # TL's MoE router is created in fp32 whatever cfg.dtype says
    return model.to(device, print_details=False).eval()


def _bridge_from_hf(hf, tok, source: dict, *, dtype, device, n_ctx, default_prepend_bos):
    """Boot a `TransformerBridge` around ``hf`` (which it rewraps in place) in compatibility mode."""
    from transformer_lens.model_bridge import TransformerBridge

    with warnings.catch_warnings(), quiet_logging():
        warnings.simplefilter("ignore")
        try:
            bridge = TransformerBridge.boot_transformers(source["path"] or "in-memory", hf_model=hf, device=device,
                                                         dtype=dtype, tokenizer=tok, n_ctx=n_ctx)
        except (ValueError, NotImplementedError, KeyError) as e:
            arch = architecture_of(hf.config, hf)
            raise LensLoadError(f"TransformerLens' bridge cannot load architecture {arch} "
                                f"({str(e).strip().splitlines()[0][:200]})") from e
        bridge.enable_compatibility_mode(disable_warnings=True)
    _cast_parameters(bridge, dtype)  # compatibility-mode folding leaves some fp32 parameters in a bf16 model
    bridge.cfg.default_prepend_bos = default_prepend_bos
    return bridge.eval()


def _cast_parameters(model: torch.nn.Module, dtype: torch.dtype) -> None:
    for p in model.parameters():
        if p.is_floating_point() and p.dtype != dtype:
            p.data = p.data.to(dtype)


def _free_memory() -> None:
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def parity_tokens(tok) -> list[torch.Tensor]:
    """Token ids of the fixed parity prompts (BOS first when the tokenizer has one).

    Args:
        tok: The model's tokenizer.

    Returns:
        One ``[1, pos]`` LongTensor per prompt in `PARITY_PROMPTS`.

    Example:
        >>> from tokenizers import Tokenizer, models
        >>> from transformers import PreTrainedTokenizerFast
        >>> tk = Tokenizer(models.WordLevel({"<s>": 0, "x": 1}, unk_token="x"))
        >>> [t.shape for t in parity_tokens(PreTrainedTokenizerFast(tokenizer_object=tk, bos_token="<s>"))]
        [torch.Size([1, 2]), torch.Size([1, 2]), torch.Size([1, 2])]
    """
    bos = [tok.bos_token_id] if tok.bos_token_id is not None else []
    return [torch.tensor([bos + tok(p, add_special_tokens=False)["input_ids"]]) for p in PARITY_PROMPTS]


def _check_finite_weights(hf: PreTrainedModel, name: str) -> None:
    for pname, p in hf.named_parameters():
        if not torch.isfinite(p).all():
            bad = int((~torch.isfinite(p)).sum())
            raise LensLoadError(f"{name} has non-finite weights: {bad} NaN/inf values in {pname}; the weights are "
                                f"corrupt (or training diverged); load a finite checkpoint")


@torch.no_grad()
def _logprobs(model, tok, device: str) -> list[torch.Tensor]:
    """Float32 CPU log-probs of ``model`` (HF or TransformerLens) on each parity prompt."""
    out = []
    for ids in parity_tokens(tok):
        logits = model(ids.to(device))
        logits = logits.logits if hasattr(logits, "logits") else logits
        out.append(logits.float().log_softmax(-1).cpu())
    return out


def _reference(hf, tok, device: str, name: str) -> list[torch.Tensor]:
    """The HF model's own log-probs on the parity prompts; an HF model that cannot run them is refused."""
    try:
        return _logprobs(hf, tok, device)
    except (RuntimeError, ValueError, IndexError) as e:
        raise LensLoadError(f"{name}: the HF model itself fails on the parity prompts "
                            f"({type(e).__name__}: {str(e).strip().splitlines()[0][:160]}); its config is "
                            f"inconsistent with its weights or with transformers' implementation") from e


def _parity(model, tok, reference: list[torch.Tensor], tol: float, name: str, dtype: torch.dtype) -> float:
    """Max |Δ log-prob| between the TransformerLens model and the HF reference; raises past ``tol``."""
    if not all(torch.isfinite(r).all() for r in reference):
        raise LensLoadError(f"parity check failed for {name}: the HF model itself gives non-finite log-probs on "
                            f"the parity prompts; its weights or config are broken")
    got = _logprobs(model, tok, model.cfg.device)
    if not all(torch.isfinite(g).all() for g in got):
        raise LensLoadError(f"parity check failed for {name}: TransformerLens gives non-finite log-probs where HF "
                            f"gives finite ones; the conversion is wrong for this architecture/config")
    worst = max(float((r - g).abs().max()) for r, g in zip(reference, got))
    if not worst <= tol:
        raise LensLoadError(f"parity check failed for {name}: max |Δ log-prob| TransformerLens vs HF = {worst:.3g} "
                            f"> tolerance {tol:g} for {str(dtype).removeprefix('torch.')}; the conversion is wrong "
                            f"for this architecture/config")
    return worst
