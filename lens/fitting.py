"""Fitting methods: plain functions from labelled readings to basis rows, chosen by name or passed in.

A method takes `Readings` (activations, which are the target, and which readings share a slot, i.e. are compared
with each other) and ``k``, and returns ``k`` unit rows oriented toward the target. Built in:

- ``diff_means``: per slot, the target's mean minus the others' mean, averaged over slots (the paper's vector);
- ``pca``: the top-k principal directions of those per-slot differences, signs toward their mean;
- ``probe``: the weight of a balanced logistic regression target-vs-others.

Your own: any callable ``(readings, k) -> Tensor[k, d_model]``, e.g.
``lens.fit_agent_subspace(acts, 2, method=lambda r, k: my_rows)``. Scoring (cross-validated Cohen's d and probe
accuracy, folds by group) is shared by every method.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor

from lens.errors import LensInputError


@dataclass
class Readings:
    """What a fitting method sees: activations, which are the target, and the slot of each reading."""

    x: Float[Tensor, "n d_model"]
    is_target: Bool[Tensor, "n"]
    slot: Int[Tensor, "n"]

    def subset(self, idx: Int[Tensor, "m"]) -> "Readings":
        """The readings at ``idx`` (a fold of a cross-validation).

        Args:
            idx: Reading indices.

        Returns:
            A `Readings` of those rows.

        Example:
            >>> readings.subset(torch.tensor([0, 2])).x.shape  # doctest: +SKIP
            torch.Size([2, 128])
        """
        return Readings(self.x[idx], self.is_target[idx], self.slot[idx])


FitMethod = Callable[[Readings, int], Float[Tensor, "k d_model"]]


def unit(v: Float[Tensor, "d_model"]) -> Float[Tensor, "d_model"]:
    """``v / |v|``; a zero vector is one clear error (the two groups have identical means)."""
    norm = v.norm()
    if norm == 0:
        raise LensInputError("the direction is zero: the two groups have identical mean activations")
    return v / norm


def slot_diffs(r: Readings) -> Float[Tensor, "slots d_model"]:
    """Per slot: the target readings' mean minus the mean of the other readings in that slot."""
    diffs = []
    for slot in r.slot.unique():
        members = r.slot == slot
        diffs.append(r.x[members & r.is_target].mean(0) - r.x[members & ~r.is_target].mean(0))
    return torch.stack(diffs)


def diff_means(r: Readings, k: int = 1) -> Float[Tensor, "1 d_model"]:
    """Unit mean over slots of (target mean − others' mean): the paper's agent vector."""
    return unit(slot_diffs(r).mean(0))[None]


def pca(r: Readings, k: int = 1) -> Float[Tensor, "k d_model"]:
    """Top-``k`` right singular vectors of the per-slot differences (uncentred), each signed toward their mean."""
    diffs = slot_diffs(r)
    if k > len(diffs):
        raise LensInputError(f"k={k} exceeds the {len(diffs)} slot differences available; use k <= {len(diffs)}")
    _, _, vh = torch.linalg.svd(diffs.double(), full_matrices=False)
    basis = vh[:k].float()
    signs = torch.sign(basis @ diffs.mean(0))
    return basis * torch.where(signs == 0, 1.0, signs)[:, None]


def small_fits():
    """sklearn fits here are small: one BLAS thread avoids oversubscription (3x faster on a shared CPU)."""
    from threadpoolctl import threadpool_limits

    return threadpool_limits(limits=1)


def probe(r: Readings, k: int = 1) -> Float[Tensor, "1 d_model"]:
    """Unit weight of a balanced logistic regression of target on activations, in activation coordinates."""
    from sklearn.linear_model import LogisticRegression

    x, y = r.x, r.is_target
    scale = x.double().std(0).clamp_min(1e-8)
    with small_fits():
        clf = LogisticRegression(max_iter=2000, class_weight="balanced").fit((x.double() / scale).numpy(), y.numpy())
    return unit((torch.tensor(clf.coef_[0]) / scale).float())[None]


FIT_METHODS: dict[str, FitMethod] = {"diff_means": diff_means, "pca": pca, "probe": probe}
SINGLE_DIRECTION = ("diff_means", "probe")


