"""How far the study's results move with the training seed.

The same preset run once per seed, each in its own run dir (``latent-agents reproduce --run-dir runs/toy-seed1
--set meta.seed=1``), is read back from each run's ``report/results.json``, ``base/stage.json`` and
``base/base_eval.json``: every number the claims rest on (the toy base's accuracies and its round-2 revisions,
Table 1, the paired differences, each claim's intervals) becomes one row of per-run values with their mean,
standard deviation and range, and every claim one row of per-run verdicts.
A verdict that differs between seeds depends on luck; a margin smaller than the spread is a verdict waiting to flip.
A run dir holding only its toy base (``latent-agents toy base --set meta.seed=2``) adds the base's numbers.
"""

from __future__ import annotations

import json
import math
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import plotly.graph_objects as go

from analyses.results import RESULTS
from lens.io import atomic_write_json, atomic_write_text
from training.errors import UserError
from training.layout import RunLayout
from training.toy_base import base_summary


MISSING = "–"  # the verdict of a run that lacks the claim or its report


class SpreadError(UserError, ValueError):
    """A run dir given to the seed spread has no finished report, or fewer than two were given."""


@dataclass(frozen=True)
class Spread:
    """One number over the runs.

    Attributes:
        name: what it is, e.g. ``Table 1 IMAD accuracy``.
        values: one value per run, in the order of the runs (NaN where a run lacks it).
    """

    name: str
    values: tuple[float, ...]

    @property
    def present(self) -> list[float]:
        """The values of the runs that have the number (NaNs left out).

        Returns:
            The values, in run order.

        Example:
            >>> from analyses.spread import Spread
            >>> Spread("x", (0.5, float("nan"), 0.7)).present
            [0.5, 0.7]
        """
        return [v for v in self.values if not math.isnan(v)]

    @property
    def mean(self) -> float:
        """The mean over the runs that have the number (NaN when none has it).

        Returns:
            The mean.

        Example:
            >>> from analyses.spread import Spread
            >>> Spread("x", (0.5, float("nan"), 0.7)).mean
            0.6
        """
        vals = self.present
        return statistics.fmean(vals) if vals else math.nan

    @property
    def sd(self) -> float:
        """The sample standard deviation over the runs that have the number (NaN with fewer than two).

        Returns:
            The standard deviation.

        Example:
            >>> from analyses.spread import Spread
            >>> round(Spread("x", (0.5, float("nan"), 0.7)).sd, 4)
            0.1414
        """
        vals = self.present
        return statistics.stdev(vals) if len(vals) > 1 else math.nan

    @property
    def range(self) -> float:
        """The largest minus the smallest value over the runs that have the number (NaN when none has it).

        Returns:
            The range.

        Example:
            >>> from analyses.spread import Spread
            >>> round(Spread("x", (0.5, float("nan"), 0.7)).range, 2)
            0.2
        """
        vals = self.present
        return max(vals) - min(vals) if vals else math.nan


@dataclass
class SeedSpread:
    """The spread of one preset's results over runs that differ in their seed.

    Attributes:
        runs: the run dirs, in the order given.
        seeds: each run's ``meta.seed``.
        numbers: one `Spread` per number present in at least one run.
        verdicts: claim id to its verdict in each run (``"–"`` where a run lacks the claim or its report).
    """

    runs: list[str]
    seeds: list[int]
    numbers: list[Spread] = field(default_factory=list)
    verdicts: dict[str, list[str]] = field(default_factory=dict)

    @property
    def unstable_claims(self) -> list[str]:
        """The claims whose verdict is not the same in every run that has it (a base-only run has none).

        Returns:
            Their ids, in the order of ``verdicts``.

        Example:
            >>> from analyses.spread import SeedSpread
            >>> s = SeedSpread(["a", "b"], [0, 1], verdicts={"c": ["reproduced", "not reproduced"],
            ...                                              "d": ["reproduced", "–"]})
            >>> s.unstable_claims
            ['c']
        """
        return [c for c, v in self.verdicts.items() if len(set(v) - {MISSING}) > 1]

    def number(self, name: str) -> Spread:
        """The `Spread` called ``name``; KeyError when no run has it.

        Args:
            name: The number's name, e.g. ``Table 1 IMAD accuracy``.

        Returns:
            Its `Spread`.

        Raises:
            KeyError: no run has a number of that name.

        Example:
            >>> from analyses.spread import SeedSpread, Spread
            >>> SeedSpread(["a", "b"], [0, 1], [Spread("x", (0.5, 0.7))]).number("x").values
            (0.5, 0.7)
        """
        for s in self.numbers:
            if s.name == name:
                return s
        raise KeyError(name)


