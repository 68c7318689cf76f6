"""The notebooks: each committed ``.ipynb`` is exactly what ``notebooks/build.py`` makes from its percent-format
``.py`` source (so they cannot drift), outputs stay out of git, and each runs headless (nbclient) against the
smoke study, printing the numbers its lens calls make."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

from test_reproduce import smoke_study  # noqa: F401  (the session's smoke study fixture)

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOK_DIR = ROOT / "notebooks"
_spec = importlib.util.spec_from_file_location("notebook_build", NOTEBOOK_DIR / "build.py")
build = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(build)
SOURCES = build.sources()
NAMES = ["01_quickstart", "02_agent_subspaces", "03_malicious_suppression"]

# What each notebook must print when run: numbers made by the lens calls in it, not read from saved results.
EXPECTED_OUTPUT = {
    "01_quickstart": [r"\d+ turns from \d+ debates, layers \[0, 1\]", r"blocks\.\d\.hook_resid_post programmer",
                      r"α=2: '"],
    "02_agent_subspaces": [r"\{1: \d+\.\d, 2: \d+\.\d, 3: \d+\.\d\} degrees, SFT vs IMAD per agent",
                           r"'SFT a2': \[\d+\.\d, \d+\.\d\]", r"IMAD a3"],
    "03_malicious_suppression": [r"Cohen's d -?\d+\.\d\d", r"cap threshold -?\d+\.\d+", r"add -1", r"ablate",
                                 r"\d+ held-out turns: projection AUROC [01]\.\d{3}, text judge AUROC [01]\.\d{3}",
                                 r"controlvector llama layers \[1\] cosine with -evil (1\.000000|0\.99999\d)"],
}


def test_each_notebook_is_built_from_its_source():
    assert [p.stem for p in SOURCES] == NAMES
    assert sorted(p.stem for p in NOTEBOOK_DIR.glob("*.ipynb")) == NAMES
    for src in SOURCES:
        committed = src.with_suffix(".ipynb").read_text()
        assert committed == build.render(src), f"{src.name} and its .ipynb differ: run `python notebooks/build.py`"
        nb = nbformat.reads(committed, as_version=4)
        nbformat.validate(nb)
        code = [c for c in nb.cells if c.cell_type == "code"]
        assert nb.cells[0].cell_type == "markdown" and nb.cells[0].source.startswith("# ")
        assert all(not c.outputs and c.execution_count is None for c in code)
        assert any("lens." in c.source for c in code)


def test_percent_format_cells():
    source = "# %% [markdown]\n# # Title\n#\n# text\n\n# %%\nimport lens\n\nx = 1\n\n\n# %%\nx\n"
    cells = build.cells(source)
    assert [c.cell_type for c in cells] == ["markdown", "code", "code"]
    assert [c.source for c in cells] == ["# Title\n\ntext", "import lens\n\nx = 1", "x"]
    assert all(c.outputs == [] for c in cells[1:])


@pytest.mark.parametrize("source, message", [
    ("import lens\n# %%\nx = 1\n", "<source>:1: text before the first '# %%' marker"),
    ("# %% [raw]\nx\n", "<source>:1: unknown cell marker '# %% [raw]'"),
    ("# %% [markdown]\n# fine\nnot a comment\n", "<source>:3: a markdown cell's lines must be comments"),
    ("\n\n", "<source>: no '# %%' cell markers found"),
])
def test_percent_format_errors_name_the_line(source, message):
    with pytest.raises(build.NotebookSourceError, match=re.escape(message)):
        build.cells(source)


def _printed(nb) -> str:
    parts = []
    for cell in nb.cells:
        for out in cell.get("outputs", []):
            if out.get("output_type") == "stream":
                parts.append(out["text"])
            elif "data" in out:
                parts.append(out["data"].get("text/plain", ""))
    return "\n".join(parts)


@pytest.mark.slow
@pytest.mark.parametrize("name", NAMES)
def test_notebook_runs_against_the_smoke_study(name, smoke_study, monkeypatch):  # noqa: F811
    monkeypatch.setenv("LATENT_AGENTS_RUN_DIR", str(smoke_study))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    nb = nbformat.read(NOTEBOOK_DIR / f"{name}.ipynb", as_version=4)
    NotebookClient(nb, kernel_name="python3", timeout=600, resources={"metadata": {"path": str(ROOT)}}).execute()
    shown = [o for c in nb.cells for o in c.get("outputs", []) if o.get("output_type") in ("display_data",
                                                                                          "execute_result")]
    assert sum("application/vnd.plotly.v1+json" in o["data"] for o in shown) >= 2
    printed = _printed(nb)
    for pattern in EXPECTED_OUTPUT[name]:
        assert re.search(pattern, printed), f"{name}: no output matching {pattern!r} in:\n{printed[:3000]}"
