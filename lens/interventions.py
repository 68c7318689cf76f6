"""Interventions as context managers: add α·direction (`steer`) or project a subspace out (`ablate`).

Both write at the hook where the subspace was read unless told otherwise, and restore the model on exit (also
after an exception). `steer` keys its position rule on *absolute* token positions, tracked across the forward
calls of a cached `model.generate` (each of which sees only the new tokens).
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from typing import Iterator, Sequence

import torch
from jaxtyping import Float
from torch import Tensor

from lens.activations import check_layer, hook_name
from lens.errors import LensInputError
from lens.subspace import AgentSubspace

POSITION_RULES = ("generated", "all", "prompt")
_MISSING = object()


def _basis(model, subspace: AgentSubspace | Tensor) -> Float[Tensor, "k d_model"]:
    basis = subspace.basis if isinstance(subspace, AgentSubspace) else torch.as_tensor(subspace)
    basis = basis[None] if basis.ndim == 1 else basis
    if basis.ndim != 2 or basis.shape[1] != model.cfg.d_model:
        raise LensInputError(f"the subspace has width {basis.shape[-1]} but this model's d_model is "
                             f"{model.cfg.d_model}; it was found on another model")
    return basis.to(device=model.cfg.device, dtype=model.cfg.dtype)


def _layers(model, subspace, layer) -> list[int]:
    if layer is None:
        if not isinstance(subspace, AgentSubspace):
            raise LensInputError("a raw direction tensor carries no layer; pass layer=...")
        layer = subspace.layer
    if layer == "all":
        return list(range(model.cfg.n_layers))
    return [check_layer(model, l) for l in ([layer] if isinstance(layer, int) else layer)]


@dataclass
class _Offsets:
    """Absolute position of the current forward's first token, and the prompt length of the current generate."""

    offset: int = 0
    prompt_len: int | None = None
    fixed_prompt_len: int | None = None
    in_generate: bool = False


def _past_len(kwargs: dict) -> int:
    """How many positions the KV cache passed to this forward already holds (0 without a cache)."""
    cache = kwargs.get("past_kv_cache")
    if cache is not None and cache.entries and cache.entries[0].past_keys is not None:
        return cache.entries[0].past_keys.shape[1]
    cache = kwargs.get("past_key_values")
    return int(cache.get_seq_length()) if cache is not None and hasattr(cache, "get_seq_length") else 0


@contextmanager
def _patched(model, attr: str, wrapper) -> Iterator[None]:
    """Shadow ``model.attr`` with an instance attribute for the duration; restore exactly what was there."""
    prev = model.__dict__.get(attr, _MISSING)
    object.__setattr__(model, attr, wrapper)
    try:
        yield
    finally:
        if prev is _MISSING:
            object.__delattr__(model, attr)
        else:
            object.__setattr__(model, attr, prev)


@contextmanager
def _position_tracking(model, state: _Offsets) -> Iterator[None]:
    inner_forward, inner_generate = model.forward, model.generate

    def forward(*args, **kwargs):
        state.offset = _past_len(kwargs)
        return inner_forward(*args, **kwargs)

    def generate(*args, **kwargs):
        outer = (state.in_generate, state.prompt_len)
        state.in_generate, state.prompt_len = True, state.fixed_prompt_len
        try:
            return inner_generate(*args, **kwargs)
        finally:
            state.in_generate, state.prompt_len = outer

    with _patched(model, "forward", forward), _patched(model, "generate", generate):
        yield


def _alpha_tensor(alpha, model) -> Float[Tensor, "*batch"]:
    alpha = torch.as_tensor(alpha, dtype=model.cfg.dtype, device=model.cfg.device)
    if alpha.ndim > 1:
        raise LensInputError(f"alpha must be a number or a 1-D tensor with one value per batch row, "
                             f"got shape {tuple(alpha.shape)}")
    return alpha


@contextmanager
def steer(model, subspace: AgentSubspace | Tensor, alpha: float | Sequence[float] | Tensor, *,
          layer: int | Sequence[int] | str | None = None, positions: str = "generated",
          prompt_len: int | None = None) -> Iterator[None]:
    """Add ``alpha * subspace.direction`` at ``blocks.{layer}.hook_resid_post`` (default: where it was read).
    ``alpha`` may hold one value per batch row (sweep α in one batched generate). ``positions="generated"`` steers
    tokens at absolute positions >= the prompt length (``prompt_len``, else the prompt of each `model.generate`)."""
    if positions not in POSITION_RULES:
        raise LensInputError(f"positions {positions!r} is unknown; valid: {', '.join(POSITION_RULES)}")
    direction = _basis(model, subspace)[0]
    layers = _layers(model, subspace, layer)
    alpha = _alpha_tensor(alpha, model)
    state = _Offsets(fixed_prompt_len=prompt_len, prompt_len=prompt_len)

    def hook(resid: Float[Tensor, "batch pos d_model"], hook):
        batch, n_pos, _ = resid.shape
        if alpha.ndim == 1 and alpha.shape[0] != batch:
            raise LensInputError(f"alpha has {alpha.shape[0]} values but the batch has {batch} rows")
        if positions != "all" and state.prompt_len is None:
            if state.in_generate and state.offset == 0:
                state.prompt_len = n_pos
            else:
                raise LensInputError(f"positions={positions!r} outside model.generate needs prompt_len=...")
        absolute = torch.arange(state.offset, state.offset + n_pos, device=resid.device)
        mask = {"all": torch.ones_like(absolute, dtype=torch.bool),
                "generated": absolute >= (state.prompt_len or 0),
                "prompt": absolute < (state.prompt_len or 0)}[positions]
        scale = alpha.reshape(-1, 1, 1) if alpha.ndim == 1 else alpha
        return resid + scale * mask.to(resid.dtype)[None, :, None] * direction

    with _position_tracking(model, state), model.hooks(fwd_hooks=[(hook_name(l), hook) for l in layers]):
        yield


@contextmanager
def ablate(model, subspace: AgentSubspace | Tensor, *,
           layers: int | Sequence[int] | str | None = None) -> Iterator[None]:
    """Remove the projection onto the subspace's span at every position, at ``layers`` (default: the layer where
    it was read; ``"all"`` for every layer)."""
    q, _ = torch.linalg.qr(_basis(model, subspace).T.double())
    q = q.T.to(model.cfg.dtype)  # orthonormal rows spanning the same subspace

    def hook(resid: Float[Tensor, "batch pos d_model"], hook):
        return resid - (resid @ q.T) @ q

    with model.hooks(fwd_hooks=[(hook_name(l), hook) for l in _layers(model, subspace, layers)]):
        yield
