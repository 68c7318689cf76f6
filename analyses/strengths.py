"""α where it matters: one strength unit for every model and vector, and a grid per model and vector chosen on a
selection split by where steering halves the model's capability.

The unit: α multiplies the vector's unit direction scaled to the mean residual norm at the steered layer (of the
readings it was fitted on), so α = 0.1 adds a tenth of a typical residual on any model. The grid:
`lens.rating.halving_strength` finds, on training-partition problems (never the test items), the strength at
which capability halves in each direction, and `lens.rating.strength_grid` spaces ``grid_points`` strengths from 0
to it. The agent-subspace and malicious experiments both steer on such grids.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import lens
from analyses.generation import prompt_for, stop_ids
from lens.debate_format import extract_boxed
from lens.rating import halving_strength, strength_grid
from training.evaluate import is_correct
from training.prompts import ARITHMETIC
from training.schema import AT_LEAST_ONE, NON_NEGATIVE, POSITIVE

RESIDUAL_UNIT = "α (× mean residual norm)"


@dataclass(frozen=True)
class StrengthSearch:
    """Preset keys of the strength unit and grid search, shared by ``[subspaces]`` and ``[malicious]``."""

    alpha_search: bool = True           # grid per model and vector from the selection split (α × mean residual norm)
    n_select: int = field(default=20, metadata=AT_LEAST_ONE)  # α-selection split: training-partition problems
    # strengths per direction between 0 and the capability-halving strength
    grid_points: int = field(default=5, metadata=AT_LEAST_ONE)
    search_start: float = field(default=0.05, metadata=POSITIVE)  # first strength tried (× mean residual norm)
    search_steps: int = field(default=6, metadata=AT_LEAST_ONE)  # growing strengths (×2 each: up to 1.6 × the norm)
    search_refine: int = field(default=1, metadata=NON_NEGATIVE)  # bisection steps


def in_residual_units(sub):
    """``sub`` as its unit direction times the mean residual norm of the readings it was fitted on.

    Args:
        sub: An `lens.AgentSubspace` whose ``stats`` record ``resid_norm`` (every lens fitter records it).

    Returns:
        A copy whose basis rows have that norm (``normalization = "mean residual norm"``).

    Raises:
        ValueError: ``sub.stats`` records no ``resid_norm``.

    Example:
        >>> in_residual_units(sub).basis.norm(dim=1)  # doctest: +SKIP
        tensor([118.4])
    """
    if "resid_norm" not in sub.stats:
        raise ValueError(f"vector {sub.method!r} records no mean residual norm (stats: {sorted(sub.stats)})")
    unit = sub.basis / sub.basis.norm(dim=1, keepdim=True)
    return dataclasses.replace(sub, basis=unit * sub.stats["resid_norm"], normalization="mean residual norm")


class Accuracy:
    """``capability(model)``: greedy arithmetic accuracy on ``problems`` (steering applies), keeping each call's
    per-problem correctness in ``records`` for the intervals; `over_alphas` and `over_arms` score a whole α grid or
    several interventions in one batched `lens.generate` (a `lens.rating.GridCapability`).

    Example:
        >>> acc = Accuracy("imad", problems[:4], max_new_tokens=40, seed=0)  # doctest: +SKIP
        >>> acc(model), acc.records[-1]  # doctest: +SKIP
        (0.75, [True, True, False, True])
    """

    def __init__(self, kind: str, problems, max_new_tokens: int, seed: int, persona: str | None = None,
                 batch_size: int = 64):
        self.kind, self.problems, self.max_new_tokens, self.seed, self.persona = (kind, problems, max_new_tokens,
                                                                                    seed, persona)
        self.batch_size = batch_size
        self.records: list[list[bool]] = []

    def _score(self, model, interventions=None, alphas=None) -> list[list[bool]]:
        """Per-problem correctness of each (arm, α) block of rows, recorded in order."""
        prompts = [prompt_for(self.kind, p.question, model.tokenizer, ARITHMETIC, self.persona)
                   for p in self.problems]
        outs = lens.generate(model, prompts, interventions=interventions, alphas=alphas,
                             max_new_tokens=self.max_new_tokens, seed=self.seed, batch_size=self.batch_size,
                             stop=stop_ids(model, at_tags=False)).texts
        n = len(self.problems)
        blocks = [[is_correct(extract_boxed(o), p) for o, p in zip(outs[i:i + n], self.problems)]
                  for i in range(0, len(outs), n)]
        self.records.extend(blocks)
        return blocks

    def __call__(self, model) -> float:
        return _share(self._score(model)[0])

    def over_alphas(self, model, add, alphas) -> list[float]:
        """Accuracy under ``add`` scaled by each of ``alphas``, in one batched pass.

        Args:
            model: A model loaded with `lens.load_model`.
            add: The steering intervention (e.g. ``lens.Add(sub, 1.0, positions="generated")``), scaled by each α.
            alphas: The strengths.

        Returns:
            Accuracy (0–1) per α, in order; each α's per-problem correctness is appended to ``records``.

        Example:
            >>> acc = Accuracy("imad", problems, 96, seed=0)  # doctest: +SKIP
            >>> acc.over_alphas(model, lens.Add(sub, 1.0, positions="generated"), [0.0, 0.1, 0.2])  # doctest: +SKIP
            [0.9, 0.86, 0.62]
        """
        return [_share(b) for b in self._score(model, add, list(alphas))]

    def over_arms(self, model, arms: dict) -> dict[str, float]:
        """Accuracy under each arm (``{name: interventions}``; ``[]`` is the unsteered model), in one pass.

        Args:
            model: A model loaded with `lens.load_model`.
            arms: Arm name → its interventions (``[]``: the unsteered model).

        Returns:
            Arm → accuracy (0–1); each arm's per-problem correctness is appended to ``records``.

        Example:
            >>> arms = {"unsteered": [], "ablation": [lens.Ablate(sub, positions="all")]}  # doctest: +SKIP
            >>> acc.over_arms(model, arms)  # doctest: +SKIP
            {'unsteered': 0.9, 'ablation': 0.88}
        """
        return {name: _share(b) for name, b in zip(arms, self._score(model, arms))}


def _share(correct: list[bool]) -> float:
    return sum(correct) / len(correct)


def search_grid(model, vector, accuracy: Accuracy, cfg: StrengthSearch) -> tuple[list[float], dict]:
    """The α grid for ``model`` and ``vector``: ``cfg.grid_points`` strengths from 0 to where capability on the
    selection split halves, in each direction.

    Args:
        model: A TransformerLens model (its HF twin generates when loaded with ``keep_hf``).
        vector: The vector in the unit its strengths are stated in (`in_residual_units`).
        accuracy: Capability on the selection split (training-partition problems).
        cfg: The search settings (a ``[subspaces]`` or ``[malicious]`` section).

    Returns:
        (the grid, 0 included; the search: selection capability and each direction's `HalvingSearch` as a dict).

    Example:
        >>> grid, search = search_grid(model, in_residual_units(sub), Accuracy("imad", select, 96, 0), cfg)  # doctest: +SKIP
        >>> grid[:3], search["positive"]["strength"]  # doctest: +SKIP
        ([-0.4, -0.32, -0.24], 0.35)
    """
    c0 = accuracy(model)
    kw = dict(start=cfg.search_start, max_steps=cfg.search_steps, refine=cfg.search_refine, capability0=c0)
    neg = halving_strength(model, vector, accuracy, sign=-1.0, **kw)
    pos = halving_strength(model, vector, accuracy, sign=1.0, **kw)
    return (strength_grid(neg.strength, pos.strength, cfg.grid_points),
            {"selection_capability": c0, "negative": neg.to_dict(), "positive": pos.to_dict()})
