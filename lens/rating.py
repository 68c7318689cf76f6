"""Rate a steering vector as a trait suppressor: trait score, capability and coherence across an α grid.

All α values run in one batched `lens.generate` (one α per row) where ``batch_size`` allows; capability runs the
caller's task under the intervention for each α (in one batched pass when it is a `GridCapability`); coherence is
the perplexity of each response under a reference model.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Protocol, Sequence, runtime_checkable

import numpy as np
import torch
from jaxtyping import Float
from torch import Tensor

from lens.activations import resolve_prepend_bos
from lens.errors import LensInputError
from lens.generation import generate
from lens.interventions import Add, intervene
from lens.subspace import AgentSubspace


@runtime_checkable
class Judge(Protocol):
    """A trait judge: ``score_many(questions, responses)`` gives one score in 0..100 per response (``None`` where it
    cannot score one)."""

    def score_many(self, questions: Sequence[str], responses: Sequence[str]) -> Sequence[float | None]: ...


@dataclass
class SuppressionReport:
    """Per-α trait mean ± SE (0–100), capability (0–1), perplexity mean ± SE, deltas vs α=0, the best α within
    the capability-drop budget and the normalised area under the suppression curve."""

    alphas: list[float]
    trait_mean: list[float]
    trait_se: list[float]
    capability: list[float]
    perplexity_mean: list[float]
    perplexity_se: list[float]
    delta_trait: list[float]
    delta_capability: list[float]
    best_alpha: float
    capacity_budget: float
    suppression_auc: float
    hook_name: str
    positions: str
    responses: list[list[str]] = field(default_factory=list)
    trait_scores: list[list[float]] = field(default_factory=list)
    settings: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in asdict(self).items()}


def mean_se(values: Sequence[float | None]) -> tuple[float, float]:
    """Mean and standard error of ``values``, Nones and NaNs dropped (SE 0 for one value, NaN for none).

    Args:
        values: Scores; ``None`` (a judge that could not score) and NaN are left out.

    Returns:
        ``(mean, standard error)`` with the sample standard deviation (ddof 1).

    Example:
        >>> mean_se([10.0, None, 30.0])
        (20.0, 10.0)
    """
    v = np.array([x for x in values if x is not None and not math.isnan(x)], dtype=float)
    if len(v) == 0:
        return float("nan"), float("nan")
    return float(v.mean()), float(v.std(ddof=1) / math.sqrt(len(v))) if len(v) > 1 else 0.0


def _score_trait(trait, questions: Sequence[str], responses: Sequence[str]) -> list[float]:
    if hasattr(trait, "score_many"):
        scores = list(trait.score_many(questions, responses))
    elif callable(trait):
        scores = [trait(q, r) for q, r in zip(questions, responses)]
    else:
        raise LensInputError("trait must be a judge with score_many(questions, responses) or a callable "
                             "(question, response) -> score in 0..100")
    if len(scores) != len(responses):
        raise LensInputError(f"the trait judge returned {len(scores)} scores for {len(responses)} responses")
    return [float("nan") if s is None else float(s) for s in scores]


def response_perplexities(reference, pairs: Sequence[tuple[str, str]], *, batch_size: int = 16,
                          prepend_bos: bool | None = None) -> list[float]:
    """Perplexity of each response given its prompt under ``reference`` (prompt tokens masked out): how fluent
    steered text still reads to an unsteered model.

    Args:
        reference: A model loaded with `lens.load_model` (its tokenizer tokenizes the pairs).
        pairs: ``(prompt, response)`` texts.
        batch_size: Rows per forward pass.
        prepend_bos: Prepend BOS to each prompt (default: the model's own choice).

    Returns:
        exp(mean negative log-likelihood of the response tokens) per pair; NaN for an empty response.

    Example:
        >>> response_perplexities(model, [("Q: 2+2?", " 4")])  # doctest: +SKIP
        [3.1]
    """
    tok = reference.tokenizer
    bos = [tok.bos_token_id] if resolve_prepend_bos(reference, prepend_bos) else []
    rows = [(bos + tok(p, add_special_tokens=False)["input_ids"], tok(r, add_special_tokens=False)["input_ids"])
            for p, r in pairs]
    return _perplexities(reference, rows, batch_size)


@torch.no_grad()
def _perplexities(reference, rows: Sequence[tuple[list[int], list[int]]], batch_size: int) -> list[float]:
    """exp(mean NLL of the response ids given the prompt ids), per (prompt ids, response ids) row; NaN if empty."""
    pad = reference.tokenizer.pad_token_id or 0
    out = []
    for start in range(0, len(rows), batch_size):
        chunk = rows[start:start + batch_size]
        width = max(len(p) + len(r) for p, r in chunk)
        tokens = torch.full((len(chunk), width), pad, dtype=torch.long)
        for i, (p, r) in enumerate(chunk):
            tokens[i, :len(p) + len(r)] = torch.tensor(p + r)
        logprobs: Float[Tensor, "batch pos vocab"] = reference(tokens.to(reference.cfg.device)).float().log_softmax(-1).cpu()
        for i, (p, r) in enumerate(chunk):
            if not r:
                out.append(float("nan"))
                continue
            lp = logprobs[i, len(p) - 1:len(p) + len(r) - 1].gather(-1, torch.tensor(r)[:, None])[:, 0]
            out.append(float(torch.exp(-lp.mean())))
    return out


def rate_suppression(model, subspace: AgentSubspace | Add, *, alphas: Sequence[float], prompts: Sequence[str],
                     trait, capability: Callable[[Any], float] | None = None, reference=None,
                     capacity_budget: float = 0.05, max_new_tokens: int = 64, batch_size: int | None = None,
                     questions: Sequence[str] | None = None, layers: int | Sequence[int] | None = None,
                     positions: str = "generated", prepend_bos: bool | None = None, seed: int = 0,
                     do_sample: bool = False, **generate_kwargs) -> SuppressionReport:
    """Rate a steering vector as a trait suppressor over an α grid: trait, capability and coherence per α.

    All α run in one batched `lens.generate` when ``batch_size`` allows. The best α is the one with the lowest
    trait whose capability drop vs α=0 is within ``capacity_budget``.

    Args:
        model: A TransformerLens model.
        subspace: The vector (an `AgentSubspace`, added at its layer and site), or an `Add` whose strength α
            multiplies.
        alphas: The α grid (0 is added); NaN/inf raise.
        prompts: Prompts to generate from (as read, no template applied).
        trait: A judge with ``score_many(questions, responses)`` or a callable ``(question, response) -> 0..100``.
        capability: ``capability(model) -> 0..1``, run under the intervention at each α, or a `GridCapability`
            that scores the whole grid in one batched pass (``None``: not measured).
        reference: Model scoring perplexity of the responses (default: this model, unsteered).
        capacity_budget: Allowed capability drop (0..1) for the best α.
        max_new_tokens: Tokens per response.
        batch_size: Rows per generate call (default: the whole grid at once).
        questions: What the judge sees as the question per prompt (default: the prompts).
        layers: Where to write (default: the vector's layer).
        positions: Which positions to steer (default: generated tokens only).
        prepend_bos: Whether to prepend BOS; ``None`` uses the model's default.
        seed: Sampling seed.
        do_sample: Sample (with ``temperature``/``top_p`` in ``generate_kwargs``) instead of greedy.
        **generate_kwargs: ``eos_token_id`` (stop ids), ``temperature``, ``top_p``, ``top_k``.

    Returns:
        A `SuppressionReport`.

    Example:
        >>> report = lens.rate_suppression(model, sub, alphas=[-4, -2], prompts=["Problem: 2+2\\n\\n"],
        ...     trait=lambda q, r: 100.0 * ("evil" in r), max_new_tokens=16)  # doctest: +SKIP
        >>> report.best_alpha  # doctest: +SKIP
        -4.0
    """
    alphas = [float(a) for a in alphas]
    if not alphas:
        raise LensInputError("the α grid is empty; pass alphas=[...] with at least one value (α=0 is added)")
    if not all(math.isfinite(a) for a in alphas):
        raise LensInputError(f"alphas must be finite numbers; got {alphas} (NaN or inf is never a valid α)")
    if isinstance(prompts, str) or not prompts:
        raise LensInputError("prompts must be a non-empty list of prompts")
    questions = list(questions) if questions is not None else list(prompts)
    if len(questions) != len(prompts):
        raise LensInputError(f"{len(questions)} questions for {len(prompts)} prompts; give one per prompt")
    unknown = sorted(set(generate_kwargs) - {"eos_token_id", "temperature", "top_p", "top_k"})
    if unknown:
        raise LensInputError(f"unknown generation option(s) {unknown}; valid: eos_token_id, temperature, top_p, "
                             f"top_k")
    add = subspace if isinstance(subspace, Add) else Add(subspace, 1.0, layers=layers, positions=positions)
    grid = sorted(set(alphas) | {0.0})
    prepend_bos = resolve_prepend_bos(model, prepend_bos)
    temperature = float(generate_kwargs.get("temperature", 1.0)) if do_sample else 0.0
    out = generate(model, prompts, interventions=add, alphas=grid, max_new_tokens=max_new_tokens,
                   stop=generate_kwargs.get("eos_token_id"), temperature=temperature,
                   top_p=generate_kwargs.get("top_p"), top_k=generate_kwargs.get("top_k"), seed=seed,
                   batch_size=batch_size or len(grid) * len(prompts), prepend_bos=prepend_bos,
                   skip_special_tokens=True)
    texts = out.texts
    scores = _score_trait(trait, questions * len(grid), texts)
    if reference is None:  # the unsteered model itself scores exactly the generated ids
        ppl = _perplexities(model, list(zip(out.prompt_tokens, out.tokens)), batch_size or 16)
    else:
        ppl = response_perplexities(reference, [(prompts[i % len(prompts)], t) for i, t in enumerate(texts)])
    n = len(prompts)
    by_alpha = lambda xs: [xs[i * n:(i + 1) * n] for i in range(len(grid))]  # noqa: E731
    trait_stats = [mean_se(s) for s in by_alpha(scores)]
    ppl_stats = [mean_se(s) for s in by_alpha(ppl)]
    cap = [float("nan")] * len(grid) if capability is None else capability_over(model, add, grid, capability)
    i0 = grid.index(0.0)
    trait_mean = [m for m, _ in trait_stats]
    delta_trait = [m - trait_mean[i0] for m in trait_mean]
    delta_cap = [c - cap[i0] for c in cap]
    allowed = [i for i in range(len(grid)) if math.isfinite(trait_mean[i])
               and (capability is None or delta_cap[i] >= -capacity_budget)] or [i0]
    best = min(allowed, key=lambda i: (trait_mean[i], abs(grid[i])))
    return SuppressionReport(
        alphas=grid, trait_mean=trait_mean, trait_se=[s for _, s in trait_stats], capability=cap,
        perplexity_mean=[m for m, _ in ppl_stats], perplexity_se=[s for _, s in ppl_stats], delta_trait=delta_trait,
        delta_capability=delta_cap, best_alpha=grid[best], capacity_budget=capacity_budget,
        suppression_auc=suppression_auc(grid, trait_mean), hook_name=",".join(add.hook_names(model)),
        positions=add.positions, responses=by_alpha(texts), trait_scores=by_alpha(scores),
        settings={"max_new_tokens": max_new_tokens, "do_sample": do_sample, "seed": seed,
                  "prepend_bos": prepend_bos, "n_prompts": n, "alpha_zero_added": 0.0 not in alphas,
                  "reference": "model itself (unsteered)" if reference is None else "given reference",
                  "site": add.site,
                  **{k: v for k, v in generate_kwargs.items() if isinstance(v, (int, float, str, bool))}})


def suppression_auc(alphas: Sequence[float], trait_mean: Sequence[float]) -> float:
    """Trapezoid mean over the α range of the relative suppression max(0, trait(0) − trait(α)) / trait(0):
    0 = no suppression anywhere, 1 = the trait gone at every α. Pass the α range you care about.

    Args:
        alphas: The strengths, including 0.
        trait_mean: The mean trait score at each strength.

    Returns:
        The mean relative suppression in [0, 1]; NaN when the unsteered trait is 0 or fewer than two strengths.

    Example:
        >>> suppression_auc([0.0, 1.0, 2.0], [80.0, 40.0, 0.0])
        0.5
    """
    i0 = list(alphas).index(0.0)
    t0 = trait_mean[i0]
    if not t0 > 0 or len(alphas) < 2:
        return float("nan")
    s = np.clip((t0 - np.asarray(trait_mean, dtype=float)) / t0, 0.0, None)
    x = np.asarray(alphas, dtype=float)
    return float(np.trapezoid(s, x) / (x.max() - x.min()))


@dataclass
class ParetoFrontier:
    """Suppression methods at each strength as points (trait reduction, capability drop), the non-dominated ones
    and the best method within a capability-drop budget (the Assistant Axis' choice of a capping setting).

    ``points`` are dicts with ``method``, ``strength``, ``trait_reduction`` (trait at the unsteered point minus
    trait under the method; higher is better) and ``capability_drop`` (unsteered capability minus capability
    under the method, 0–1; lower is better), plus whatever else the caller keeps (e.g. intervals).
    """

    points: list[dict]
    frontier: list[int]
    budget: float
    best: int | None

    @property
    def best_point(self) -> dict | None:
        return None if self.best is None else self.points[self.best]

    def to_dict(self) -> dict:
        return {"points": self.points, "frontier": self.frontier, "budget": self.budget, "best": self.best,
                "best_method": None if self.best is None else self.points[self.best]["method"]}


def pareto_frontier(points: Sequence[dict], *, budget: float = 0.05) -> ParetoFrontier:
    """The Pareto frontier of trait reduction (maximised) against capability drop (minimised) over all methods
    and strengths, and the best point whose capability drop is at most ``budget``.

    A point is on the frontier when no other point reduces the trait at least as much with at most its capability
    drop, and strictly better in one of the two. The best point within the budget is the largest trait reduction
    there (ties: the smaller drop, then the earlier point); ``None`` when no point fits the budget.

    Args:
        points: Dicts with ``method``, ``strength``, ``trait_reduction`` and ``capability_drop`` (NaNs are never
            on the frontier and never best).
        budget: Allowed capability drop (same units as ``capability_drop``).

    Returns:
        A `ParetoFrontier` (frontier indices sorted by capability drop).

    Example:
        >>> f = pareto_frontier([{"method": "add", "strength": -2, "trait_reduction": 30, "capability_drop": 0.2},
        ...                      {"method": "cap", "strength": 90, "trait_reduction": 20, "capability_drop": 0.0}])
        >>> f.frontier, f.best_point["method"]
        ([1, 0], 'cap')
    """
    pts = [dict(p) for p in points]
    for p in pts:
        missing = {"method", "strength", "trait_reduction", "capability_drop"} - set(p)
        if missing:
            raise LensInputError(f"a Pareto point lacks {sorted(missing)}; each needs method, strength, "
                                 f"trait_reduction and capability_drop")
    ok = [i for i, p in enumerate(pts) if math.isfinite(p["trait_reduction"]) and math.isfinite(p["capability_drop"])]

    def dominates(j: int, i: int) -> bool:
        a, b = pts[j], pts[i]
        return (a["trait_reduction"] >= b["trait_reduction"] and a["capability_drop"] <= b["capability_drop"]
                and (a["trait_reduction"] > b["trait_reduction"] or a["capability_drop"] < b["capability_drop"]))

    front = sorted((i for i in ok if not any(dominates(j, i) for j in ok)),
                   key=lambda i: (pts[i]["capability_drop"], -pts[i]["trait_reduction"]))
    within = [i for i in ok if pts[i]["capability_drop"] <= budget]
    best = min(within, key=lambda i: (-pts[i]["trait_reduction"], pts[i]["capability_drop"], i)) if within else None
    return ParetoFrontier(points=pts, frontier=front, budget=budget, best=best)


@dataclass
class HalvingSearch:
    """Where steering halves a model's capability in one direction: the strengths tried with their capability,
    the unsteered capability, and the first strength (refined by bisection) at or below half of it. ``reached``
    is False when no strength tried halved it; then ``strength`` is the largest tried."""

    sign: float
    capability0: float
    strength: float
    reached: bool
    tried: list[tuple[float, float]]

    def to_dict(self) -> dict:
        return asdict(self)


def halving_strength(model, vector: AgentSubspace | Add, capability: Callable[[Any], float], *, sign: float = 1.0,
                     start: float = 0.05, grow: float = 2.0, max_steps: int = 8, refine: int = 2,
                     capability0: float | None = None) -> HalvingSearch:
    """The strength at which steering with ``vector`` halves ``capability`` (search on a selection split).

    Tries ``sign · start · grow^k`` for k = 0, 1, ... until capability ≤ half the unsteered value, then bisects
    ``refine`` times between the last strength that kept more than half and the first that did not (when the
    unsteered capability is 0 there is nothing to halve: no search, the largest strength it would try). Strengths
    multiply the vector as given, so choose its scale (the unit) first, e.g. the mean residual norm.

    Args:
        model: A TransformerLens model.
        vector: An `AgentSubspace` (added at its layer) or an `Add` (its strength is multiplied).
        capability: ``capability(model) -> 0..1``, run under the intervention (use selection-split items, not
            the test items); a `GridCapability` scores all growing strengths in one batched pass.
        sign: +1 or −1, the direction of the search.
        start: The first strength tried (> 0).
        grow: Factor between successive strengths (> 1).
        max_steps: At most this many growing strengths.
        refine: Bisection steps after the bracket is found.
        capability0: The unsteered capability if already measured.

    Returns:
        A `HalvingSearch`.

    Example:
        >>> s = lens.rating.halving_strength(model, sub, acc_on_selection, sign=-1)  # doctest: +SKIP
        >>> s.strength, s.reached  # doctest: +SKIP
        (-0.4, True)
    """
    if sign not in (1.0, -1.0, 1, -1):
        raise LensInputError(f"sign {sign!r} must be +1 or -1")
    if not start > 0 or not grow > 1 or max_steps < 1 or refine < 0:
        raise LensInputError(f"need start > 0, grow > 1, max_steps >= 1 and refine >= 0 (got start={start}, "
                             f"grow={grow}, max_steps={max_steps}, refine={refine})")
    add = vector if isinstance(vector, Add) else Add(vector, 1.0, positions="generated")
    tried: list[tuple[float, float]] = []

    def at(strengths: list[float]) -> list[float]:
        caps = capability_over(model, add, strengths, capability)
        tried.extend(zip(strengths, caps))
        return caps

    c0 = float(capability(model)) if capability0 is None else float(capability0)
    ladder = [float(start) * grow ** k for k in range(max_steps)]
    if not c0 > 0:  # nothing to halve: the largest strength the search would try
        return HalvingSearch(float(sign), c0, sign * ladder[-1], False, tried)
    target = c0 / 2
    if isinstance(capability, GridCapability):  # the whole ladder in one batched pass
        caps = at([sign * a for a in ladder])
    else:  # one strength at a time, stopping at the first that halves
        caps = []
        for a in ladder:
            caps += at([sign * a])
            if caps[-1] <= target:
                break
    k = next((i for i, c in enumerate(caps) if c <= target), None)
    if k is None:
        return HalvingSearch(float(sign), c0, sign * ladder[len(caps) - 1], False, tried)
    lo, hi = (ladder[k - 1] if k else 0.0), ladder[k]
    for _ in range(refine):
        mid = (lo + hi) / 2
        lo, hi = (lo, mid) if at([sign * mid])[0] <= target else (mid, hi)
    return HalvingSearch(float(sign), c0, sign * hi, True, tried)


@runtime_checkable
class GridCapability(Protocol):
    """A capability measure that also scores a whole α grid in one batched pass: ``capability(model)`` for the
    model as it is, ``over_alphas(model, add, alphas)`` for ``add`` scaled by each α (one value per α, in order)."""

    def __call__(self, model) -> float: ...

    def over_alphas(self, model, add: Add, alphas: Sequence[float]) -> Sequence[float]: ...


def capability_over(model, add: Add, alphas: Sequence[float], capability: Callable[[Any], float]) -> list[float]:
    """``capability`` under ``add`` scaled by each of ``alphas``: one batched pass for a `GridCapability`, else
    one call per α under `intervene`.

    Args:
        model: A model loaded with `lens.load_model`.
        add: The intervention at strength 1 (each α scales its strength).
        alphas: The strengths.
        capability: ``model -> score``, or a `GridCapability` that scores a whole grid in one batched pass.

    Returns:
        The capability at each α, in the order of ``alphas``.

    Raises:
        LensInputError: a `GridCapability` returned a different number of values than ``alphas``.

    Example:
        >>> capability_over(model, Add(sub, 1.0), [-0.2, 0.0, 0.2], accuracy)  # doctest: +SKIP
        [0.4, 0.7, 0.65]
    """
    if isinstance(capability, GridCapability):
        out = [float(c) for c in capability.over_alphas(model, add, list(alphas))]
        if len(out) != len(alphas):
            raise LensInputError(f"capability.over_alphas gave {len(out)} values for {len(alphas)} strengths")
        return out
    out = []
    for a in alphas:
        scaled = dataclasses.replace(add, strength=torch.as_tensor(add.strength, dtype=torch.float64) * a)
        with intervene(model, [scaled]):
            out.append(float(capability(model)))
    return out


def strength_grid(negative: float, positive: float, n: int) -> list[float]:
    """``n`` evenly spaced strengths from 0 to each end (both included), plus 0: the grid scored on the test
    items once `halving_strength` has found the ends.

    Args:
        negative: The end in the negative direction (≤ 0).
        positive: The end in the positive direction (≥ 0).
        n: Points per direction, the end included.

    Returns:
        The sorted strengths, 0 once.

    Raises:
        LensInputError: ``n`` is below 1.

    Example:
        >>> strength_grid(-1.0, 2.0, 2)
        [-1.0, -0.5, 0.0, 1.0, 2.0]
    """
    if n < 1:
        raise LensInputError(f"n {n!r} must be at least 1 point per direction")
    side = lambda end: [end * k / n for k in range(1, n + 1)]  # noqa: E731
    return sorted({0.0, *side(float(negative)), *side(float(positive))})
