"""Vectors out of lens into other steering tools, and theirs back in, always in the HF model's own residual basis.

**Where each format adds its vector.** All three formats name a vector by the HF decoder block whose *output* it is
added to (``model.model.layers[L]`` / ``transformer.h[L]``, i.e. HF ``hidden_states[L + 1]``), which is lens's
``blocks.{L}.hook_resid_post``:

- steering-vectors: ``SteeringVector(layer_activations={L: v}, layer_type="decoder_block")`` adds ``v`` to the
  output of decoder block ``L``.
- repeng: ``ControlVector(model_type, directions={L: v})``; ``ControlModel`` adds ``directions[L]`` to the output
  of layer ``L`` (``repeng/extract.py`` reads it from ``hidden_states[L + 1]``), and ``export_gguf`` writes it as
  tensor ``direction.{L}``, with ``controlvector.model_hint = model_type`` and ``controlvector.layer_count`` = the
  number of tensors.
- llama.cpp (``--control-vector``): tensor ``direction.{il}`` lands in ``tensors[il]`` (ggml-org/llama.cpp
  ``src/llama-adapter.cpp``, ``llama_adapter_cvec::apply``: slot ``il`` takes the data of ``direction.il``) and
  ``build_cvec(cur, il)`` adds it right after block ``il``'s last residual add, at every position
  (``src/models/gpt2.cpp``, ``llama.cpp``, ...: ``cur = ggml_add(ctx0, cur, ffn_inp); cur = build_cvec(cur, il);
  cb(cur, "l_out", il)``). ``common/common.cpp`` (``common_control_vector_load_one``) rejects ``direction.0``
  ("invalid (zero) direction tensor layer index"): block 0's output cannot be steered by llama.cpp. The loader
  does not read the metadata keys.

A vector read at ``mlp_out`` is written where ``resid_post`` is (the MLP output joins the stream at the block's end),
and ``resid_pre`` of block L is block L − 1's output; other sites lie inside a block and cannot be exported.

**The residual basis.** TransformerLens's weight processing centres every weight that writes to the residual stream
of a LayerNorm model (GPT-2, GPT-J, NeoX, OPT, Bloom, Phi), so its residual is HF's minus its mean over ``d_model``
(measured on a tiny GPT-2: max |TL − HF| = 0.074, max |TL − centred HF| = 7e-7). Every reader of the stream is a
LayerNorm, which subtracts the mean first, so a vector's mean component does nothing in either model: the HF vector
of a TL vector ``v`` is ``v − mean(v)`` (adding ``v``, its centred copy or ``v + c`` through an HF hook gives the
same log-probs as lens's steering to 1e-6), and an HF vector enters lens centred the same way. TransformerBridge in
compatibility mode processes the weights the same way (same GPT-2: max |TL − centred HF| = 4e-7); without weight
processing TL's residual is HF's, and the centred vector still steers both identically. RMSNorm models (Llama,
Qwen, Mistral, Gemma) are not centred: there the two bases are the same. On tiny models of all 18 families lens
loads, an exported vector through a plain HF hook gives lens's steered log-probs to 1e-6 (Gemma 2: 1.6e-5).
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import torch
from jaxtyping import Float
from torch import Tensor

from lens.activations import hook_name
from lens.errors import LensInputError
from lens.io import atomic_save_tensors, atomic_write_with
from lens.subspace import AgentSubspace

FORMATS = {"gguf": ".gguf", "steering-vectors": ".safetensors"}
LAYER_TYPE = "decoder_block"
_SITE = re.compile(r"blocks\.(\d+)\.hook_(\w+)")


def centres_residual(model) -> bool:
    """Whether the model's residual stream is read only through mean-subtracting norms (LayerNorm), so that a
    vector's mean over ``d_model`` has no effect and lens's and HF's bases differ by centring.

    Args:
        model: A lens model.

    Returns:
        True for LayerNorm models (GPT-2, NeoX, OPT, Bloom, GPT-J, Phi), False for RMSNorm ones.

    Example:
        >>> lens.export.centres_residual(model)  # a Llama  # doctest: +SKIP
        False
    """
    return getattr(model.cfg, "normalization_type", None) in ("LN", "LNPre")


def _centred(model, v: Float[Tensor, "d_model"]) -> Float[Tensor, "d_model"]:
    return v - v.mean() if centres_residual(model) else v


def _block_shift(model, site: str) -> int:
    """How far a write at ``site`` of block L is from block L's output: 0 if it is the same write (``resid_post``;
    ``mlp_out``, which nothing reads before it joins the stream; ``attn_out`` when attention and MLP run in parallel),
    1 for ``resid_pre`` (block L − 1's output); other sites are inside the block, where no format writes."""
    if site in ("resid_post", "mlp_out") or (site == "attn_out" and getattr(model.cfg, "parallel_attn_mlp", False)):
        return 0
    if site == "resid_pre":
        return 1
    raise LensInputError(f"a vector read at {site!r} is written inside a block, where steering-vectors' decoder_block, "
                         f"repeng and llama.cpp cannot add it; export a resid_post, resid_pre or mlp_out vector")


def _blocks(model, subspace: AgentSubspace, layers) -> list[int]:
    """HF decoder blocks whose output the vector is added to (the site of ``subspace`` at ``layers``)."""
    site = _SITE.fullmatch(subspace.hook_name)
    if site is None:
        raise LensInputError(f"{subspace.hook_name} is not a TransformerLens block hook (blocks.L.hook_<site>)")
    n = model.cfg.n_layers
    if layers is None:
        layers = [subspace.layer]
    elif layers == "all":
        layers = list(range(n))
    elif isinstance(layers, int):
        layers = [layers]
    layers = list(layers)
    if not layers or any(isinstance(l, bool) or not isinstance(l, int) or not -n <= l < n for l in layers):
        raise LensInputError(f"layers {layers!r} are invalid: this model has layers 0..{n - 1} (negatives count "
                             f"from the last; or pass 'all')")
    layers = [l % n for l in layers]
    shift = _block_shift(model, site.group(2))
    if shift and 0 in layers:
        raise LensInputError("blocks.0.hook_resid_pre is the embedding output, which no export format addresses "
                             "(they add to a block's output); use layers >= 1")
    return sorted({l - shift for l in layers})


def _vector(subspace: AgentSubspace, alpha: float | Sequence[float]) -> Float[Tensor, "d_model"]:
    """``alpha * direction`` (k = 1) or ``sum_i alpha[i] * basis[i]`` (k > 1, one strength per direction)."""
    try:
        strengths = torch.as_tensor(alpha, dtype=torch.float64).reshape(-1).tolist()
    except (TypeError, ValueError, RuntimeError):
        raise LensInputError(f"alpha {alpha!r} must be a number or one number per direction") from None
    if not all(math.isfinite(a) for a in strengths):
        raise LensInputError(f"alpha {alpha!r} must be finite numbers")
    if len(strengths) != subspace.k:
        raise LensInputError(f"this subspace has k={subspace.k} directions, so alpha needs {subspace.k} strengths "
                             f"(one per direction), got {len(strengths)}")
    return (torch.tensor(strengths, dtype=torch.float32) @ subspace.basis.detach().float().cpu())


def hf_vectors(model, subspace: AgentSubspace, *, alpha: float | Sequence[float] = 1.0,
               layers: int | Sequence[int] | str | None = None) -> dict[int, Float[Tensor, "d_model"]]:
    """The vectors to add to HF block outputs so that an HF model steers as ``lens.steer(model, subspace, alpha)``.

    Args:
        model: The lens model the subspace was found on (its norm type decides the basis change).
        subspace: What to export: read at ``blocks.L.hook_resid_post``, ``hook_mlp_out`` (the same write), or
            ``hook_resid_pre`` (block L − 1's output); ``attn_out`` only where attention and MLP run in parallel.
        alpha: The strength; with a k>1 subspace, one strength per direction.
        layers: Layers to write at, as in `lens.steer` (default: where the subspace was read; ``"all"`` for every
            layer; negatives count from the last).

    Returns:
        ``{L: v}``: add ``v`` (float32, HF basis) to the output of HF decoder block ``L`` at every position.

    Example:
        >>> vectors = lens.export.hf_vectors(model, sub, alpha=4.0)  # doctest: +SKIP
        >>> handle = hf.model.layers[sub.layer].register_forward_hook(  # doctest: +SKIP
        ...     lambda mod, args, out: out + vectors[sub.layer])
    """
    if subspace.d_model != model.cfg.d_model:
        raise LensInputError(f"the subspace has width {subspace.d_model} but this model's d_model is "
                             f"{model.cfg.d_model}; it was found on another model")
    v = _centred(model, _vector(subspace, alpha))
    return {block: v.clone() for block in _blocks(model, subspace, layers)}


def hf_model_type(model) -> str:
    """The HF ``config.model_type`` of a lens model, which repeng records and GGUF files carry as their hint.

    Args:
        model: A lens model (its recorded architecture, else ``cfg.original_architecture``).

    Returns:
        E.g. ``"llama"``, ``"gpt2"``, ``"qwen2"``.

    Example:
        >>> lens.export.hf_model_type(model)  # doctest: +SKIP
        'llama'
    """
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    prov = getattr(model, "lens_provenance", None)
    arch = (prov.architecture if prov is not None and prov.architecture else None) or model.cfg.original_architecture
    names = {cls: name for name, cls in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES.items() if isinstance(cls, str)}
    if arch not in names:
        raise LensInputError(f"cannot tell the HF model_type of architecture {arch!r}; pass model_type=...")
    return names[arch]


def to_steering_vectors(model, subspace: AgentSubspace, *, alpha: float | Sequence[float] = 1.0,
                        layers: int | Sequence[int] | str | None = None) -> dict[str, Any]:
    """The keyword arguments of a steering-vectors ``SteeringVector``.

    Args:
        model: The lens model the subspace was found on.
        subspace: What to export.
        alpha: Strength (one per direction when k>1); the library's ``multiplier`` then scales it further.
        layers: Layers to write at (default: where the subspace was read).

    Returns:
        ``{"layer_activations": {L: tensor}, "layer_type": "decoder_block"}``.

    Example:
        >>> kwargs = lens.export.to_steering_vectors(model, sub, alpha=4.0)  # doctest: +SKIP
        >>> # steering_vectors.SteeringVector(**kwargs).apply(hf_model)
    """
    return {"layer_activations": hf_vectors(model, subspace, alpha=alpha, layers=layers), "layer_type": LAYER_TYPE}


def to_repeng(model, subspace: AgentSubspace, *, alpha: float | Sequence[float] = 1.0,
              layers: int | Sequence[int] | str | None = None, model_type: str | None = None) -> dict[str, Any]:
    """The fields of a repeng ``ControlVector``.

    Args:
        model: The lens model the subspace was found on.
        subspace: What to export.
        alpha: Strength (one per direction when k>1); repeng's coefficient then scales it further.
        layers: Layers to write at (default: where the subspace was read).
        model_type: HF ``config.model_type`` to record (default: derived from the model's architecture).

    Returns:
        ``{"model_type": str, "directions": {L: float32 ndarray}}``.

    Example:
        >>> fields = lens.export.to_repeng(model, sub)  # doctest: +SKIP
        >>> # repeng.ControlVector(**fields)
    """
    vectors = hf_vectors(model, subspace, alpha=alpha, layers=layers)
    return {"model_type": model_type or hf_model_type(model),
            "directions": {l: v.numpy().astype(np.float32) for l, v in vectors.items()}}


def _meta(subspace: AgentSubspace, alpha, fmt: str) -> str:
    strengths = torch.as_tensor(alpha, dtype=torch.float64).reshape(-1).tolist()
    return json.dumps({"format": fmt, "alpha": strengths[0] if len(strengths) == 1 else strengths,
                       "hook_name": subspace.hook_name, "position": subspace.position, "method": subspace.method,
                       "agent": subspace.agent, "persona": subspace.persona, "normalization": subspace.normalization,
                       "stats": subspace.stats, "provenance": subspace.provenance}, default=str)


def _format_of(path: Path, fmt: str | None) -> str:
    if fmt is None:
        fmt = next((f for f, suffix in FORMATS.items() if path.suffix == suffix), None)
        if fmt is None:
            raise LensInputError(f"{path}: cannot tell the format from the suffix {path.suffix!r}; use .gguf "
                                 f"(llama.cpp / repeng) or .safetensors (steering-vectors), or pass format=...")
    if fmt not in FORMATS:
        raise LensInputError(f"format {fmt!r} is unknown; valid: {', '.join(FORMATS)}")
    return fmt


def export_vector(model, subspace: AgentSubspace, path: str | Path, *, alpha: float | Sequence[float] = 1.0,
                  layers: int | Sequence[int] | str | None = None, format: str | None = None,
                  model_type: str | None = None) -> Path:
    """Write a steering vector for other tools, in the HF model's basis, atomically.

    ``.gguf``: a llama.cpp control vector (``general.architecture = "controlvector"``, ``controlvector.model_hint``
    = the HF model_type, ``controlvector.layer_count`` = number of tensors, F32 tensors ``direction.{L}``), which is
    also repeng's ``export_gguf`` layout (``ControlVector.import_gguf`` reads it). ``.safetensors``: the
    steering-vectors layout, tensors ``layer_activations.{L}`` with ``layer_type`` in the metadata (readable without
    torch through ``safetensors.numpy``). Both carry the subspace's description under the ``lens.subspace`` key.

    Args:
        model: The lens model the subspace was found on.
        subspace: What to export.
        path: Output file; its suffix picks the format unless ``format`` is given.
        alpha: Strength baked into the file (one per direction when k>1); tools scale it further.
        layers: Layers to write at (default: where the subspace was read). GGUF cannot hold layer 0.
        format: ``"gguf"`` or ``"steering-vectors"``.
        model_type: HF ``config.model_type`` for the GGUF hint (default: derived from the architecture).

    Returns:
        The path written.

    Example:
        >>> lens.export_vector(model, sub, "agent2.gguf", alpha=4.0)  # doctest: +SKIP
        >>> # llama-cli -m model.gguf --control-vector agent2.gguf
    """
    path = Path(path)
    fmt = _format_of(path, format)
    vectors = hf_vectors(model, subspace, alpha=alpha, layers=layers)
    meta = _meta(subspace, alpha, fmt)
    if fmt == "steering-vectors":
        return atomic_save_tensors(path, {f"layer_activations.{l}": v for l, v in vectors.items()},
                                   metadata={"layer_type": LAYER_TYPE, "lens.subspace": meta})
    if 0 in vectors:
        raise LensInputError("llama.cpp cannot steer block 0's output (it rejects a direction.0 tensor); export at "
                             "layers >= 1 or use the steering-vectors format")
    import gguf

    hint = model_type or hf_model_type(model)

    def write(tmp: Path) -> None:
        writer = gguf.GGUFWriter(str(tmp), "controlvector")
        writer.add_string("controlvector.model_hint", hint)
        writer.add_uint32("controlvector.layer_count", len(vectors))
        writer.add_string("lens.subspace", meta)
        for layer, v in vectors.items():
            writer.add_tensor(f"direction.{layer}", v.numpy().astype(np.float32))
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()

    return atomic_write_with(path, write)


def read_gguf(path: str | Path) -> tuple[dict[int, np.ndarray], dict[str, Any]]:
    """The ``direction.{L}`` tensors of a GGUF control vector and its metadata (string and number fields).

    Args:
        path: A ``.gguf`` control vector (llama.cpp, repeng or lens).

    Returns:
        ``({L: float32 ndarray}, {key: value})``.

    Example:
        >>> directions, meta = lens.export.read_gguf("agent2.gguf")  # doctest: +SKIP
        >>> meta["general.architecture"], sorted(directions)  # a vector exported at layer 2  # doctest: +SKIP
        ('controlvector', [2])
    """
    import gguf

    try:
        reader = gguf.GGUFReader(str(path))
    except (OSError, ValueError) as e:
        raise LensInputError(f"{path}: not a readable GGUF file ({str(e).splitlines()[0][:160]})") from e
    meta = {}
    for key, field in reader.fields.items():
        if len(field.types) == 1:
            value = field.contents()
            meta[key] = value
    if meta.get("general.architecture") != "controlvector":
        raise LensInputError(f"{path}: general.architecture is {meta.get('general.architecture')!r}, not "
                             f"'controlvector'; this is not a control vector file")
    directions = {}
    for tensor in reader.tensors:
        prefix, _, index = tensor.name.partition(".")
        if prefix != "direction" or not index.isdigit():
            raise LensInputError(f"{path}: tensor {tensor.name!r} is not named direction.<layer>")
        directions[int(index)] = np.array(tensor.data, dtype=np.float32).reshape(-1)
    return directions, meta


def _read_steering_vectors(path: Path) -> tuple[dict[int, np.ndarray], dict[str, Any]]:
    from safetensors import safe_open

    try:
        with safe_open(str(path), "np") as f:
            meta = dict(f.metadata() or {})
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as e:  # safetensors raises its own error type for a corrupt header
        raise LensInputError(f"{path}: not a readable safetensors file ({str(e).splitlines()[0][:160]})") from e
    if meta.get("layer_type", LAYER_TYPE) != LAYER_TYPE:
        raise LensInputError(f"{path}: layer_type {meta['layer_type']!r} is not supported; lens reads vectors added "
                             f"to decoder block outputs ({LAYER_TYPE!r})")
    directions = {}
    for key, value in tensors.items():
        prefix, _, index = key.rpartition(".")
        if prefix != "layer_activations" or not index.isdigit():
            raise LensInputError(f"{path}: tensor {key!r} is not named layer_activations.<layer>")
        directions[int(index)] = value.astype(np.float32).reshape(-1)
    return directions, meta


def _from_object(source) -> tuple[dict[int, Any], dict[str, Any], str]:
    """Directions of an in-memory steering-vectors / repeng vector (their objects or the dicts above)."""
    get = (lambda k: source.get(k)) if isinstance(source, Mapping) else (lambda k: getattr(source, k, None))
    if get("layer_activations") is not None:
        layer_type = get("layer_type") or LAYER_TYPE
        if layer_type != LAYER_TYPE:
            raise LensInputError(f"layer_type {layer_type!r} is not supported; lens reads {LAYER_TYPE!r} vectors")
        return dict(get("layer_activations")), {}, "steering-vectors"
    if get("directions") is not None:
        return dict(get("directions")), {"controlvector.model_hint": get("model_type")}, "repeng"
    raise LensInputError("source must be a .gguf or .safetensors path, a steering-vectors vector (layer_activations) "
                         "or a repeng ControlVector (model_type, directions)")


def import_vector(model, source, *, layer: int | None = None, format: str | None = None) -> AgentSubspace:
    """Read a steering vector made for an HF model into lens's basis, as an `AgentSubspace` that `lens.steer`
    applies with the same effect at ``alpha=1``.

    Args:
        model: The lens model to use it on (its norm type decides the basis change; its width is checked).
        source: A ``.gguf`` (llama.cpp / repeng) or ``.safetensors`` (steering-vectors) path, a steering-vectors
            ``SteeringVector`` or the dict of `to_steering_vectors`, or a repeng ``ControlVector`` or the dict of
            `to_repeng`.
        layer: Which HF block's vector to take when the source holds several.
        format: ``"gguf"`` or ``"steering-vectors"`` for a path whose suffix does not say.

    Returns:
        A k=1 `AgentSubspace` at ``blocks.{layer}.hook_resid_post`` whose direction is the file's vector (not
        renormalised). A file written by lens also restores the agent, persona, method and statistics.

    Example:
        >>> sub2 = lens.import_vector(model, "agent2.gguf")  # doctest: +SKIP
        >>> with lens.steer(model, sub2, 1.0, positions="all"):  # doctest: +SKIP
        ...     logits = model(tokens)
    """
    if isinstance(source, (str, Path)):
        path = Path(source)
        fmt = _format_of(path, format)
        if not path.is_file():
            raise LensInputError(f"{path}: no such file")
        directions, meta = read_gguf(path) if fmt == "gguf" else _read_steering_vectors(path)
        origin = str(path.resolve())
    else:
        directions, meta, fmt = _from_object(source)
        origin = f"<in-memory {fmt} vector>"
    if not directions:
        raise LensInputError(f"{origin}: holds no vectors")
    if layer is None:
        if len(directions) > 1:
            raise LensInputError(f"{origin} holds vectors for blocks {sorted(directions)}; pass layer=<one of them>")
        layer = next(iter(directions))
    if layer not in directions:
        raise LensInputError(f"{origin} has no vector for block {layer}; it has {sorted(directions)}")
    if not 0 <= layer < model.cfg.n_layers:
        raise LensInputError(f"{origin}: block {layer} does not exist in this model "
                             f"(layers 0..{model.cfg.n_layers - 1})")
    v = torch.tensor(np.array(directions[layer], dtype=np.float32)).reshape(-1)
    if v.shape[0] != model.cfg.d_model:
        raise LensInputError(f"{origin}: the vector has width {v.shape[0]} but this model's d_model is "
                             f"{model.cfg.d_model}; it was made for another model")
    if not torch.isfinite(v).all():
        raise LensInputError(f"{origin}: the vector for block {layer} has non-finite values")
    lens_meta = json.loads(meta["lens.subspace"]) if "lens.subspace" in meta else {}
    return AgentSubspace(
        basis=_centred(model, v)[None].contiguous(), layer=layer, hook_name=hook_name(layer),
        position=lens_meta.get("position", "end"), method=lens_meta.get("method", f"imported {fmt}"),
        agent=lens_meta.get("agent"), persona=lens_meta.get("persona"),
        normalization=f"file vector ({fmt}): alpha=1 adds it as written", stats=lens_meta.get("stats", {}),
        provenance={**lens_meta.get("provenance", {}), "imported_from": origin, "format": fmt, "hf_block": layer,
                    "alpha_at_export": lens_meta.get("alpha"),
                    "model_hint": meta.get("controlvector.model_hint")})