def _run_numbers(run_dir: Path) -> tuple[int, dict[str, float], dict[str, str]]:
    """One run's seed, its numbers (name to value) and its claims' verdicts; a run with a toy base but no report
    yet (``latent-agents toy base`` alone) gives the base's numbers only."""
    layout = RunLayout(run_dir)
    path = layout.report / RESULTS
    base_stage = layout.toy_base / "stage.json"
    if not path.is_file() and not base_stage.is_file():
        raise SpreadError(f"{path} does not exist; finish that run with `latent-agents reproduce --run-dir "
                          f"{run_dir}` (or build its base with `latent-agents toy base`) before measuring the seed "
                          "spread")
    numbers: dict[str, float] = {}
    seed = -1
    if base_stage.is_file():
        stage = json.loads(base_stage.read_text())
        seed = int(((stage.get("built_from") or {}).get("keys") or {}).get("seed", seed))
        for who, acc in (stage.get("accuracy") or {}).items():
            numbers[f"base {who} accuracy"] = acc
        base = base_summary(layout.toy_base)
        for key, value in (base.get("round2") or {}).items():
            numbers[f"base round-2 {key.replace('_', ' ')}"] = value
        if base.get("round2_checks"):
            numbers["base round-2 check before repairs"] = base["round2_checks"][0]["accuracy"]
            numbers["repair phases of the base"] = base["repairs"]  # a count: kept out of the "base " figure (in %)
    if not path.is_file():
        return seed, numbers, {}
    res = json.loads(path.read_text())
    for row in res.get("table1") or []:
        numbers[f"Table 1 {row['method']} accuracy"] = row["accuracy"]
        if row.get("transfer") is not None:
            numbers[f"Table 1 {row['method']} transfer"] = row["transfer"]
    for name, iv in (res.get("table1_paired") or {}).items():
        numbers[f"paired {name}"] = iv["estimate"]
    for claim in res.get("claims") or []:
        for name, iv in (claim.get("intervals") or {}).items():
            if f"paired {name}" not in numbers:
                numbers[f"{claim['id']}: {name}"] = iv["estimate"]
    verdicts = {c["id"]: c["verdict"] for c in res.get("claims") or []}
    return int((res.get("seeds") or {}).get("preset", seed)), numbers, verdicts


def seed_spread(run_dirs: Sequence[str | Path]) -> SeedSpread:
    """Read the finished runs and line their numbers and verdicts up.

    Args:
        run_dirs: two or more run dirs of the same preset, each finished by ``latent-agents reproduce`` (or holding
            only its toy base, built by ``latent-agents toy base``: then only the base's numbers).

    Returns:
        The `SeedSpread`; numbers keep the order of their first appearance, and a number whose name carries a
        strength (``α=...``) that differs between runs appears once per name, with NaN where a run lacks it.

    Raises:
        SpreadError: fewer than two run dirs, or one with neither ``report/results.json`` nor a toy base.

    Example:
        >>> s = seed_spread(["runs/toy", "runs/toy-seed1", "runs/toy-seed2"])  # doctest: +SKIP
        >>> s.number("Table 1 IMAD accuracy").sd  # doctest: +SKIP
        0.012
    """
    if len(run_dirs) < 2:
        raise SpreadError(f"the seed spread needs at least two run dirs, got {len(run_dirs)}; run the preset "
                          "again with `--set meta.seed=1` into another --run-dir")
    seeds, per_run, verdicts = [], [], []
    for d in run_dirs:
        seed, numbers, verdict = _run_numbers(Path(d))
        seeds.append(seed)
        per_run.append(numbers)
        verdicts.append(verdict)
    names = list(dict.fromkeys(n for numbers in per_run for n in numbers))
    claims = list(dict.fromkeys(c for v in verdicts for c in v))
    return SeedSpread(
        runs=[str(d) for d in run_dirs], seeds=seeds,
        numbers=[Spread(n, tuple(float(numbers.get(n, math.nan)) for numbers in per_run)) for n in names],
        verdicts={c: [v.get(c, MISSING) for v in verdicts] for c in claims})


