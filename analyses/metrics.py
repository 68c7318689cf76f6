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
    """ROUGE-1/2/L F-measures of ``prediction`` against ``reference``."""
    scores = _SCORER.score(reference, prediction)
    return {m: scores[m].fmeasure for m in ROUGE_METRICS}


def auc(xs: Sequence[float], ys: Sequence[float]) -> float:
    """Trapezoid area under ``ys`` over ``xs`` (the paper's ROUGE AUC over α ∈ [0, 5])."""
    if len(xs) != len(ys) or len(xs) < 2:
        raise ValueError(f"AUC needs at least two aligned points (got {len(xs)} x and {len(ys)} y)")
    pairs = sorted(zip(map(float, xs), map(float, ys)))
    return sum((x1 - x0) * (y0 + y1) / 2 for (x0, y0), (x1, y1) in zip(pairs, pairs[1:]))


def pct_change(base: float, new: float) -> float:
    """Relative change from ``base`` to ``new`` in percent (NaN when ``base`` is 0)."""
    return math.nan if base == 0 else 100.0 * (new - base) / abs(base)


def json_safe(obj):
    """``obj`` with every NaN/inf float replaced by ``None``, so saved results are strict JSON."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(v) for v in obj]
    return obj
