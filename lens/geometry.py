"""Geometry of agent directions: cosine similarities across agents, layers and models, and principal angles
between k>1 subspaces.

Vectors from different models compare only in a shared residual basis: fine-tunes of one base (base / SFT / IMAD)
share it; a vector brought in from an HF tool should first go through `lens.import_vector`, which puts it in lens's
basis.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping

import numpy as np
import torch
from jaxtyping import Float
from torch import Tensor

from lens.errors import LensInputError
from lens.subspace import AgentSubspace


def _matrix(x: AgentSubspace | Tensor, name: str) -> Float[np.ndarray, "k d_model"]:
    basis = x.basis if isinstance(x, AgentSubspace) else torch.as_tensor(x)
    basis = basis[None] if basis.ndim == 1 else basis
    if basis.ndim != 2 or basis.shape[0] == 0:
        raise LensInputError(f"{name!r}: expected an AgentSubspace, a direction [d_model] or a basis [k, d_model], "
                             f"got shape {tuple(basis.shape)}")
    m = basis.detach().double().cpu().numpy()
    if not np.isfinite(m).all() or (np.linalg.norm(m, axis=1) == 0).any():
        raise LensInputError(f"{name!r} has a zero or non-finite direction; it has no angle to anything")
    return m


def _check_widths(mats: Mapping[str, np.ndarray]) -> None:
    widths = {name: m.shape[1] for name, m in mats.items()}
    if len(set(widths.values())) > 1:
        raise LensInputError(f"directions of different widths cannot be compared: {widths}")


@dataclass
class CosineSimilarities:
    """``matrix[i, j]`` = cosine between the leading directions of ``names[i]`` and ``names[j]``."""

    names: list[str]
    matrix: Float[np.ndarray, "n n"]

    def angle_deg(self, a: str, b: str) -> float:
        """The angle between two named directions, in degrees."""
        for name in (a, b):
            if name not in self.names:
                raise LensInputError(f"{name!r} is not one of {self.names}")
        cos = self.matrix[self.names.index(a), self.names.index(b)]
        return float(np.degrees(np.arccos(np.clip(cos, -1.0, 1.0))))

    def to_dict(self) -> dict:
        return {"names": self.names, "matrix": self.matrix.tolist()}


def cosine_similarities(vectors: Mapping[str, AgentSubspace | Tensor]) -> CosineSimilarities:
    """Cosine similarity between every pair of named directions (each subspace's leading direction).

    Args:
        vectors: ``{name: AgentSubspace or direction tensor}``; names like ``"IMAD agent 2 L5"`` or
            ``"base system-prompt L5"`` label the plot.

    Returns:
        A `CosineSimilarities` (symmetric, ones on the diagonal).

    Example:
        >>> sims = lens.geometry.cosine_similarities({"x": torch.eye(3)[0], "y": torch.eye(3)[1]})
        >>> sims.angle_deg("x", "y")
        90.0
    """
    if not vectors:
        raise LensInputError("vectors is empty; pass {name: AgentSubspace or tensor}")
    mats = {name: _matrix(v, name) for name, v in vectors.items()}
    _check_widths(mats)
    rows = np.stack([m[0] / np.linalg.norm(m[0]) for m in mats.values()])
    return CosineSimilarities(names=list(mats), matrix=np.clip(rows @ rows.T, -1.0, 1.0))


@dataclass
class PrincipalAngles:
    """The principal angles (degrees, smallest first) between the spans of subspaces ``a`` and ``b``:
    min(k_a, k_b) of them; 0 means a shared direction, 90 an orthogonal one."""

    a: str
    b: str
    angles_deg: list[float]

    @property
    def smallest(self) -> float:
        return self.angles_deg[0]

    @property
    def largest(self) -> float:
        return self.angles_deg[-1]

    def to_dict(self) -> dict:
        return {"a": self.a, "b": self.b, "angles_deg": self.angles_deg}


def principal_angles(a: AgentSubspace | Tensor, b: AgentSubspace | Tensor, *,
                     names: tuple[str, str] = ("a", "b")) -> PrincipalAngles:
    """Principal angles between the spans of two subspaces (``scipy.linalg.subspace_angles``), whatever their
    bases' norms; for k = 1 this is the angle between the lines (0–90°, sign ignored).

    Args:
        a: A subspace, or a basis ``[k, d_model]`` / direction ``[d_model]``.
        b: The same for the other one.
        names: Labels for the two.

    Returns:
        A `PrincipalAngles` with min(k_a, k_b) angles in degrees, ascending.

    Example:
        >>> plane, other = torch.eye(3)[:2], torch.eye(3)[[0, 2]]
        >>> lens.geometry.principal_angles(plane, other).angles_deg
        [0.0, 90.0]
    """
    from scipy.linalg import subspace_angles

    ma, mb = _matrix(a, names[0]), _matrix(b, names[1])
    _check_widths({names[0]: ma, names[1]: mb})
    for name, m in ((names[0], ma), (names[1], mb)):
        if np.linalg.matrix_rank(m) < m.shape[0]:
            raise LensInputError(f"{name!r}: its {m.shape[0]} basis rows are linearly dependent; pass a basis")
    angles = np.sort(np.degrees(subspace_angles(ma.T, mb.T)))
    return PrincipalAngles(a=names[0], b=names[1], angles_deg=[float(x) for x in angles])
