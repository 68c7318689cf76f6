"""Interventions as data: `Add`, `Ablate` and `Cap` are small serialisable objects; `intervene` applies several.

Each names a basis (``[k, d_model]`` rows, or an `AgentSubspace`, whose layer and site it takes), the layers and
site to write at (see `lens.sites`), the token positions it touches, and its strength (`Add`) or threshold
(`Cap`). Applied through `intervene` (or the thin wrappers `steer`, `ablate`, `cap`), the model is restored on
exit, also after an exception.

Positions are *absolute* token positions, tracked across the forward calls of a cached ``model.generate`` (each
of which sees only the new tokens). ``"auto"`` (the default of `Add`) means the generated tokens inside
``model.generate`` / `lens.generate` and every position on a plain forward; ``"generated"`` and ``"prompt"``
outside a generate need ``prompt_len``.

Strength shapes (`Add`; `Cap` thresholds alike): with a single direction (k=1) a number (every row) or one value
per batch row (``[rows]`` or ``[rows, 1]``); with k>1 one value per direction, ``[k]`` (every row) or
``[rows, k]``. Anything else, a single number for k>1 included, raises: nothing is silently dropped.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, ClassVar, Iterator, Sequence, Union

import torch
from jaxtyping import Bool, Float
from torch import Tensor

from lens.activations import decoder_layers, resolve_prepend_bos
from lens.errors import LensInputError
from lens.sites import DEFAULT_SITE, check_site, resolve_layers, site_hook
from lens.subspace import AgentSubspace

POSITION_RULES = ("auto", "generated", "all", "prompt")
_MISSING = object()
Strength = Union[float, Sequence[float], Sequence[Sequence[float]], Tensor]


def check_finite(values: Tensor, what: str) -> Tensor:
    """``values`` if every entry is finite, else one sentence."""
    if not torch.isfinite(values).all():
        bad = values[~torch.isfinite(values)].flatten()[0].item()
        raise LensInputError(f"{what} must be finite numbers; got {bad} (NaN or inf is never a valid strength)")
    return values


def strength_matrix(value: Strength, k: int, what: str = "strength") -> Float[Tensor, "rows k"]:
    """A strength (or threshold) as a ``[rows, k]`` float64 matrix (``rows`` may be 1: every row), by the rules in
    this module's docstring; ambiguous or non-finite values raise."""
    try:
        t = torch.as_tensor(value, dtype=torch.float64).detach().cpu()
    except (TypeError, ValueError, RuntimeError):
        raise LensInputError(f"{what} must be a number or a list/tensor of numbers, got {value!r}") from None
    check_finite(t, what)
    if k == 1:
        if t.ndim == 0:
            return t.reshape(1, 1)
        if t.ndim == 1:
            return t[:, None]
        if t.ndim == 2 and t.shape[1] == 1:
            return t
        raise LensInputError(f"{what} for a single direction must be a number or one value per batch row "
                             f"([rows] or [rows, 1]), got shape {list(t.shape)}")
    if t.ndim == 1 and t.shape[0] == k:
        return t[None]
    if t.ndim == 2 and t.shape[1] == k:
        return t
    got = "a single number" if t.ndim == 0 else f"shape {list(t.shape)}"
    raise LensInputError(f"a basis of k={k} directions takes one {what} per direction, shape [{k}] or [rows, {k}]; "
                         f"got {got}")


def _as_basis(basis) -> Float[Tensor, "k d_model"]:
    t = torch.as_tensor(basis.basis if isinstance(basis, AgentSubspace) else basis, dtype=torch.float32)
    t = t.detach().cpu()
    t = t[None] if t.ndim == 1 else t
    if t.ndim != 2 or t.shape[0] == 0:
        raise LensInputError(f"the basis must be a direction [d_model] or rows [k, d_model], got shape "
                             f"{list(t.shape)}")
    check_finite(t, "the basis")
    return t


@dataclass
class _Offsets:
    """Absolute position of the current forward's first token, and the prompt length of the current generate."""

    offset: int = 0
    prompt_len: int | None = None
    fixed_prompt_len: int | None = None
    in_generate: bool = False


