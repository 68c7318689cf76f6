"""Small numeric helpers the experiments share: ROUGE against a reference, area under a curve, strict JSON.

ROUGE uses Google's `rouge_score` package (what HF `evaluate` wraps) so that no metric script is fetched.
"""

from __future__ import annotations

import math
from typing import Sequence

from rouge_score import rouge_scorer

ROUGE_METRICS = ("rouge1", "rouge2", "rougeL")
_SCORER = rouge_scorer.RougeScorer(list(ROUGE_METRICS), use_stemmer=True)


def rouge(prediction: str, reference: str) -> dict[str, float]:
    """ROUGE-1/2/L F-measures of ``prediction`` against ``reference`` (Porter stemming, as the paper's scorer).

    Args:
        prediction: The generated text.
        reference: The text it is compared with (an agent's own turn).

    Returns:
        ``{"rouge1": f, "rouge2": f, "rougeL": f}``, each in 0..1.

    Example:
        >>> rouge("the cat sat", "the cat sat down")["rouge1"]
        0.8571428571428571
    """
    scores = _SCORER.score(reference, prediction)
    return {m: scores[m].fmeasure for m in ROUGE_METRICS}


def auc(xs: Sequence[float], ys: Sequence[float]) -> float:
    """Trapezoid area under ``ys`` over ``xs`` (the paper's ROUGE AUC over α ∈ [0, 5]).

    Args:
        xs: The strengths (any order; sorted with their ``ys``).
        ys: The value at each strength.

    Returns:
        The area.

    Raises:
        ValueError: fewer than two points, or ``xs`` and ``ys`` of different lengths.

    Example:
        >>> auc([0, 1, 2], [0.5, 0.5, 1.0])
        1.25
    """
    if len(xs) != len(ys) or len(xs) < 2:
        raise ValueError(f"AUC needs at least two aligned points (got {len(xs)} x and {len(ys)} y)")
    pairs = sorted(zip(map(float, xs), map(float, ys)))
    return sum((x1 - x0) * (y0 + y1) / 2 for (x0, y0), (x1, y1) in zip(pairs, pairs[1:]))


def pct_change(base: float, new: float) -> float:
    """Relative change from ``base`` to ``new`` in percent (NaN when ``base`` is 0).

    Args:
        base: The reference value.
        new: The changed value.

    Returns:
        ``100 (new − base) / |base|``.

    Example:
        >>> pct_change(2.0, 3.0)
        50.0
    """
    return math.nan if base == 0 else 100.0 * (new - base) / abs(base)


def json_safe(obj):
    """``obj`` with every NaN/inf float replaced by ``None``, so saved results are strict JSON.

    Args:
        obj: Nested dicts, lists and tuples of JSON values and floats.

    Returns:
        The same structure (tuples become lists) with non-finite floats as ``None``.

    Example:
        >>> json_safe({"auc": float("nan"), "xs": (1.0, float("inf"))})
        {'auc': None, 'xs': [1.0, None]}
    """
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(v) for v in obj]
    return obj
