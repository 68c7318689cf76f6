"""Where lens reads and writes: a layer and a site of the residual stream, by TransformerLens hook name.

Sites (TransformerLens names, ``blocks.{L}.hook_{site}``):

========== ===================================================================
resid_pre  the residual stream entering block L
resid_mid  after block L's attention, before its MLP (absent when attention and MLP run in parallel, as in
           GPT-J and GPT-NeoX)
resid_post the residual stream leaving block L (the default, the paper's choice)
attn_out   block L's attention output (what it adds to the stream)
mlp_out    block L's MLP output
========== ===================================================================

Layers are model indices with Python's meaning for negatives: ``-1`` is the last layer, ``-n_layers`` the first.
"""

from __future__ import annotations

from typing import Sequence

from lens.errors import LensInputError

SITES = ("resid_pre", "resid_mid", "resid_post", "attn_out", "mlp_out")
DEFAULT_SITE = "resid_post"


def check_site(site: str) -> str:
    """``site`` if it is one of `SITES`, else one sentence naming the valid ones."""
    if site not in SITES:
        raise LensInputError(f"site {site!r} is unknown; valid: {', '.join(SITES)}")
    return site


def hook_name(layer: int, site: str = DEFAULT_SITE) -> str:
    """The TransformerLens hook name of ``site`` in block ``layer``.

    Args:
        layer: A non-negative block index (resolve negatives with `check_layer` first).
        site: One of `SITES`; default ``"resid_post"``.

    Returns:
        ``"blocks.{layer}.hook_{site}"``.

    Example:
        >>> hook_name(3), hook_name(0, "mlp_out")
        ('blocks.3.hook_resid_post', 'blocks.0.hook_mlp_out')
    """
    return f"blocks.{layer}.hook_{check_site(site)}"


def site_of(name: str) -> str:
    """The site of a hook name made by `hook_name` (``"blocks.3.hook_mlp_out"`` → ``"mlp_out"``)."""
    site = name.rsplit(".hook_", 1)[-1]
    return check_site(site)


def middle_layer(model) -> int:
    """The default layer where one is not given: the middle block (the paper's 15 of 32, 20 of 40)."""
    return model.cfg.n_layers // 2


def check_layer(model, layer: int) -> int:
    """``layer`` as a non-negative index into the model's blocks (``-1`` = the last), or one clear sentence."""
    n = model.cfg.n_layers
    if isinstance(layer, bool) or not isinstance(layer, int) or not -n <= layer < n:
        raise LensInputError(f"layer {layer!r} is out of range: this model has {n} layers, 0..{n - 1} "
                             f"(or -{n}..-1 counting from the last)")
    return layer % n


def resolve_layers(model, layers: int | Sequence[int] | str | None) -> list[int]:
    """Layer indices for ``layers``: ``None`` or ``"all"`` → every layer; an int → that one; negatives count from
    the end, as in Python."""
    if layers is None or layers == "all":
        return list(range(model.cfg.n_layers))
    layers = [layers] if isinstance(layers, int) else list(layers)
    if not layers:
        raise LensInputError("layers is empty; pass None for every layer or a list of layer indices")
    return [check_layer(model, l) for l in layers]


def site_hook(model, layer: int, site: str = DEFAULT_SITE) -> str:
    """The hook name of ``site`` at ``layer`` after checking that this model has it.

    Args:
        model: A TransformerLens ``HookedTransformer`` or ``TransformerBridge``.
        layer: Block index (negatives count from the end).
        site: One of `SITES`.

    Returns:
        The hook name, e.g. ``"blocks.2.hook_resid_mid"``.

    Raises:
        LensInputError: the site is unknown, the layer out of range, or this architecture has no such site.

    Example:
        >>> site_hook(model, -1, "attn_out")  # doctest: +SKIP
        'blocks.2.hook_attn_out'
    """
    name = hook_name(check_layer(model, layer), site)
    if name not in model.hook_dict:
        why = (" (its attention and MLP run in parallel, so no residual stream exists between them)"
               if site == "resid_mid" and getattr(model.cfg, "parallel_attn_mlp", False) else "")
        present = [s for s in SITES if hook_name(check_layer(model, layer), s) in model.hook_dict]
        raise LensInputError(f"this model has no site {site!r}{why}; sites it has: {', '.join(present)}")
    return name
