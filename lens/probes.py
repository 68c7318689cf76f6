"""Where agent identity is linearly readable: per-layer cross-validated probes and 2-D PCA pictures of turns."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Sequence

import numpy as np
import torch
from jaxtyping import Float
from torch import Tensor

from lens.activations import (Position, hook_name, middle_layer, resolve_layers, resolve_transcripts,
                              turn_activations)
from lens.errors import LensInputError
from lens.subspace import group_folds, small_fits

LABEL_KEYS = ("agent", "persona", "round")


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

    @property
    def best_layer(self) -> int:
        return self.layers[int(np.argmax(self.accuracy))]

    def to_dict(self) -> dict:
        return asdict(self)


def _labels(acts, label: str) -> np.ndarray:
    if label not in LABEL_KEYS:
        raise LensInputError(f"label {label!r} is unknown; valid: {', '.join(LABEL_KEYS)}")
    y = acts.column(label)
    if any(v is None for v in y):
        raise LensInputError(f"some turns have no {label}; these transcripts do not record personas")
    return np.array([str(v) for v in y])


def probe_layers(model, transcripts=None, *, layers: int | Sequence[int] | None = None,
                 position: Position = "turn_end", cv: int = 5, label: str = "agent", batch_size: int = 8,
                 prepend_bos: bool | None = None, progress: bool = False) -> ProbeResult:
    """Cross-validated (folds by question, so no question is in train and test) multinomial logistic-regression
    accuracy for agent identity at each layer."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    transcripts, _ = resolve_transcripts(model, transcripts)
    layers = resolve_layers(model, layers)
    acts = turn_activations(model, transcripts, layers=layers, position=position, batch_size=batch_size,
                            prepend_bos=prepend_bos, progress=progress)
    y = _labels(acts, label)
    classes = sorted(set(y))
    if len(classes) < 2:
        raise LensInputError(f"only one {label} ({classes[0]}) in these transcripts; a probe needs at least two")
    folds = group_folds(torch.tensor(acts.column("transcript")), cv)
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
                       hook_names=[hook_name(l) for l in layers])


@dataclass
class PCAProjection:
    """2-D (or n-D) PCA coordinates of every turn at one layer, with the turn labels for colouring."""

    coords: Float[Tensor, "n n_components"]
    labels: list[dict]
    explained_variance_ratio: list[float]
    layer: int
    hook_name: str
    position: Position
    center: str

    def column(self, key: str) -> list:
        return [lab.get(key) for lab in self.labels]


def pca_projection(model, transcripts=None, *, layer: int | None = None, position: Position = "turn_end",
                   n_components: int = 2, center: str = "global", batch_size: int = 8,
                   prepend_bos: bool | None = None) -> PCAProjection:
    """PCA of turn activations at ``layer`` (default: the middle layer). ``center="slot"`` subtracts each
    (question, round) mean first, so content that all agents share drops out and agent differences remain."""
    if center not in ("global", "slot"):
        raise LensInputError(f"center {center!r} is unknown; valid: 'global', 'slot'")
    transcripts, _ = resolve_transcripts(model, transcripts)
    layer = resolve_layers(model, middle_layer(model) if layer is None else layer)[0]
    acts = turn_activations(model, transcripts, layers=[layer], position=position, batch_size=batch_size,
                            prepend_bos=prepend_bos)
    x = acts.at(layer).double()
    if center == "slot":
        keys = [(lab["transcript"], lab["round"]) for lab in acts.labels]
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
                         layer=layer, hook_name=hook_name(layer), position=acts.position, center=center)
