"""Where agent identity is linearly readable: per-layer cross-validated probes and 2-D PCA pictures of turns."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Sequence

import numpy as np
import torch
from jaxtyping import Float
from torch import Tensor

from lens.activations import ActivationSet, LabelledReadings, Position, turn_activations
from lens.errors import LensInputError
from lens.fitting import as_groups, group_folds, small_fits
from lens.sites import DEFAULT_SITE, middle_layer


@dataclass
class ProbeResult:
    """Per-layer cross-validated accuracy (mean and SE over folds) of a probe for ``label`` from turn activations."""

    layers: list[int]
    accuracy: list[float]
    accuracy_se: list[float]
    chance: float
    label: str
    classes: list
    position: Position
    n: int
    n_folds: int
    hook_names: list[str] = field(default_factory=list)
    site: str = DEFAULT_SITE

    @property
    def best_layer(self) -> int:
        return self.layers[int(np.argmax(self.accuracy))]

    def to_dict(self) -> dict:
        return asdict(self)


def _labels(acts: ActivationSet, label: str) -> np.ndarray:
    present = sorted({k for lab in acts.labels for k in lab})
    if label not in present:
        raise LensInputError(f"label {label!r} is unknown; labels these readings have: {', '.join(present)}")
    y = acts.column(label)
    if any(v is None for v in y):
        raise LensInputError(f"some readings have no {label!r} label (transcripts without personas, or spans you "
                             f"did not label); label every reading or probe another label")
    return np.array([str(v) for v in y])


def _activations(source, transcripts, *, layers, position, site, batch_size, prepend_bos, progress
                 ) -> tuple[ActivationSet, list[int]]:
    """An ActivationSet given (nothing runs) or collected from the model; and the layers asked for."""
    if isinstance(source, ActivationSet):
        if transcripts is not None or position != "turn_end" or site != DEFAULT_SITE:
            raise LensInputError("an ActivationSet was already collected: pass either it or transcripts/position/"
                                 "site, not both")
        return source, source.select_layers(layers)
    acts = turn_activations(source, transcripts, layers=layers, position=position, site=site,
                            batch_size=batch_size, prepend_bos=prepend_bos, progress=progress)
    return acts, acts.layers


def probe_layers(source, transcripts=None, *, layers: int | Sequence[int] | None = None,
                 position: Position = "turn_end", site: str = DEFAULT_SITE, cv: int = 5, label: str = "agent",
                 batch_size: int = 8, prepend_bos: bool | None = None, progress: bool = False) -> ProbeResult:
    """Cross-validated multinomial logistic-regression accuracy for a label (agent identity by default) at each
    layer; folds by transcript, so no question is in both train and test.

    Args:
        source: A TransformerLens model (turn activations of ``transcripts`` are collected), or an
            `ActivationSet` collected before (nothing runs).
        transcripts: `Transcript` objects, JSONL path(s), or ``None`` for the model's training debates.
        layers: Layers to probe (negatives count from the end); ``None``: all (all collected, for a set).
        position: Where in each turn to read (model form only).
        site: Where to read (model form only; see `lens.sites`).
        cv: Folds.
        label: The label to predict: ``"agent"``, ``"persona"``, ``"round"`` or any key of your labels.
        batch_size: Debates per forward pass.
        prepend_bos: Whether to prepend BOS; ``None`` uses the model's default.
        progress: Show a progress bar.

    Returns:
        A `ProbeResult` with mean and SE of accuracy per layer and the chance level.

    Example:
        >>> acts = lens.turn_activations(model, heldout)  # doctest: +SKIP
        >>> lens.probe_layers(acts, cv=4).best_layer  # doctest: +SKIP
        1
    """
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    acts, layers = _activations(source, transcripts, layers=layers, position=position, site=site,
                                batch_size=batch_size, prepend_bos=prepend_bos, progress=progress)
    y = _labels(acts, label)
    classes = sorted(set(y))
    if len(classes) < 2:
        raise LensInputError(f"only one {label} ({classes[0]}) in these transcripts; a probe needs at least two")
    folds = group_folds(as_groups(acts.column("transcript")), cv)
    if not folds:
        raise LensInputError("cross-validation needs transcripts of at least two questions")
    means, ses = [], []
    for layer in layers:
        x = acts.at(layer).double().numpy()
        accs = []
        with small_fits():
            for train, test in folds:
                clf = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000))
                accs.append(float(np.mean(clf.fit(x[train], y[train]).predict(x[test]) == y[test])))
        means.append(float(np.mean(accs)))
        ses.append(float(np.std(accs, ddof=1) / np.sqrt(len(accs))) if len(accs) > 1 else 0.0)
    chance = max(np.mean(y == c) for c in classes)
    return ProbeResult(layers=layers, accuracy=means, accuracy_se=ses, chance=float(chance), label=label,
                       classes=[str(c) for c in classes], position=acts.position, n=len(y), n_folds=len(folds),
                       hook_names=[acts.hook_names[acts.layers.index(l)] for l in layers], site=acts.site)


@dataclass
class PCAProjection(LabelledReadings):
    """2-D (or n-D) PCA coordinates of every turn at one layer, with the turn labels for colouring."""

    coords: Float[Tensor, "n n_components"]
    labels: list[dict]
    explained_variance_ratio: list[float]
    layer: int
    hook_name: str
    position: Position
    center: str
    site: str = DEFAULT_SITE


def pca_projection(source, transcripts=None, *, layer: int | None = None, position: Position = "turn_end",
                   site: str = DEFAULT_SITE, n_components: int = 2, center: str = "global", batch_size: int = 8,
                   prepend_bos: bool | None = None) -> PCAProjection:
    """PCA of turn activations at one layer. ``center="slot"`` subtracts each (transcript, round) mean first, so
    content that all agents share drops out and agent differences remain.

    Args:
        source: A TransformerLens model (turn activations of ``transcripts`` are collected), or an
            `ActivationSet` collected before (nothing runs).
        transcripts: `Transcript` objects, JSONL path(s), or ``None`` for the model's training debates.
        layer: The layer (negatives count from the end); ``None``: the middle layer (of those collected, for a
            set that lacks it).
        position: Where in each turn to read (model form only).
        site: Where to read (model form only).
        n_components: Number of principal components.
        center: ``"global"`` or ``"slot"``.
        batch_size: Debates per forward pass.
        prepend_bos: Whether to prepend BOS; ``None`` uses the model's default.

    Returns:
        A `PCAProjection` with coordinates and labels of every reading.

    Example:
        >>> p = lens.pca_projection(model, heldout, layer=1, center="slot")  # doctest: +SKIP
        >>> lens.plots.pca_scatter(p)  # doctest: +SKIP
    """
    if center not in ("global", "slot"):
        raise LensInputError(f"center {center!r} is unknown; valid: 'global', 'slot'")
    if isinstance(source, ActivationSet):
        middle = (source.n_layers or 0) // 2
        layer = layer if layer is not None else (middle if middle in source.layers else
                                                 source.layers[len(source.layers) // 2])
    else:
        layer = middle_layer(source) if layer is None else layer
    acts, (layer,) = _activations(source, transcripts, layers=[layer], position=position, site=site,
                                  batch_size=batch_size, prepend_bos=prepend_bos, progress=False)
    x = acts.at(layer).double()
    if center == "slot":
        keys = [(lab["transcript"], lab.get("round")) for lab in acts.labels]
        for key in set(keys):
            idx = torch.tensor([i for i, k in enumerate(keys) if k == key])
            x[idx] -= x[idx].mean(0)
    if n_components > min(x.shape):
        raise LensInputError(f"n_components={n_components} exceeds min(n_turns, d_model)={min(x.shape)}")
    x = x - x.mean(0)
    _, s, vh = torch.linalg.svd(x, full_matrices=False)
    var = s**2
    return PCAProjection(coords=(x @ vh[:n_components].T).float(), labels=acts.labels,
                         explained_variance_ratio=(var[:n_components] / var.sum().clamp_min(1e-30)).tolist(),
                         layer=layer, hook_name=acts.hook_names[acts.layers.index(layer)], position=acts.position,
                         center=center, site=acts.site)
