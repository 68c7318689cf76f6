"""Stage 2's schedules: the token budget of each phase, and the tag-reward coefficient that decays with it.

Each phase trains under a shorter budget than the last, so the budget anneals from the SFT model's own length
distribution down to one short exit; the structure (tag) reward's weight falls with the budget.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence


def structure_coeff(budget: float, *, hi: float, lo: float, start: float = 0.1, floor: float = 0.05) -> float:
    """The paper's tag-reward coefficient at ``budget``: 1 at or above ``hi``, ``floor`` at or below ``lo``, and
    ``start + (1 - start)·(budget - lo)/(hi - lo)`` in between (paper code: hi 2048, lo 500).

    Args:
        budget: The phase's token budget.
        hi: The budget at and above which the coefficient is 1.
        lo: The budget at and below which it is ``floor``.
        start: The coefficient just above ``lo``.
        floor: The coefficient at ``lo`` and below.

    Returns:
        The coefficient.

    Raises:
        ValueError: ``hi`` is not above ``lo``.

    Example:
        >>> from training.schedules import structure_coeff
        >>> [structure_coeff(b, hi=2048, lo=500) for b in (2048, 1274, 500)]
        [1.0, 0.55, 0.05]
    """
    if hi <= lo:
        raise ValueError(f"structure schedule needs hi > lo, got hi={hi} and lo={lo}")
    if budget >= hi:
        return 1.0
    if budget <= lo:
        return floor
    return start + (1.0 - start) * (budget - lo) / (hi - lo)


@dataclass(frozen=True)
class PhaseSpec:
    """One phase as the preset writes it: ``budget`` in tokens (int) or as a fraction of the reference length
    (float ≤ 1: the p95 of the SFT model's sampled lengths), ``steps`` GRPO steps, and an optional fixed
    ``tag_weight`` overriding the coefficient schedule."""

    budget: int | float
    steps: int
    tag_weight: float | None = None

    @property
    def is_fraction(self) -> bool:
        """Whether ``budget`` is a fraction of the reference length (a float ≤ 1) rather than a token count."""
        return isinstance(self.budget, float) and self.budget <= 1.0


@dataclass(frozen=True)
class Phase:
    """A resolved phase: budget in tokens and the tag-reward coefficient used in it."""

    index: int
    budget: int
    coeff: float
    steps: int


def resolve_phases(specs: Sequence[PhaseSpec], ref_length: int | None = None, *, hi: int | None = None,
                   lo: int | None = None) -> list[Phase]:
    """Budgets in tokens and coefficients for ``specs``; fractional budgets scale ``ref_length``. The coefficient
    schedule runs from the full debate (the longer of ``ref_length`` and the largest budget: coefficient 1) to
    the shortest budget (0.05), unless ``hi``/``lo`` say otherwise.

    Args:
        specs: The phases as the preset writes them.
        ref_length: The reference length fractional budgets scale (the p95 of the SFT model's sampled lengths).
        hi: The budget with coefficient 1 (``None``: the longer of ``ref_length`` and the largest budget).
        lo: The budget with coefficient 0.05 (``None``: the smallest budget).

    Returns:
        One `Phase` per spec, in order; a fixed ``tag_weight`` replaces the schedule's coefficient, and a single
        budget (``hi == lo``) gets coefficient 1.

    Raises:
        ValueError: no phases, a fractional budget without ``ref_length``, a budget that is neither a token count
            nor a fraction in (0, 1], or fewer than one step.

    Example:
        >>> from training.schedules import PhaseSpec, resolve_phases
        >>> resolve_phases([PhaseSpec(0.5, 10), PhaseSpec(100, 10)], ref_length=400)
        [Phase(index=0, budget=200, coeff=0.4, steps=10), Phase(index=1, budget=100, coeff=0.05, steps=10)]
    """
    if not specs:
        raise ValueError("the GRPO schedule has no phases; add at least one [[internalize.phases]] entry")
    budgets = []
    for s in specs:
        if s.is_fraction:
            if ref_length is None:
                raise ValueError(f"phase budget {s.budget} is a fraction but no reference length was measured")
            budgets.append(max(1, round(s.budget * ref_length)))
        elif isinstance(s.budget, (int, float)) and s.budget >= 1:
            budgets.append(int(s.budget))
        else:
            raise ValueError(f"phase budget {s.budget!r} is invalid; use a token count ≥ 1 or a fraction in (0, 1]")
        if s.steps < 1:
            raise ValueError(f"phase steps must be ≥ 1, got {s.steps}")
    hi = hi if hi is not None else max(budgets + ([ref_length] if ref_length else []))
    lo = lo if lo is not None else min(budgets)
    return [Phase(i, b, s.tag_weight if s.tag_weight is not None else
                  (1.0 if hi == lo else structure_coeff(b, hi=hi, lo=lo)), s.steps)
            for i, (s, b) in enumerate(zip(specs, budgets))]