def _position_mask(rule: str, state: _Offsets, n_pos: int, device) -> Bool[Tensor, "pos"]:
    if rule == "all" or (rule == "auto" and not state.in_generate):
        return torch.ones(n_pos, dtype=torch.bool, device=device)
    if state.prompt_len is None:
        if state.in_generate and state.offset == 0:
            state.prompt_len = n_pos
        else:
            raise LensInputError(f"positions={rule!r} outside model.generate needs prompt_len=...")
    absolute = torch.arange(state.offset, state.offset + n_pos, device=device)
    return absolute < state.prompt_len if rule == "prompt" else absolute >= state.prompt_len


@dataclass(eq=False)
class _Intervention:
    """Shared fields: the basis, where to write (layers, site) and which positions."""

    op: ClassVar[str] = ""
    _value_field: ClassVar[str | None] = None

    def _init_where(self) -> None:
        sub = self.basis if isinstance(self.basis, AgentSubspace) else None
        if self.layers is None:
            if sub is None:
                raise LensInputError(f"{type(self).__name__}: a raw direction tensor carries no layer; pass layers=...")
            self.layers = sub.layer
        if self.site is None:
            self.site = sub.site if sub is not None else DEFAULT_SITE
        check_site(self.site)
        if self.positions not in POSITION_RULES:
            raise LensInputError(f"positions {self.positions!r} is unknown; valid: {', '.join(POSITION_RULES)}")
        self.basis = _as_basis(self.basis)
        if self._value_field is not None:
            strength_matrix(getattr(self, self._value_field), self.k, self._value_field)

    @property
    def k(self) -> int:
        return self.basis.shape[0]

    def hook_names(self, model) -> list[str]:
        """The hook names this intervention writes at on ``model`` (checked: layers in range, site present)."""
        if self.basis.shape[1] != model.cfg.d_model:
            raise LensInputError(f"the subspace has width {self.basis.shape[1]} but this model's d_model is "
                                 f"{model.cfg.d_model}; it was found on another model")
        return [site_hook(model, l, self.site) for l in resolve_layers(model, self.layers)]

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-serialisable fields (``op`` names the class); `from_dict` reads them back."""
        d = {"op": self.op, "basis": self.basis.tolist(), "layers": self.layers, "site": self.site,
             "positions": self.positions}
        if self._value_field is not None:
            v = getattr(self, self._value_field)
            d[self._value_field] = torch.as_tensor(v, dtype=torch.float64).tolist()
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "Intervention":
        """The intervention `to_dict` described (its ``op`` must match this class)."""
        it = intervention_from_dict(d)
        if not isinstance(it, cls):
            raise LensInputError(f"{cls.__name__}.from_dict got a record of op {d['op']!r}; use "
                                 f"lens.intervention_from_dict for any op")
        return it

    def _hook(self, model, state: _Offsets, value: Tensor | None, rows: Tensor | None):
        raise NotImplementedError


@dataclass(eq=False)
class Add(_Intervention):
    """Add ``strength · basis`` to the residual stream (steering).

    Args:
        basis: A direction ``[d_model]``, rows ``[k, d_model]``, or an `AgentSubspace` (its layer and site become
            the defaults).
        strength: Per the module's shape rules: a number or ``[rows]`` for k=1; ``[k]`` or ``[rows, k]`` for k>1.
        layers: Layer index, list, or ``"all"``; negatives count from the end. Default: the subspace's layer.
        site: Where to write (see `lens.sites`); default: the subspace's site, else ``"resid_post"``.
        positions: ``"auto"``, ``"generated"``, ``"all"`` or ``"prompt"``.

    Example:
        >>> add = lens.Add(sub, 4.0)  # doctest: +SKIP
        >>> lens.Add.from_dict(add.to_dict()).layers == add.layers  # doctest: +SKIP
        True
    """

    basis: Any
    strength: Strength = 1.0
    layers: int | Sequence[int] | str | None = None
    site: str | None = None
    positions: str = "auto"
    op: ClassVar[str] = "add"
    _value_field: ClassVar[str | None] = "strength"

    def __post_init__(self) -> None:
        self._init_where()

    def _hook(self, model, state: _Offsets, value: Tensor | None, rows: Tensor | None):
        basis = self.basis.to(device=model.cfg.device, dtype=model.cfg.dtype)
        s = strength_matrix(self.strength if value is None else value, self.k).to(basis.device, basis.dtype)

        def hook(resid: Float[Tensor, "batch pos d_model"], hook):
            if s.shape[0] not in (1, resid.shape[0]):
                raise LensInputError(f"strength has {s.shape[0]} rows but the batch has {resid.shape[0]} rows")
            mask = _position_mask(self.positions, state, resid.shape[1], resid.device).to(resid.dtype)
            return resid + mask[None, :, None] * (s @ basis)[:, None, :]
        return hook


@dataclass(eq=False)
class Ablate(_Intervention):
    """Remove the projection onto the span of ``basis`` (directional ablation).

    Args:
        basis: A direction, rows ``[k, d_model]`` (their span is removed), or an `AgentSubspace`.
        layers: Layer index, list, or ``"all"``; default: the subspace's layer.
        site: Where to write; default: the subspace's site, else ``"resid_post"``.
        positions: ``"all"`` (default), ``"auto"``, ``"generated"`` or ``"prompt"``.

    Example:
        >>> with lens.intervene(model, [lens.Ablate(sub, layers="all")]):  # doctest: +SKIP
        ...     logits = model(tokens)
    """

    basis: Any
    layers: int | Sequence[int] | str | None = None
    site: str | None = None
    positions: str = "all"
    op: ClassVar[str] = "ablate"

    def __post_init__(self) -> None:
        self._init_where()

    def _hook(self, model, state: _Offsets, value: Tensor | None, rows: Tensor | None):
        q, _ = torch.linalg.qr(self.basis.T.double())
        q = q.T.to(device=model.cfg.device, dtype=model.cfg.dtype)  # orthonormal rows spanning the same subspace

        def hook(resid: Float[Tensor, "batch pos d_model"], hook):
            mask = _position_mask(self.positions, state, resid.shape[1], resid.device).to(resid.dtype)
            m = mask[None, :, None] if rows is None else rows.to(resid.dtype)[:, None, None] * mask[None, :, None]
            return resid - m * ((resid @ q.T) @ q)
        return hook


@dataclass(eq=False)
class Cap(_Intervention):
    """Clamp the projection onto each direction at ``threshold`` from above: ``h − max(0, h·v̂ − τ)·v̂`` (the
    Assistant Axis' activation capping; Lu et al. 2026). Choose τ with `calibrate_cap`.

    Args:
        basis: A direction, orthogonal rows ``[k, d_model]`` (each is normalised to unit length), or an
            `AgentSubspace`.
        threshold: τ per the module's shape rules (a number for k=1; ``[k]`` or ``[rows, k]`` for k>1).
        layers: Layer index, list, or ``"all"``; default: the subspace's layer.
        site: Where to write; default: the subspace's site, else ``"resid_post"``.
        positions: ``"all"`` (default), ``"auto"``, ``"generated"`` or ``"prompt"``.

    Example:
        >>> with lens.intervene(model, [lens.Cap(sub, threshold=1.5)]):  # doctest: +SKIP
        ...     logits = model(tokens)
    """

    basis: Any
    threshold: Strength = 0.0
    layers: int | Sequence[int] | str | None = None
    site: str | None = None
    positions: str = "all"
    op: ClassVar[str] = "cap"
    _value_field: ClassVar[str | None] = "threshold"

    def __post_init__(self) -> None:
        self._init_where()
        norms = self.basis.norm(dim=1, keepdim=True)
        if (norms == 0).any():
            raise LensInputError("Cap: a direction of the basis is zero; give non-zero directions")
        self.basis = self.basis / norms
        gram = self.basis @ self.basis.T
        if (gram - torch.eye(self.k)).abs().max() > 1e-4:
            raise LensInputError("Cap: the directions must be orthogonal (each projection is capped on its own); "
                                 "orthonormalise them, e.g. with torch.linalg.qr")

    def _hook(self, model, state: _Offsets, value: Tensor | None, rows: Tensor | None):
        v = self.basis.to(device=model.cfg.device, dtype=model.cfg.dtype)
        tau = strength_matrix(self.threshold if value is None else value, self.k, "threshold").to(v.device, v.dtype)

        def hook(resid: Float[Tensor, "batch pos d_model"], hook):
            if tau.shape[0] not in (1, resid.shape[0]):
                raise LensInputError(f"threshold has {tau.shape[0]} rows but the batch has {resid.shape[0]} rows")
            mask = _position_mask(self.positions, state, resid.shape[1], resid.device).to(resid.dtype)
            m = mask[None, :, None] if rows is None else rows.to(resid.dtype)[:, None, None] * mask[None, :, None]
            excess = (resid @ v.T - tau[:, None, :]).clamp_min(0.0)
            return resid - m * (excess @ v)
        return hook


Intervention = Union[Add, Ablate, Cap]
OPS = {cls.op: cls for cls in (Add, Ablate, Cap)}


def intervention_from_dict(d: dict) -> Intervention:
    """The `Add`, `Ablate` or `Cap` that ``to_dict`` described.

    Args:
        d: A dict with ``"op"`` in ``add``/``ablate``/``cap`` and that class's fields.

    Returns:
        The intervention.

    Example:
        >>> lens.intervention_from_dict({"op": "add", "basis": [[1.0, 0.0]], "layers": 0, "strength": 2.0}).k
        1
    """
    if not isinstance(d, dict) or d.get("op") not in OPS:
        raise LensInputError(f"not an intervention record: 'op' must be one of {', '.join(OPS)}")
    cls = OPS[d["op"]]
    fields = {k: v for k, v in d.items() if k != "op"}
    try:
        return cls(**fields)
    except TypeError as e:
        raise LensInputError(f"not a valid {d['op']!r} record ({e})") from None


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


def as_interventions(interventions) -> list[Intervention]:
    """One intervention, an `AgentSubspace` (→ `Add` of strength 1) or a list of them, as a list."""
    if isinstance(interventions, (Add, Ablate, Cap, AgentSubspace)):
        interventions = [interventions]
    out = []
    for it in interventions:
        if isinstance(it, AgentSubspace):
            it = Add(it)
        if not isinstance(it, (Add, Ablate, Cap)):
            raise LensInputError(f"interventions must be Add, Ablate, Cap or AgentSubspace objects, got "
                                 f"{type(it).__name__}")
        out.append(it)
    return out


@contextmanager
def _applied(model, items: Sequence[tuple[Intervention, Tensor | None, Tensor | None]],
             prompt_len: int | None) -> Iterator[None]:
    """Apply (intervention, value override, row mask) triples for the duration of the block."""
    state = _Offsets(fixed_prompt_len=prompt_len, prompt_len=prompt_len)
    hooks = [(name, it._hook(model, state, value, rows)) for it, value, rows in items for name in it.hook_names(model)]
    with _position_tracking(model, state), model.hooks(fwd_hooks=hooks):
        yield


@contextmanager
def _applied_hf(model, hf, items: Sequence[tuple[Intervention, Tensor | None, Tensor | None]],
                prompt_len: int | None) -> Iterator[None]:
    """`_applied` on ``hf``, the HF model ``model`` was converted from: each intervention's hook runs as a forward
    hook on the decoder block whose output is ``blocks.L.hook_resid_post`` (the only site an HF block exposes)."""
    state = _Offsets(fixed_prompt_len=prompt_len, prompt_len=prompt_len)
    blocks = decoder_layers(hf)
    handles = []

    def adapter(fn):
        def hook(module, args, output):
            if isinstance(output, tuple):
                return (fn(output[0], None), *output[1:])
            return fn(output, None)
        return hook

    try:
        for it, value, rows in items:
            if it.site != "resid_post":
                raise LensInputError(f"an HF model can be steered at site 'resid_post' only, not {it.site!r}; use "
                                     f"backend='hooked'")
            it.hook_names(model)  # checks width and layer range
            fn = it._hook(model, state, value, rows)
            for layer in resolve_layers(model, it.layers):
                handles.append(blocks[layer].register_forward_hook(adapter(fn)))
        with _position_tracking(hf, state):
            yield
    finally:
        for h in handles:
            h.remove()


@contextmanager
def intervene(model, interventions, *, prompt_len: int | None = None) -> Iterator[None]:
    """Apply one or several interventions for the duration of the block; the model is restored on exit.

    Args:
        model: A TransformerLens model.
        interventions: An `Add`, `Ablate` or `Cap` (an `AgentSubspace` counts as ``Add(sub)``), or a list of
            them, applied in order at each hook they share.
        prompt_len: Where the prompt ends, for ``positions="generated"``/``"prompt"`` outside ``model.generate``.

    Returns:
        A context manager.

    Example:
        >>> with lens.intervene(model, [lens.Add(sub_a, 4.0), lens.Cap(sub_b, threshold=0.5)]):  # doctest: +SKIP
        ...     out = model.generate(tokens, max_new_tokens=16)
    """
    items = [(it, None, None) for it in as_interventions(interventions)]
    with _applied(model, items, prompt_len):
        yield


@contextmanager
def steer(model, subspace: AgentSubspace | Tensor, alpha: Strength, *,
          layers: int | Sequence[int] | str | None = None, site: str | None = None, positions: str = "auto",
          prompt_len: int | None = None) -> Iterator[None]:
    """Add ``alpha · basis`` (``Add``) for the duration of the block.

    Args:
        model: A TransformerLens model.
        subspace: An `AgentSubspace` or a direction tensor (then pass ``layers``).
        alpha: A number, one value per batch row (sweep α in one batched generate), or for k>1 one value per
            direction (``[k]`` or ``[rows, k]``); NaN/inf raise.
        layers: Where to write; default: the subspace's layer. ``"all"`` for every layer.
        site: Where to write; default: the subspace's site.
        positions: ``"auto"`` (generated tokens inside a generate, every position on a plain forward),
            ``"generated"``, ``"all"`` or ``"prompt"``.
        prompt_len: Prompt length for ``"generated"``/``"prompt"`` outside ``model.generate``.

    Returns:
        A context manager.

    Example:
        >>> with lens.steer(model, sub, 2.0):  # doctest: +SKIP
        ...     logits = model(tokens)
    """
    with intervene(model, [Add(subspace, alpha, layers=layers, site=site, positions=positions)],
                   prompt_len=prompt_len):
        yield


@contextmanager
def ablate(model, subspace: AgentSubspace | Tensor, *, layers: int | Sequence[int] | str | None = None,
           site: str | None = None, positions: str = "all") -> Iterator[None]:
    """Remove the projection onto the subspace's span (``Ablate``) for the duration of the block.

    Args:
        model: A TransformerLens model.
        subspace: An `AgentSubspace` or direction rows (then pass ``layers``).
        layers: Where; default: the layer it was read at; ``"all"`` for every layer.
        site: Where; default: the site it was read at.
        positions: Default ``"all"``.

    Returns:
        A context manager.

    Example:
        >>> with lens.ablate(model, sub, layers="all"):  # doctest: +SKIP
        ...     logits = model(tokens)
    """
    with intervene(model, [Ablate(subspace, layers=layers, site=site, positions=positions)]):
        yield


@contextmanager
def cap(model, subspace: AgentSubspace | Tensor, threshold: Strength, *,
        layers: int | Sequence[int] | str | None = None, site: str | None = None,
        positions: str = "all") -> Iterator[None]:
    """Clamp the projection onto the subspace's directions at ``threshold`` (``Cap``) for the block.

    Args:
        model: A TransformerLens model.
        subspace: An `AgentSubspace` or direction rows (then pass ``layers``).
        threshold: τ (a number for k=1; ``[k]`` or ``[rows, k]`` for k>1); see `calibrate_cap`.
        layers: Where; default: the layer it was read at.
        site: Where; default: the site it was read at.
        positions: Default ``"all"``.

    Returns:
        A context manager.

    Example:
        >>> with lens.cap(model, sub, 1.0):  # doctest: +SKIP
        ...     logits = model(tokens)
    """
    with intervene(model, [Cap(subspace, threshold, layers=layers, site=site, positions=positions)]):
        yield


@torch.no_grad()
def projections(model, subspace: AgentSubspace | Tensor, texts: Sequence[str], *,
                layers: int | Sequence[int] | str | None = None, site: str | None = None, batch_size: int = 8,
                prepend_bos: bool | None = None) -> dict[int, Float[Tensor, "tokens k"]]:
    """Projections of every real token's activation onto the unit directions, per layer, on plain runs.

    Args:
        model: A TransformerLens model.
        subspace: An `AgentSubspace` or direction rows (then pass ``layers``).
        texts: Clean texts (no intervention is applied).
        layers: Where; default: the layer it was read at.
        site: Where; default: the site it was read at.
        batch_size: Texts per forward pass.
        prepend_bos: Whether to prepend BOS; ``None`` uses the model's default.

    Returns:
        ``{layer: [n_tokens, k]}`` projections (BOS excluded).

    Example:
        >>> lens.projections(model, sub, ["some clean text"])[sub.layer].shape  # doctest: +SKIP
        torch.Size([3, 1])
    """
    if isinstance(texts, str) or not texts:
        raise LensInputError("texts must be a non-empty list of texts")
    probe = Ablate(subspace, layers=layers, site=site)
    names = probe.hook_names(model)
    layer_ids = resolve_layers(model, probe.layers)
    v = probe.basis / probe.basis.norm(dim=1, keepdim=True)
    bos = [model.tokenizer.bos_token_id] if resolve_prepend_bos(model, prepend_bos) else []
    ids = [bos + model.tokenizer(t, add_special_tokens=False)["input_ids"] for t in texts]
    out: dict[int, list[Tensor]] = {l: [] for l in layer_ids}
    pad = model.tokenizer.pad_token_id if model.tokenizer.pad_token_id is not None else 0
    for start in range(0, len(ids), batch_size):
        chunk = ids[start:start + batch_size]
        width = max(map(len, chunk))
        tokens = torch.tensor([row + [pad] * (width - len(row)) for row in chunk], device=model.cfg.device)
        mask = torch.tensor([[1] * len(row) + [0] * (width - len(row)) for row in chunk], device=model.cfg.device)
        real = mask.bool().clone()
        real[:, :len(bos)] = False

        def saver(layer: int):
            def save(resid, hook):
                out[layer].append((resid.float().cpu() @ v.T)[real.cpu()])
            return save

        with model.hooks(fwd_hooks=[(n, saver(l)) for n, l in zip(names, layer_ids)]):
            model(tokens, attention_mask=mask, stop_at_layer=max(layer_ids) + 1)
    return {l: torch.cat(p) for l, p in out.items()}


def calibrate_cap(model, subspace: AgentSubspace | Tensor, texts: Sequence[str], *, percentile: float,
                  layers: int | Sequence[int] | str | None = None, site: str | None = None,
                  positions: str = "all", batch_size: int = 8, prepend_bos: bool | None = None) -> list[Cap]:
    """One `Cap` per layer whose threshold is the ``percentile`` of clean-run projections onto each direction.

    The Assistant Axis caps at a low percentile of the projections onto the axis, over several layers; to stop
    a trait direction from growing past what clean runs show, cap at a high percentile of its projections.

    Args:
        model: A TransformerLens model.
        subspace: An `AgentSubspace` or direction rows (then pass ``layers``).
        texts: Clean texts whose token projections set the threshold.
        percentile: In [0, 100].
        layers: Where; default: the layer it was read at; each layer gets its own threshold.
        site: Where; default: the site it was read at.
        positions: The caps' positions.
        batch_size: Texts per forward pass.
        prepend_bos: Whether to prepend BOS; ``None`` uses the model's default.

    Returns:
        A list of `Cap`, one per layer, ready for `intervene`.

    Example:
        >>> caps = lens.calibrate_cap(model, sub, clean_texts, percentile=90)  # doctest: +SKIP
        >>> with lens.intervene(model, caps):  # doctest: +SKIP
        ...     out = model.generate(tokens, max_new_tokens=16)
    """
    if isinstance(percentile, bool) or not isinstance(percentile, (int, float)) or not 0 <= percentile <= 100:
        raise LensInputError(f"percentile {percentile!r} must be a number in [0, 100]")
    proj = projections(model, subspace, texts, layers=layers, site=site, batch_size=batch_size,
                       prepend_bos=prepend_bos)
    base = Ablate(subspace, layers=layers, site=site)
    caps = []
    for layer, p in proj.items():
        tau = torch.quantile(p.double(), percentile / 100, dim=0)
        caps.append(Cap(base.basis, tau.item() if base.k == 1 else tau.tolist(), layers=layer, site=base.site,
                        positions=positions))
    return caps
