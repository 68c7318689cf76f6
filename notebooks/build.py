"""Turn each percent-format source ``notebooks/NN_name.py`` into ``NN_name.ipynb`` with empty outputs.

Usage: ``python notebooks/build.py``. The ``.py`` files are the sources (read and edit those); the ``.ipynb`` files
are generated so that Jupyter opens them, and a test checks that they equal what this script makes.

Format (the "percent" format of Spyder, VS Code and jupytext): a line ``# %%`` starts a code cell and
``# %% [markdown]`` a markdown cell, whose lines are comments (``# `` is stripped). Nothing but blank lines may
come before the first marker; blank lines around a cell's content are dropped.
"""

from __future__ import annotations

import re
from pathlib import Path

import nbformat
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

HERE = Path(__file__).resolve().parent
MARKER = re.compile(r"^# %%(?P<rest>.*)$")
KERNELSPEC = {"name": "python3", "display_name": "Python 3", "language": "python"}


class NotebookSourceError(ValueError):
    """A percent-format source that cannot be turned into cells."""


def _markdown(lines: list[str], where: str) -> str:
    out = []
    for n, line in lines:
        if line == "#" or line.startswith("# "):
            out.append(line[2:])
        elif line.strip():
            raise NotebookSourceError(f"{where}:{n}: a markdown cell's lines must be comments ('# ...'), got {line!r}")
        else:
            out.append("")
    return "\n".join(out).strip("\n")


def cells(source: str, where: str = "<source>") -> list:
    """The notebook cells of a percent-format source.

    Args:
        source: The ``.py`` text.
        where: Its name, for error messages.

    Returns:
        nbformat v4 cells (code cells with no outputs).

    Example:
        >>> [c.cell_type for c in cells("# %% [markdown]\\n# # Title\\n\\n# %%\\nx = 1\\n")]
        ['markdown', 'code']
    """
    out, kind, body = [], None, []

    def close() -> None:
        if kind is None:
            return
        if kind == "markdown":
            out.append(new_markdown_cell(_markdown(body, where)))
        else:
            out.append(new_code_cell("\n".join(line for _, line in body).strip("\n")))

    for n, line in enumerate(source.splitlines(), start=1):
        m = MARKER.match(line)
        if m is None:
            if kind is None and line.strip():
                raise NotebookSourceError(f"{where}:{n}: text before the first '# %%' marker; start with a cell")
            body.append((n, line))
            continue
        rest = m.group("rest").strip()
        if rest not in ("", "[markdown]"):
            raise NotebookSourceError(f"{where}:{n}: unknown cell marker {line!r}; use '# %%' or '# %% [markdown]'")
        close()
        kind, body = ("markdown" if rest else "code"), []
    close()
    if not out:
        raise NotebookSourceError(f"{where}: no '# %%' cell markers found")
    return out


def notebook(path: Path) -> nbformat.NotebookNode:
    """The notebook (outputs empty) that the percent-format source ``path`` describes; cell ids are numbered,
    so that the same source always gives the same file."""
    nb = new_notebook(cells=cells(path.read_text(), str(path)), metadata={"kernelspec": KERNELSPEC})
    for i, cell in enumerate(nb.cells):
        cell.id = f"cell-{i:02d}"
    return nb


def render(path: Path) -> str:
    """The exact ``.ipynb`` text `build` writes for the source ``path``."""
    return nbformat.writes(notebook(path)) + "\n"


def sources(directory: Path = HERE) -> list[Path]:
    """The notebook sources: ``NN_*.py`` files in ``directory``."""
    return sorted(p for p in directory.glob("[0-9][0-9]_*.py"))


def build(directory: Path = HERE) -> list[Path]:
    """Write ``NN_name.ipynb`` beside each source; returns the paths written."""
    written = []
    for src in sources(directory):
        path = src.with_suffix(".ipynb")
        path.write_text(render(src))
        written.append(path)
    return written


if __name__ == "__main__":
    for p in build():
        print(p)