def _fmt(v: float) -> str:
    return "–" if math.isnan(v) else f"{v:.4g}"


def to_markdown(spread: SeedSpread) -> str:
    """The spread as two markdown tables: the numbers (one column per seed, then mean, SD and range) and the
    claims' verdicts.

    Args:
        spread: from `seed_spread`.

    Returns:
        Markdown text.

    Example:
        >>> s = SeedSpread(["a", "b"], [0, 1], [Spread("x", (0.5, 0.7))], {"c": ["reproduced", "reproduced"]})
        >>> print(to_markdown(s).splitlines()[2])
        | x | 0.5 | 0.7 | 0.6 | 0.1414 | 0.2 |
    """
    seeds = " | ".join(f"seed {s}" for s in spread.seeds)
    lines = [f"| number | {seeds} | mean | SD | range |",
             "|---|" + "---|" * (len(spread.seeds) + 3)]
    lines += [f"| {s.name} | " + " | ".join(_fmt(v) for v in s.values)
              + f" | {_fmt(s.mean)} | {_fmt(s.sd)} | {_fmt(s.range)} |" for s in spread.numbers]
    lines += ["", f"| claim | {seeds} | same in every run that has it |", "|---|" + "---|" * (len(spread.seeds) + 1)]
    unstable = set(spread.unstable_claims)
    lines += [f"| {c} | " + " | ".join(v) + f" | {'no' if c in unstable else 'yes'} |"
              for c, v in spread.verdicts.items()]
    return "\n".join(lines) + "\n"


def plot_spread(spread: SeedSpread, prefix: str = "Table 1 ") -> go.Figure:
    """The numbers whose name starts with ``prefix``, one row each, a marker per run (coloured by seed), so the
    spread of each number is its horizontal extent.

    Args:
        spread: from `seed_spread`.
        prefix: which numbers to show (``"Table 1 "``, ``"base "``, ``"paired "``, a claim id + ``":"``).

    Returns:
        The plotly figure (values in %, for the accuracy-like numbers on a 0–1 scale).

    Example:
        >>> s = SeedSpread(["a", "b"], [0, 1], [Spread("Table 1 IMAD accuracy", (0.7, 0.75))], {})
        >>> len(plot_spread(s).data)
        2
    """
    rows = [s for s in spread.numbers if s.name.startswith(prefix)]
    fig = go.Figure()
    for i, seed in enumerate(spread.seeds):
        fig.add_trace(go.Scatter(x=[100 * s.values[i] for s in rows], y=[s.name[len(prefix):] for s in rows],
                                 mode="markers", name=f"seed {seed}", marker={"size": 10}))
    fig.update_layout(title=f"Spread over training seeds: {prefix.strip() or 'all numbers'}",
                      xaxis_title="value (%)", template="plotly_white", height=120 + 40 * len(rows))
    return fig


def write_spread(spread: SeedSpread, out_dir: str | Path) -> list[Path]:
    """Write the spread into ``out_dir``: ``spread.md`` (`to_markdown`), ``spread.json`` (runs, seeds, every
    number with its per-run values, mean, SD and range, the verdicts) and one HTML figure each for the base's and
    Table 1's numbers (`plot_spread`), each file written whole or not at all.

    Args:
        spread: from `seed_spread`.
        out_dir: the directory (created when missing).

    Returns:
        The paths written.

    Example:
        >>> write_spread(seed_spread(["runs/toy", "runs/toy-seed1"]), "runs/toy-spread")  # doctest: +SKIP
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    numbers = [{"name": s.name, "values": [None if math.isnan(v) else v for v in s.values],
                **{k: None if math.isnan(v) else v for k, v in (("mean", s.mean), ("sd", s.sd), ("range", s.range))}}
               for s in spread.numbers]
    paths = [atomic_write_text(out / "spread.md", to_markdown(spread)),
             atomic_write_json(out / "spread.json", {"runs": spread.runs, "seeds": spread.seeds, "numbers": numbers,
                                                     "verdicts": spread.verdicts,
                                                     "unstable_claims": spread.unstable_claims})]
    for prefix, name in (("base ", "spread_base.html"), ("Table 1 ", "spread_table1.html")):
        html = plot_spread(spread, prefix).to_html(include_plotlyjs=True, full_html=True)
        paths.append(atomic_write_text(out / name, html))
    return paths
