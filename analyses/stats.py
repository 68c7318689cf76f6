"""95% bootstrap intervals for every number a claim rests on, resampling seeds and the questions within them.

Data come as one array per seed (``[[item scores of seed 0], [item scores of seed 1], ...]``; one seed is one
group). Each bootstrap draw resamples the seeds with replacement, then the items within each drawn seed, and takes
the statistic of the pooled draw; the interval is the percentile interval of the draws (numpy, seeded, so the
same data always give the same interval). Paired comparisons (two methods on the same questions) resample the
per-item differences, which keeps the pairing.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np

N_BOOT = 2000
LEVEL = 0.95


@dataclass(frozen=True)
class Interval:
    """A point estimate with its bootstrap interval ``[lo, hi]`` at ``level`` (NaN when there is no data)."""

    estimate: float
    lo: float
    hi: float
    n: int
    level: float = LEVEL

    @property
    def ci(self) -> list[float]:
        """``[lo, hi]``.

        Returns:
            The interval's two ends.

        Example:
            >>> from analyses.stats import Interval
            >>> Interval(0.5, 0.25, 0.75, 4).ci
            [0.25, 0.75]
        """
        return [self.lo, self.hi]

    def to_dict(self) -> dict:
        """The interval as a plain dict, as ``results.json`` and the claims store it.

        Returns:
            ``{"estimate", "ci": [lo, hi], "n", "level"}``.

        Example:
            >>> from analyses.stats import Interval
            >>> Interval(0.5, 0.25, 0.75, 4).to_dict()
            {'estimate': 0.5, 'ci': [0.25, 0.75], 'n': 4, 'level': 0.95}
        """
        return {"estimate": self.estimate, "ci": self.ci, "n": self.n, "level": self.level}


def _groups(values) -> list[np.ndarray]:
    """``values`` as a list of 1-D float arrays (one per seed), NaNs dropped; a flat sequence is one group."""
    if len(values) and not np.ndim(values[0]):
        values = [values]
    out = [np.asarray([v for v in g if v is not None], dtype=float) for g in values]
    return [g[~np.isnan(g)] for g in out if np.any(~np.isnan(g))]


def bootstrap(values, *, statistic: Callable[[np.ndarray], float] = np.mean, n_boot: int = N_BOOT,
              level: float = LEVEL, seed: int = 0) -> Interval:
    """Percentile bootstrap interval of ``statistic`` over seeds and the items within them.

    Args:
        values: Item scores, flat (one seed) or one sequence per seed (ragged allowed); None/NaN are dropped.
        statistic: Of the pooled resampled items (default: the mean).
        n_boot: Bootstrap draws.
        level: Coverage of the interval, in (0, 1).
        seed: Seed of numpy's generator (the interval is deterministic given the data and the seed).

    Returns:
        An `Interval` (estimate = the statistic on all the data); NaN everywhere when no value is left.

    Raises:
        ValueError: ``level`` is not in (0, 1).

    Example:
        >>> bootstrap([[1, 0, 1, 1], [0, 1, 1, 1]]).estimate
        0.75
    """
    if not 0 < level < 1:
        raise ValueError(f"level {level!r} must be in (0, 1), e.g. 0.95")
    groups = _groups(values)
    if not groups:
        return Interval(math.nan, math.nan, math.nan, 0, level)
    pooled = np.concatenate(groups)
    rng = np.random.default_rng(seed)
    if len(groups) == 1 and statistic is np.mean:  # the common case, vectorised
        g = groups[0]
        draws = g[rng.integers(len(g), size=(n_boot, len(g)))].mean(axis=1)
    else:
        draws = np.array([_draw(groups, statistic, rng) for _ in range(n_boot)])
    tail = 100 * (1 - level) / 2
    lo, hi = np.percentile(draws, [tail, 100 - tail])
    return Interval(float(statistic(pooled)), float(lo), float(hi), int(len(pooled)), level)


def _draw(groups: list[np.ndarray], statistic, rng) -> float:
    """One bootstrap draw: seeds with replacement, then items within each drawn seed."""
    picked = rng.integers(len(groups), size=len(groups))
    return float(statistic(np.concatenate([groups[g][rng.integers(len(groups[g]), size=len(groups[g]))]
                                           for g in picked])))


def paired_difference(a, b, **kwargs) -> Interval:
    """Interval of mean(a − b) for two methods scored on the same items (same seeds, same order).

    Args:
        a: Item scores of the first method, flat or one sequence per seed.
        b: The second method's scores of the same items, in the same layout.
        **kwargs: Passed to `bootstrap`.

    Returns:
        An `Interval` of the mean paired difference.

    Raises:
        ValueError: ``a`` and ``b`` differ in their number of seeds or items per seed.

    Example:
        >>> paired_difference([1, 1, 1, 0], [0, 1, 0, 0]).estimate
        0.5
    """
    ga, gb = ([a] if len(a) and not np.ndim(a[0]) else a), ([b] if len(b) and not np.ndim(b[0]) else b)
    if [len(x) for x in ga] != [len(x) for x in gb]:
        raise ValueError(f"paired data must have the same shape per seed; got {[len(x) for x in ga]} and "
                         f"{[len(x) for x in gb]}")
    diffs = [[math.nan if x is None or y is None else float(x) - float(y) for x, y in zip(xa, xb)]
             for xa, xb in zip(ga, gb)]
    return bootstrap(diffs, **kwargs)


def by_seed(records: Sequence[dict], key: str = "correct", seed_key: str = "seed") -> list[list[float]]:
    """Per-seed lists of ``float(record[key])`` from records such as Table 1's samples (order kept).

    Args:
        records: Sample records (``{"seed", "question", "correct", ...}``).
        key: The field taken, as a float.
        seed_key: The field that names the seed.

    Returns:
        One list per seed, the seeds in order of first appearance.

    Example:
        >>> from analyses.stats import by_seed
        >>> by_seed([{"seed": 0, "correct": True}, {"seed": 1, "correct": False}, {"seed": 0, "correct": False}])
        [[1.0, 0.0], [0.0]]
    """
    out: dict = {}
    for r in records:
        out.setdefault(r.get(seed_key), []).append(float(r[key]))
    return list(out.values())


def ratio_of_means(a: Sequence[float], b: Sequence[float], *, n_boot: int = N_BOOT, level: float = LEVEL,
                   seed: int = 0) -> Interval:
    """Interval of mean(a) / mean(b) for paired items (e.g. IMAD's and Debate's tokens on the same questions),
    resampling the pairs.

    Args:
        a: The numerator's per-item values (flat).
        b: The denominator's values of the same items, in the same order.
        n_boot: Bootstrap draws.
        level: Coverage of the interval, in (0, 1).
        seed: Seed of numpy's generator.

    Returns:
        An `Interval` (estimate NaN when mean(b) is 0; NaN ends when no draw is finite).

    Raises:
        ValueError: ``a`` and ``b`` are not two equally long, non-empty flat sequences.

    Example:
        >>> ratio_of_means([1.0, 1.0], [10.0, 10.0]).estimate
        0.1
    """
    x, y = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if x.shape != y.shape or x.ndim != 1 or not len(x):
        raise ValueError(f"ratio_of_means needs two equally long non-empty sequences (got {x.shape} and {y.shape})")
    idx = np.random.default_rng(seed).integers(len(x), size=(n_boot, len(x)))
    with np.errstate(divide="ignore", invalid="ignore"):
        draws = x[idx].mean(axis=1) / y[idx].mean(axis=1)
        est = float(x.mean() / y.mean()) if y.mean() else math.nan
    tail = 100 * (1 - level) / 2
    draws = draws[np.isfinite(draws)]
    if not len(draws):
        return Interval(est, math.nan, math.nan, len(x), level)
    lo, hi = np.percentile(draws, [tail, 100 - tail])
    return Interval(est, float(lo), float(hi), len(x), level)


def _paired(a: Sequence[dict], b: Sequence[dict], key: str) -> tuple[list[list[float]], list[list[float]]]:
    """``key`` of the records two methods share (same seed and question), grouped by seed, in the same order."""
    index = {(r.get("seed"), r["question"]): r for r in b}
    ga: dict = {}
    gb: dict = {}
    for r in a:
        other = index.get((r.get("seed"), r["question"]))
        if other is not None:
            ga.setdefault(r.get("seed"), []).append(float(r[key]))
            gb.setdefault(r.get("seed"), []).append(float(other[key]))
    return list(ga.values()), list(gb.values())


COMPARISONS = (("IMAD", "Debate"), ("Debate", "Single"), ("IMAD", "Single"), ("IMAD", "SFT"))


def table1_intervals(samples: dict[str, Sequence[dict]]) -> tuple[dict[str, Interval], dict[str, Interval]]:
    """Per-method accuracy intervals and the paired comparisons the claims rest on, from Table 1's samples
    (``{method: [{"seed", "question", "correct", "tokens"}, ...]}``).

    Args:
        samples: Method → its sample records; a method without records is left out.

    Returns:
        ``(accuracy, paired)``: ``accuracy[method]`` over seeds and questions; ``paired`` holds the accuracy
        differences ``"A−B"`` for each pair in `COMPARISONS`, IMAD against every method named like "Single + RL"
        and that method against Single, ``"IMAD/Debate tokens"`` (ratio of mean tokens) and ``"SFT−IMAD tokens"``.

    Example:
        >>> acc, paired = table1_intervals({"IMAD": imad_records, "Debate": debate_records})  # doctest: +SKIP
        >>> paired["IMAD−Debate"].ci  # doctest: +SKIP
    """
    acc = {m: bootstrap(by_seed(recs)) for m, recs in samples.items() if recs}
    rl = [m for m in samples if "single" in m.lower() and "rl" in m.lower()]
    pairs = [*COMPARISONS, *(("IMAD", m) for m in rl), *((m, "Single") for m in rl)]
    paired: dict[str, Interval] = {}
    for a, b in pairs:
        if samples.get(a) and samples.get(b):
            xa, xb = _paired(samples[a], samples[b], "correct")
            if xa:
                paired[f"{a}−{b}"] = paired_difference(xa, xb)
    if samples.get("IMAD") and samples.get("Debate"):
        ta, tb = _paired(samples["IMAD"], samples["Debate"], "tokens")
        if ta:
            paired["IMAD/Debate tokens"] = ratio_of_means(np.concatenate(ta), np.concatenate(tb))
    if samples.get("IMAD") and samples.get("SFT"):
        ts, ti = _paired(samples["SFT"], samples["IMAD"], "tokens")
        if ts:
            paired["SFT−IMAD tokens"] = paired_difference(ts, ti)
    return acc, paired