def fit_method(method: str | FitMethod, k: int) -> tuple[FitMethod, str]:
    """The fitting function and its recorded name for ``method`` (a registry name or your own callable)."""
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise LensInputError(f"k={k!r} is invalid; k must be an integer >= 1")
    if callable(method):
        return method, getattr(method, "__name__", type(method).__name__)
    if method not in FIT_METHODS:
        raise LensInputError(f"method {method!r} is unknown; valid: {', '.join(FIT_METHODS)} or a callable "
                             f"(readings, k) -> [k, d_model]")
    if k > 1 and method in SINGLE_DIRECTION:
        raise LensInputError(f"k={k} is invalid for method {method!r}: k>1 needs method='pca'; k must be >= 1")
    return FIT_METHODS[method], method


def run_fit(fn: FitMethod, r: Readings, k: int) -> Float[Tensor, "k d_model"]:
    """Call a fitting method and check what it returns: ``k`` finite rows of the readings' width."""
    basis = torch.as_tensor(fn(r, k)).float()
    basis = basis[None] if basis.ndim == 1 else basis
    if basis.shape != (k, r.x.shape[1]) or not torch.isfinite(basis).all():
        raise LensInputError(f"the fitting method returned shape {tuple(basis.shape)} (or non-finite values); "
                             f"it must return {k} finite rows of width {r.x.shape[1]}")
    return basis


def cohens_d(a: Float[Tensor, "n"], b: Float[Tensor, "m"]) -> float:
    """Standardised mean difference with pooled standard deviation."""
    pooled = ((a.var(unbiased=True) * (len(a) - 1) + b.var(unbiased=True) * (len(b) - 1)) /
              max(len(a) + len(b) - 2, 1)).sqrt()
    return float((a.mean() - b.mean()) / pooled.clamp_min(1e-12))


def as_groups(values: list) -> Int[Tensor, "n"]:
    """Group labels (ints or strings, e.g. question ids) as integers, numbered in order of first appearance."""
    ids = {v: n for n, v in enumerate(dict.fromkeys(values))}
    return torch.tensor([ids[v] for v in values], dtype=torch.long)


def group_folds(groups: Int[Tensor, "n"], cv: int) -> list[tuple[Tensor, Tensor]]:
    """Train/test index pairs that never split a group (a question) across the two."""
    from sklearn.model_selection import GroupKFold

    n_groups = len(groups.unique())
    if n_groups < 2:
        return []
    splitter = GroupKFold(n_splits=min(cv, n_groups))
    return [(torch.tensor(tr), torch.tensor(te)) for tr, te in splitter.split(np.zeros(len(groups)), groups=groups)]


def _balanced_accuracy(pred: np.ndarray, y: np.ndarray) -> float:
    return float(np.mean([np.mean(pred[y == c] == c) for c in np.unique(y)]))


def score_direction(x: Float[Tensor, "n d_model"], y: Bool[Tensor, "n"], groups: Int[Tensor, "n"],
                    fit: Callable[[Tensor], Tensor], cv: int = 5) -> dict[str, float]:
    """Held-out Cohen's d of projections on the fitted (leading) direction and held-out balanced probe accuracy
    (folds by group, e.g. question); in-sample values when there is only one group."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    folds = group_folds(groups, cv) or [(torch.arange(len(y)), torch.arange(len(y)))]
    proj, truth, pred = [], [], []
    with small_fits():
        for train, test in folds:
            proj.append(x[test] @ fit(train)[0])
            truth.append(y[test])
            if len(y[train].unique()) == 2:
                clf = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000, class_weight="balanced"))
                pred.append(clf.fit(x[train].double().numpy(), y[train].numpy()).predict(x[test].double().numpy()))
            else:
                pred.append(np.full(len(test), bool(y[train][0])))
    proj, truth = torch.cat(proj), torch.cat(truth)
    return {"cohens_d": cohens_d(proj[truth], proj[~truth]),
            "probe_accuracy": _balanced_accuracy(np.concatenate(pred), truth.numpy())}
