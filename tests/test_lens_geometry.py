"""Geometry on known vectors: orthogonal → 90°, identical → 0°, principal angles of planes with known rotations."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import lens
from lens.geometry import cosine_similarities, principal_angles

D = 16


def e(i: int) -> torch.Tensor:
    return torch.eye(D)[i]


def sub(basis: torch.Tensor, layer: int = 1) -> lens.AgentSubspace:
    basis = basis[None] if basis.ndim == 1 else basis
    return lens.AgentSubspace(basis=basis, layer=layer, hook_name=lens.hook_name(layer), position="end",
                              method="pca" if basis.shape[0] > 1 else "diff_means")


def test_cosines_of_known_vectors():
    diag = (e(0) + e(1)) / math.sqrt(2)
    sims = cosine_similarities({"x": sub(e(0)), "y": e(1), "x again": 3 * e(0), "-x": -e(0), "diag": diag})
    assert sims.names == ["x", "y", "x again", "-x", "diag"]
    assert np.allclose(np.diag(sims.matrix), 1) and np.allclose(sims.matrix, sims.matrix.T)
    assert sims.angle_deg("x", "y") == pytest.approx(90)
    assert sims.angle_deg("x", "x again") == pytest.approx(0, abs=1e-5)
    assert sims.angle_deg("x", "-x") == pytest.approx(180)
    assert sims.angle_deg("x", "diag") == pytest.approx(45)
    fig = lens.plots.cosine_heatmap(sims)
    assert np.allclose(np.array(fig.data[0].z), sims.matrix) and list(fig.data[0].x) == sims.names


def test_principal_angles_of_known_subspaces():
    plane = torch.stack([e(0), e(1)])
    assert principal_angles(plane, plane).angles_deg == pytest.approx([0, 0], abs=1e-5)
    assert principal_angles(plane, torch.stack([e(2), e(3)])).angles_deg == pytest.approx([90, 90])
    assert principal_angles(plane, torch.stack([e(0), e(2)])).angles_deg == pytest.approx([0, 90], abs=1e-5)
    t = math.radians(30)
    rotated = torch.stack([2 * e(0), math.cos(t) * e(1) + math.sin(t) * e(2)])  # norms do not matter
    got = principal_angles(sub(plane), sub(rotated), names=("base", "IMAD"))
    assert got.angles_deg == pytest.approx([0, 30], abs=1e-4) and (got.a, got.b) == ("base", "IMAD")
    assert principal_angles(e(0), -e(0)).angles_deg == pytest.approx([0], abs=1e-5)  # lines: sign ignored
    fig = lens.plots.principal_angle_bars([got, principal_angles(plane, torch.stack([e(2), e(3)]))])
    assert [list(bar.y) for bar in fig.data] == [pytest.approx([0, 90], abs=1e-4), pytest.approx([30, 90])]


def test_geometry_bad_inputs():
    with pytest.raises(lens.LensInputError, match="different widths"):
        cosine_similarities({"a": e(0), "b": torch.ones(8)})
    with pytest.raises(lens.LensInputError, match="'z' has a zero or non-finite direction"):
        cosine_similarities({"a": e(0), "z": torch.zeros(D)})
    with pytest.raises(lens.LensInputError, match="linearly dependent"):
        principal_angles(torch.stack([e(0), 2 * e(0)]), e(1))
    with pytest.raises(lens.LensInputError, match="vectors is empty"):
        cosine_similarities({})
