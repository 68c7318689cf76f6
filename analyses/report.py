"""A self-contained HTML report: interactive plotly figures (plotly.js inlined once, so it opens offline),
tables, claim verdicts and free text, written atomically.
"""

from __future__ import annotations

import html
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import plotly.graph_objects as go
from plotly.offline import get_plotlyjs

from analyses.claims import Claim
from lens.io import atomic_write_text

STYLE = """
body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}
table{border-collapse:collapse;margin:1em 0;font-size:14px}
td,th{border:1px solid #ccc;padding:4px 8px;text-align:left}td.num{text-align:right}th{background:#f3f3f3}
caption{font-weight:600;text-align:left;padding:4px 0}
.ok{color:#11772d;font-weight:600}.bad{color:#b3261e;font-weight:600}.na{color:#777;font-weight:600}
pre{background:#f7f7f7;padding:1em;overflow-x:auto;font-size:13px}.note{color:#555}
"""


def _cell(v) -> str:
    """One ``<td>``: numbers right-aligned (4 significant digits), missing values as a dash."""
    if v is None or (isinstance(v, float) and v != v):
        return "<td class='num'>–</td>"
    if isinstance(v, (int, float)) and not isinstance(v, bool):
        return f"<td class='num'>{v:.4g}</td>" if isinstance(v, float) else f"<td class='num'>{v}</td>"
    return f"<td>{html.escape(str(v))}</td>"


@dataclass
class Report:
    """An ordered list of HTML blocks plus the figures in it (kept for static export)."""

    title: str
    blocks: list[str] = field(default_factory=list)
    figures: dict[str, go.Figure] = field(default_factory=dict)
    tables: list[str] = field(default_factory=list)

    def heading(self, text: str, level: int = 2) -> None:
        """Append a heading.

        Args:
            text: The heading (escaped).
            level: Its HTML level (``<h2>`` by default).

        Returns:
            None.

        Example:
            >>> from analyses.report import Report
            >>> rep = Report("study")
            >>> rep.heading("Results")
            >>> rep.blocks
            ['<h2>Results</h2>']
        """
        self.blocks.append(f"<h{level}>{html.escape(text)}</h{level}>")

    def text(self, text: str, cls: str = "") -> None:
        """Append a paragraph.

        Args:
            text: The paragraph (escaped).
            cls: Its CSS class (``note``: grey; empty: none).

        Returns:
            None.

        Example:
            >>> from analyses.report import Report
            >>> rep = Report("study")
            >>> rep.text("a < b", "note")
            >>> rep.blocks
            ['<p class="note">a &lt; b</p>']
        """
        self.blocks.append(f'<p class="{cls}">{html.escape(text)}</p>' if cls else f"<p>{html.escape(text)}</p>")

    def pre(self, text: str) -> None:
        """Append preformatted text (the preset's TOML).

        Args:
            text: The text (escaped).

        Returns:
            None.

        Example:
            >>> from analyses.report import Report
            >>> rep = Report("study")
            >>> rep.pre("seed = 0")
            >>> rep.blocks
            ['<pre>seed = 0</pre>']
        """
        self.blocks.append(f"<pre>{html.escape(text)}</pre>")

    def table(self, rows: Sequence[dict], caption: str, columns: Sequence[str] | None = None) -> None:
        """A table from a list of row dicts (columns default to the first row's keys).

        Args:
            rows: The rows; a missing cell is empty, numbers are right-aligned (4 significant digits), None/NaN a dash.
            caption: The table's caption, also listed in ``tables``.
            columns: The columns, in order (None: the first row's keys).

        Returns:
            None; without rows a note takes the table's place (and ``tables`` does not list it).

        Example:
            >>> from analyses.report import Report
            >>> rep = Report("study")
            >>> rep.table([{"method": "IMAD", "accuracy": 0.61}], "Table 1")
            >>> rep.tables
            ['Table 1']
        """
        if not rows:
            self.text(f"{caption}: no rows.", "note")
            return
        cols = list(columns or rows[0].keys())
        head = "".join(f"<th>{html.escape(c)}</th>" for c in cols)
        body = "".join("<tr>" + "".join(_cell(r.get(c, "")) for c in cols) + "</tr>" for r in rows)
        self.blocks.append(f"<table><caption>{html.escape(caption)}</caption><tr>{head}</tr>{body}</table>")
        self.tables.append(caption)

    def figure(self, name: str, fig: go.Figure) -> None:
        """An interactive figure; ``name`` is its id and the stem of its static image.

        Args:
            name: Unique within the report.
            fig: The plotly figure (kept in ``figures``).

        Returns:
            None.

        Raises:
            ValueError: ``name`` is already used in the report.

        Example:
            >>> import plotly.graph_objects as go
            >>> from analyses.report import Report
            >>> rep = Report("study")
            >>> rep.figure("accuracy", go.Figure())
            >>> list(rep.figures)
            ['accuracy']
        """
        if name in self.figures:
            raise ValueError(f"figure name {name!r} is used twice in the report")
        self.figures[name] = fig
        self.blocks.append(fig.to_html(full_html=False, include_plotlyjs=False, div_id=f"fig-{name}"))

    def claims(self, claims: Sequence[Claim]) -> None:
        """Append the table of claim verdicts (reproduced, not reproduced, not run), listed as ``Paper claims``.

        Args:
            claims: The claims (`analyses.claims`).

        Returns:
            None.

        Example:
            >>> from analyses.claims import malicious_claims
            >>> from analyses.report import Report
            >>> rep = Report("study")
            >>> rep.claims(malicious_claims(None))
            >>> rep.tables
            ['Paper claims']
        """
        rows = []
        for c in claims:
            cls = {True: "ok", False: "bad", None: "na"}[c.reproduced]
            rows.append(f"<tr><td>{html.escape(c.claim)}</td><td class='{cls}'>{c.verdict}</td>"
                        f"<td>{html.escape(c.measured)}</td><td>{html.escape(c.paper)}</td></tr>")
        self.blocks.append("<table><caption>Paper claims</caption><tr><th>claim</th><th>verdict</th>"
                           "<th>measured here</th><th>paper</th></tr>" + "".join(rows) + "</table>")
        self.tables.append("Paper claims")

    def html(self) -> str:
        """The whole report as one self-contained HTML page (plotly.js inlined once).

        Returns:
            The HTML text.

        Example:
            >>> from analyses.report import Report
            >>> Report("study").html().startswith("<!DOCTYPE html>")
            True
        """
        return (f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{html.escape(self.title)}</title>"
                f"<style>{STYLE}</style><script type='text/javascript'>{get_plotlyjs()}</script></head><body>"
                f"<h1>{html.escape(self.title)}</h1>" + "\n".join(self.blocks) + "</body></html>")

    def write(self, path: str | Path) -> Path:
        """Write `html` to ``path`` atomically.

        Args:
            path: The file (e.g. ``run_dir/report/report.html``).

        Returns:
            The path written.

        Example:
            >>> rep.write("runs/toy/report/report.html")  # doctest: +SKIP
            PosixPath('runs/toy/report/report.html')
        """
        return atomic_write_text(path, self.html())

