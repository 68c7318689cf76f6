"""The three notebooks run headless (nbclient) against the smoke study and raise no error; outputs stay out of git."""

from __future__ import annotations

from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

from test_reproduce import smoke_study  # noqa: F401  (the session's smoke study fixture)

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))


def test_three_notebooks_with_empty_outputs():
    assert [p.name for p in NOTEBOOKS] == ["01_quickstart.ipynb", "02_agent_subspaces.ipynb",
                                           "03_malicious_suppression.ipynb"]
    for path in NOTEBOOKS:
        nb = nbformat.read(path, as_version=4)
        assert all(not c.get("outputs") and c.get("execution_count") is None for c in nb.cells if c.cell_type == "code")


@pytest.mark.slow
@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_runs_against_the_smoke_study(path, smoke_study, monkeypatch):  # noqa: F811
    monkeypatch.setenv("LATENT_AGENTS_RUN_DIR", str(smoke_study))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    nb = nbformat.read(path, as_version=4)
    NotebookClient(nb, kernel_name="python3", timeout=600, resources={"metadata": {"path": str(ROOT)}}).execute()
    shown = [o for c in nb.cells for o in c.get("outputs", []) if o.get("output_type") == "display_data"]
    assert any("application/vnd.plotly.v1+json" in o["data"] for o in shown)
