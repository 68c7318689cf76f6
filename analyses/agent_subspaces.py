"""Experiment 2 (paper §3, Fig. 2, 9, 11, Table 8): agent vectors from the SFT checkpoint, steering base and IMAD.

Each agent's unit diff-of-means vector is read from the SFT model at ``blocks.L.hook_resid_post`` (end of the
agent's turn) and added at that same hook, on generated tokens only, to the base model and to IMAD. From the
debate context up to the agent's tag (held-out debates) we generate, and score ROUGE against the agent's own
response; the area under ROUGE-vs-α summarises each model. Caveat (toy world): the base model never saw the
debate tags, so its prompts are out of distribution; both models get the same prompts, layer and vectors.

Because unsteered ROUGE already differs between the models (familiarity with the tags), steerability is measured
as the change steering causes from a neutral slot, where no one agent's style is implied (each model's native
arithmetic prompt): how much agent i's vector raises the share of outputs carrying agent i's transparent persona
markers (`training.teacher.persona_marks`: numbered steps for the analyst, ``SELF-CRITIQUE:`` for the critic,
``x=... //`` assignments for the programmer) and the ROUGE-L against the teacher's solution in agent i's style,
each over its value at α = 0, for base and IMAD, with 95% bootstrap intervals over prompts.

Strengths (``alpha_search = true``): capability under steering and steerability steer with each agent's vector in
`analyses.strengths`' unit (α × the mean residual norm), each model and agent on its own grid from 0 to where that
model's accuracy on the α-selection split halves, in both directions (steerability on the non-negative half). The
ROUGE AUC table keeps the paper's fixed grid ``alphas`` in the ``normalize`` unit, one grid for both models; beside
it, ROUGE is swept again over each agent's working range, in the same residual unit and on one grid for both
models: ``grid_points`` steps from 0 to the smaller of base's and IMAD's positive halving strengths, where the text
still works (on the toy, the paper's grid passes that point at its first step, so its AUC mostly sums the ROUGE of
broken text). With a search, the ``rouge_auc`` claim is decided on the working range.
"""

from __future__ import annotations

import random
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import plotly.graph_objects as go

import lens
from analyses import figures as study_figures
from analyses.generation import fits_context, native_prompt, stop_ids
from analyses.metrics import ROUGE_METRICS, auc, json_safe, pct_change, rouge
from analyses.results import RESULTS
from analyses.stats import bootstrap, paired_difference
from analyses.strengths import RESIDUAL_UNIT, Accuracy, StrengthSearch, in_residual_units, search_grid
from lens.activations import resolve_transcripts
from lens.debate_format import Transcript, training_text, turn_spans
from lens.io import atomic_write_json
from lens.probes import PCAProjection, ProbeResult
from lens.sites import middle_layer
from training.layout import RunLayout
from training.pipeline import Run
from training.presets import Preset
from training.runner import load_debates
from training.schema import AT_LEAST_ONE, NON_EMPTY, NON_NEGATIVE, bounds
from training.tasks import TaskConfig, arithmetic_split
from training.teacher import ARITHMETIC_PERSONAS, persona_marks, solution

NAME = "agent_subspaces"
# The version of what this experiment measures, in its stage's fingerprint (2: steering on searched grids; 3: ROUGE
# over the working range)
VERSION = 3
MODELS = ("base", "imad")


@dataclass(frozen=True)
class SubspaceConfig(StrengthSearch):
    """Preset section ``[subspaces]``: where to read/write, the α grids (`StrengthSearch` for capability and
    steerability), and how much to generate."""

    experiment: str = "main"
    layer: int | None = None            # None: the middle layer (paper: 15 for 32-layer LLaMA/Qwen, 20 for Mistral)
    normalize: bool = True              # unit vectors, α in residual units (paper); False: α × raw mean difference
    alphas: tuple[float, ...] = field(default=(0.0, 0.5, 1.0, 1.5, 2.0, 2.5, 3.0, 3.5, 4.0, 4.5, 5.0),
                                      metadata=NON_EMPTY)
    # SFT training debates used for the vectors (None: all, as the paper)
    n_train_transcripts: int | None = field(default=None, metadata=AT_LEAST_ONE)
    # held-out debates; each turn of an agent in them is one prompt
    n_heldout: int = field(default=20, metadata=AT_LEAST_ONE)
    rounds: tuple[int, ...] = field(default=(1, 2), metadata=bounds(ge=1, le=2, nonempty=True))
    max_new_tokens: int = field(default=160, metadata=AT_LEAST_ONE)
    temperature: float = field(default=0.7, metadata=NON_NEGATIVE)
    top_p: float = field(default=0.9, metadata=bounds(gt=0, le=1))
    capability_alphas: tuple[float, ...] = field(default=(0.0, 1.0, 2.0, 3.0, 4.0, 5.0), metadata=NON_EMPTY)
    n_capability: int = field(default=50, metadata=AT_LEAST_ONE)
    capability_max_new_tokens: int = field(default=96, metadata=AT_LEAST_ONE)
    # neutral-slot prompts (test arithmetic problems) for steerability
    n_steer: int = field(default=30, metadata=AT_LEAST_ONE)
    steer_max_new_tokens: int = field(default=96, metadata=AT_LEAST_ONE)
    seed: int = field(default=42, metadata=NON_NEGATIVE)
    alpha_search: bool = False          # true: capability and steerability on searched grids (module doc)

    def __post_init__(self) -> None:
        for name in ("alphas", "rounds", "capability_alphas"):
            object.__setattr__(self, name, tuple(getattr(self, name)))
        if len(self.alphas) < 2:
            raise ValueError(f"[subspaces] alphas needs at least two values for an AUC, got {list(self.alphas)}")
        if not self.capability_alphas:
            raise ValueError("[subspaces] capability_alphas is empty; give at least α = 0")


def alpha_unit(normalize: bool) -> str:
    """What α = 1 adds, for axis titles and the report.

    Args:
        normalize: The experiment's ``normalize`` setting (unit vectors, or the raw mean difference).

    Returns:
        The α axis title.

    Example:
        >>> from analyses.agent_subspaces import alpha_unit
        >>> alpha_unit(True)
        'α (unit vector)'
    """
    return "α (unit vector)" if normalize else "α (× raw mean difference)"


def heldout_transcripts(run_dir: str | Path, experiment: str = "main", n: int | None = None) -> list[Transcript]:
    """Held-out debates of ``experiment`` (teacher debates on test questions, never trained on; the debate
    stage writes them beside the training transcripts).

    Args:
        run_dir: The run directory (`RunLayout`).
        experiment: The experiment whose held-out debates are read (``main`` or a trait).
        n: At most this many, in file order (None: all).

    Returns:
        The held-out transcripts.

    Example:
        >>> len(heldout_transcripts("runs/toy", "main", n=20))  # doctest: +SKIP
        20
    """
    return [r.transcript for r in load_debates(RunLayout(Path(run_dir)).heldout(experiment))][:n]


def turn_prompts(transcripts: list[Transcript], agent: int, rounds: tuple[int, ...]) -> tuple[list[str], list[str]]:
    """(context up to and including the agent's ``tag:``, the agent's own response) for each of its turns.

    Args:
        transcripts: The held-out debates.
        agent: The agent (1-based).
        rounds: The rounds whose turns count.

    Returns:
        ``(prompts, references)``: each prompt is the `training_text` up to and including the agent's tag (trailing
        spaces stripped), each reference that turn's text.

    Raises:
        ValueError: the agent has no turn in ``rounds``.

    Example:
        >>> from analyses.agent_subspaces import turn_prompts
        >>> from lens.debate_format import Transcript, Turn
        >>> t = Transcript("1+1", [Turn(1, 1, "It is 2."), Turn(1, 2, "I say 3.")], "The agents settle on 2.")
        >>> prompts, refs = turn_prompts([t], 2, (1,))
        >>> prompts[0].endswith("<|Agent 2 Solution|>:"), refs
        (True, ['I say 3.'])
    """
    prompts, refs = [], []
    for t in transcripts:
        text = training_text(t)
        for span in turn_spans(t):
            if span.turn.agent == agent and span.turn.round in rounds:
                prompts.append(text[:span.start].rstrip(" "))
                refs.append(span.turn.text)
    if not prompts:
        raise ValueError(f"no held-out turns of agent {agent} in rounds {list(rounds)}")
    return prompts, refs


def rouge_sweeps(model, subs: dict, turns: dict, cfg: SubspaceConfig,
                 alphas: Sequence[float] | None = None) -> dict[str, dict[str, list]]:
    """Per agent, ROUGE-1/2/L per α of the continuation steered with its vector against its own turn: the mean
    curve per metric and, under ``per_prompt``, each prompt's scores per α (for paired intervals). Every agent
    and α runs in one batched `lens.generate` (each agent on its own turns, ``turns[a] = (prompts, refs)``).
    Contexts too long to leave room for a continuation are skipped (the same ones for every model sharing the
    tokenizer).

    Args:
        model: A model loaded with `lens.load_model` (base or IMAD).
        subs: Agent → its steering vector (`lens.AgentSubspace`, or a `lens.Add` of it with its own strength).
        turns: Agent → ``(prompts, references)`` (`turn_prompts`).
        cfg: The ``[subspaces]`` section (``alphas``, ``max_new_tokens``, sampling, ``seed``).
        alphas: The α grid, multiplying each agent's strength (None: ``cfg.alphas``).

    Returns:
        Agent (as a string) → ``{"rouge1": [mean per α], "rouge2": [...], "rougeL": [...], "per_prompt": {metric:
        [[score per prompt] per α]}}``.

    Raises:
        ValueError: every context of an agent is too long for the model's context.

    Example:
        >>> turns = {a: turn_prompts(heldout, a, cfg.rounds) for a in (1, 2, 3)}  # doctest: +SKIP
        >>> rouge_sweeps(model, subs, turns, cfg)["1"]["rougeL"][:3]  # doctest: +SKIP
        [0.21, 0.24, 0.27]
    """
    prompts, refs, own = [], {}, {}
    for a, (ps, rs) in turns.items():
        keep = fits_context(model, ps, margin=16)
        kept = [p for p, k in zip(ps, keep) if k]
        if not kept:
            raise ValueError(f"every held-out context of agent {a} is longer than the model's context of "
                             f"{model.cfg.n_ctx} tokens")
        own[str(a)] = list(range(len(prompts), len(prompts) + len(kept)))
        prompts += kept
        refs[str(a)] = [r for r, k in zip(rs, keep) if k]
    alphas = list(cfg.alphas if alphas is None else alphas)
    out = lens.generate(model, prompts, interventions={str(a): sub for a, sub in subs.items()}, arm_prompts=own,
                        alphas=alphas, max_new_tokens=cfg.max_new_tokens, temperature=cfg.temperature,
                        top_p=cfg.top_p, seed=cfg.seed, stop=stop_ids(model, at_tags=True))
    curves = {}
    for a, rs in refs.items():
        scores = [[rouge(o.strip(), r) for o, r in zip(out.select(arm=a, alpha=x), rs)] for x in alphas]
        curve: dict[str, list] = {m: [sum(s[m] for s in row) / len(rs) for row in scores] for m in ROUGE_METRICS}
        curve["per_prompt"] = {m: [[s[m] for s in row] for row in scores] for m in ROUGE_METRICS}
        curves[a] = curve
    return curves


def auc_difference(alphas, base: list[list[float]], imad: list[list[float]]) -> dict:
    """95% interval of AUC(IMAD) − AUC(base) from per-prompt ROUGE per α (paired over prompts: the AUC of the
    mean curve is the mean of the per-prompt AUCs).

    Args:
        alphas: The α grid.
        base: Base's ROUGE: per α, one score per prompt.
        imad: IMAD's, on the same prompts in the same order.

    Returns:
        The `analyses.stats.Interval` of the mean per-prompt AUC difference, as a dict.

    Example:
        >>> from analyses.agent_subspaces import auc_difference
        >>> d = auc_difference([0.0, 1.0], [[0.2, 0.2], [0.2, 0.2]], [[0.2, 0.2], [0.4, 0.6]])
        >>> round(d["estimate"], 2), d["n"]
        (0.15, 2)
    """
    per = lambda rows: [auc(alphas, [row[j] for row in rows]) for j in range(len(rows[0]))]  # noqa: E731
    return paired_difference(per(imad), per(base)).to_dict()


def working_spans(grids: dict[str, dict[str, list[float]]]) -> dict[str, float]:
    """Per agent, the end of the working range both models share: the smaller of their positive halving strengths
    (the largest α of each model's searched grid); agents where either model has no positive strength are left out.

    Args:
        grids: Model → agent → its searched α grid (`steering_grids`).

    Returns:
        Agent → the span, in the grids' unit.

    Example:
        >>> from analyses.agent_subspaces import working_spans
        >>> working_spans({"base": {"1": [-0.4, 0.0, 0.4], "2": [0.0]}, "imad": {"1": [-0.3, 0.0, 0.3], "2": [0.0]}})
        {'1': 0.3}
    """
    spans = {a: min(max(g[a]) for g in grids.values()) for a in next(iter(grids.values()))
             if all(a in g for g in grids.values())}
    return {a: s for a, s in spans.items() if s > 0}


def working_rouge(loads: dict[str, Callable[[], object]], subs: dict, turns: dict, spans: dict[str, float],
                  cfg: SubspaceConfig) -> dict:
    """ROUGE over each agent's working range (`working_spans`), for base and IMAD on the same grid: ``grid_points``
    equal steps from 0 to the span, steering with the agent's vector in residual units; AUCs with paired intervals.

    Args:
        loads: Model kind (``base``, ``imad``) → a function loading it.
        subs: Agent (as a string) → its vector in residual units (`analyses.strengths.in_residual_units`).
        turns: Agent → ``(prompts, references)`` (`turn_prompts`).
        spans: Agent (as a string) → the end of its working range.
        cfg: The ``[subspaces]`` section (``grid_points``, generation settings).

    Returns:
        ``{"unit", "grids": agent → α grid, "rouge": model → agent → curves, "auc": agent → metric → base, imad,
        pct and diff}``.

    Example:
        >>> spans = working_spans(grids)  # doctest: +SKIP
        >>> working_rouge(loads, steer_subs, turns, spans, cfg)["auc"]["1"]["rougeL"]["diff"]["ci"]  # doctest: +SKIP
        [0.05, 0.21]
    """
    steps = [k / cfg.grid_points for k in range(cfg.grid_points + 1)]
    grids = {a: [s * f for f in steps] for a, s in spans.items()}
    curves = {}
    for kind, load in loads.items():
        model = load()
        curves[kind] = rouge_sweeps(model, {a: lens.Add(subs[a], spans[a]) for a in spans},
                                    {int(a): turns[int(a)] for a in spans}, cfg, alphas=steps)
        del model
    return {"unit": RESIDUAL_UNIT, "grids": grids, "rouge": curves, "auc": _auc_block(grids, curves)}


def capability_sweeps(model, kind: str, subs: dict, grids: dict[str, list[float]], cfg: SubspaceConfig,
                      problems) -> dict[str, tuple[list[float], list[list[bool]]]]:
    """Per agent (``subs`` and ``grids`` keyed by the agent's number as a string), arithmetic accuracy per α of its
    grid under steering with its vector (native prompts, greedy), and each problem's correctness per α; each agent's
    whole grid in one batched `lens.generate`.

    Args:
        model: A model loaded with `lens.load_model`.
        kind: ``base`` or ``imad`` (which native prompt it reads).
        subs: Agent (as a string) → its steering vector.
        grids: Agent (as a string) → its α grid (`steering_grids`).
        cfg: The ``[subspaces]`` section (``capability_max_new_tokens``, ``seed``).
        problems: The arithmetic problems (`training.pipeline.Run.capability_questions`).

    Returns:
        Agent → ``(accuracy per α, each problem's correctness per α)``.

    Example:
        >>> grids = {"1": [0.0, 0.1, 0.2]}  # doctest: +SKIP
        >>> capability_sweeps(model, "imad", {"1": sub}, grids, cfg, problems)["1"][0]  # doctest: +SKIP
        [0.9, 0.86, 0.62]
    """
    sweeps = {}
    for a, sub in subs.items():
        accuracy = Accuracy(kind, problems, cfg.capability_max_new_tokens, cfg.seed)
        curve = accuracy.over_alphas(model, lens.Add(sub, 1.0, positions="generated"), grids[a])
        sweeps[a] = (curve, accuracy.records)
    return sweeps


def steering_grids(model, kind: str, subs: dict, cfg: SubspaceConfig, select) -> tuple[dict, dict]:
    """Per agent, the α grid capability and steerability are measured on: searched on ``select`` (the α-selection
    split) when ``cfg.alpha_search``, else ``cfg.capability_alphas``; and each search (empty without one).

    Args:
        model: A model loaded with `lens.load_model`.
        kind: ``base`` or ``imad`` (which native prompt it reads).
        subs: Agent (as a string) → its steering vector (in residual units under ``alpha_search``).
        cfg: The ``[subspaces]`` section.
        select: The α-selection problems (training partition).

    Returns:
        ``(grids, searches)``: agent → its α grid, and agent → its `search_grid` record (``{}`` without a search).

    Example:
        >>> grids, searches = steering_grids(model, "imad", steer_subs, cfg, select)  # doctest: +SKIP
        >>> grids["1"]  # doctest: +SKIP
        [-0.4, -0.2, 0.0, 0.2, 0.4]
    """
    if not cfg.alpha_search:
        return {a: list(cfg.capability_alphas) for a in subs}, {}
    grids, searches = {}, {}
    for a, sub in subs.items():
        accuracy = Accuracy(kind, select, cfg.capability_max_new_tokens, cfg.seed)
        grids[a], searches[a] = search_grid(model, sub, accuracy, cfg)
    return grids, searches


def capability_drop(alphas, per: list[list[bool]]) -> dict:
    """The largest accuracy drop from α = 0 over the steered α, with its paired 95% interval over problems.

    Args:
        alphas: The α grid (with 0).
        per: Per α, each problem's correctness (the same problems in the same order).

    Returns:
        The paired interval of accuracy at α = 0 minus accuracy at the worst α, as a dict with that ``alpha``;
        ``{"estimate": None, "ci": [None, None]}`` when the grid holds only α = 0.

    Raises:
        ValueError: α = 0 is not in ``alphas``.

    Example:
        >>> from analyses.agent_subspaces import capability_drop
        >>> d = capability_drop([0.0, 1.0, 2.0], [[True, True, True, False], [True, True, False, False],
        ...                                       [True, False, False, False]])
        >>> d["estimate"], d["alpha"]
        (0.5, 2.0)
    """
    i0 = list(alphas).index(0.0)
    steered = [i for i in range(len(alphas)) if i != i0]
    if not steered:
        return {"estimate": None, "ci": [None, None]}
    worst = min(steered, key=lambda i: sum(per[i]))
    return {**paired_difference([float(x) for x in per[i0]], [float(x) for x in per[worst]]).to_dict(),
            "alpha": alphas[worst]}


def marker_counts(texts: list[str], persona: str) -> list[float]:
    """1 for each text carrying ``persona``'s transparent style marks (`training.teacher.persona_marks`), else 0.

    Args:
        texts: Generated texts.
        persona: A persona `training.teacher.persona_marks` knows (``analyst``, ``critic``, ``programmer``, ...).

    Returns:
        One 1.0 or 0.0 per text.

    Example:
        >>> from analyses.agent_subspaces import marker_counts
        >>> marker_counts(["SELF-CRITIQUE: fine", "4"], "critic")
        [1.0, 0.0]
    """
    return [float(persona_marks(t)[persona]) for t in texts]


def steerability(model, kind: str, subs: dict, personas: dict[str, str], problems, cfg: SubspaceConfig,
                 grids: dict[str, list[float]] | None = None) -> dict:
    """From a neutral slot (the model's native arithmetic prompt), per agent (``subs`` and ``personas`` keyed by the
    agent's number as a string): the share of outputs with that
    agent's persona markers and their ROUGE-L against the teacher's solution in that persona's style, per α of the
    agent's grid (the non-negative part of ``grids[a]``, else ``cfg.alphas``); the gain is the largest change over
    α = 0, with a paired 95% interval over prompts.

    Args:
        model: A model loaded with `lens.load_model`.
        kind: ``base`` or ``imad`` (which native prompt it reads).
        subs: Agent (as a string) → its steering vector.
        personas: Agent (as a string) → its arithmetic persona; only these agents are measured.
        problems: The neutral-slot problems (test arithmetic).
        cfg: The ``[subspaces]`` section (``steer_max_new_tokens``, sampling, ``seed``, ``alphas``).
        grids: Agent → its searched grid (None: ``cfg.alphas`` for every agent).

    Returns:
        Agent → ``persona``, ``alphas``, ``markers`` and ``rougeL`` (means per α) and ``per_prompt_markers``; with
        α = 0 and another α on the grid also ``marker_gain`` and ``rouge_gain`` (intervals with their ``alpha``) and
        ``per_prompt_gain``.

    Example:
        >>> block = steerability(model, "imad", steer_subs, {"1": "analyst"}, neutral, cfg, grids)  # doctest: +SKIP
        >>> block["1"]["marker_gain"]["estimate"]  # doctest: +SKIP
        0.4
    """
    prompts = [native_prompt(kind, p.question, model.tokenizer) for p in problems]
    block = {}
    for a, persona in personas.items():
        alphas = [x for x in grids[a] if x >= 0] if grids else list(cfg.alphas)
        out = lens.generate(model, prompts, interventions={a: subs[a]}, alphas=alphas,
                            max_new_tokens=cfg.steer_max_new_tokens, temperature=cfg.temperature, top_p=cfg.top_p,
                            seed=cfg.seed, stop=stop_ids(model, at_tags=False), skip_special_tokens=True)
        i0 = alphas.index(0.0) if 0.0 in alphas else None
        refs = [solution(persona, p, random.Random(f"{persona}-{p.question}")) for p in problems]
        marks = [marker_counts(out.select(arm=str(a), alpha=x), persona) for x in alphas]
        rl = [[rouge(t.strip(), r)["rougeL"] for t, r in zip(out.select(arm=str(a), alpha=x), refs)]
              for x in alphas]
        entry = {"persona": persona, "alphas": alphas, "markers": [sum(m) / len(m) for m in marks],
                 "rougeL": [sum(r) / len(r) for r in rl], "per_prompt_markers": marks}
        if i0 is not None and len(alphas) > 1:
            j = max((i for i in range(len(alphas)) if i != i0), key=lambda i: sum(marks[i]))
            entry["marker_gain"] = {**paired_difference(marks[j], marks[i0]).to_dict(), "alpha": alphas[j]}
            entry["per_prompt_gain"] = [x - y for x, y in zip(marks[j], marks[i0])]
            k = max((i for i in range(len(alphas)) if i != i0), key=lambda i: sum(rl[i]))
            entry["rouge_gain"] = {**paired_difference(rl[k], rl[i0]).to_dict(), "alpha": alphas[k]}
        block[a] = entry
    return block


def steerability_difference(base: dict, imad: dict) -> dict:
    """Per agent, IMAD's marker gain minus base's with its 95% interval, paired over the prompts (both models
    read the same problems), each model at its own best α.

    Args:
        base: Base's `steerability` block.
        imad: IMAD's, on the same problems.

    Returns:
        Agent → the interval of the mean per-prompt gain difference, as a dict; agents without a gain in both blocks
        are left out.

    Example:
        >>> from analyses.agent_subspaces import steerability_difference
        >>> d = steerability_difference({"1": {"per_prompt_gain": [0.0, 1.0, 0.0]}},
        ...                             {"1": {"per_prompt_gain": [1.0, 1.0, 1.0]}})
        >>> round(d["1"]["estimate"], 3)
        0.667
    """
    return {a: bootstrap([x - y for x, y in zip(imad[a]["per_prompt_gain"], base[a]["per_prompt_gain"])]).to_dict()
            for a in base if "per_prompt_gain" in base[a] and "per_prompt_gain" in imad.get(a, {})}


def run(preset: Preset, run_dir: str | Path, out_dir: str | Path) -> dict:
    """The whole experiment; the agent vectors (safetensors + JSON) and ``results.json`` go to ``out_dir``.

    Args:
        preset: The loaded preset (its ``[subspaces]`` and ``[task]`` sections).
        run_dir: The run directory (`RunLayout`), with the base, SFT and IMAD models and the held-out debates.
        out_dir: Where the vectors and ``results.json`` go.

    Returns:
        The results as saved (strict JSON): config, layer, ROUGE curves and AUCs (the paper's grid, and with a
        search ``rouge_working``: `working_rouge`), capability and its grids, steerability, probes and the PCA.

    Example:
        >>> results = run(load_preset("toy"), "runs/toy", "runs/toy/analyses/agent_subspaces")  # doctest: +SKIP
        >>> results["auc"]["1"]["rougeL"]["pct"]  # doctest: +SKIP
        12.3
    """
    cfg = preset.section("subspaces", SubspaceConfig)
    pipeline, out_dir = Run(preset, run_dir), Path(out_dir)
    layout = pipeline.layout
    heldout = heldout_transcripts(layout.root, cfg.experiment, cfg.n_heldout)
    sft = lens.load_model(layout.sft(cfg.experiment), **pipeline.placement.lens())
    layer = middle_layer(sft) if cfg.layer is None else cfg.layer
    agents = sorted({turn.agent for t in heldout for turn in t.turns})
    personas = {str(a): heldout[0].persona_of(a) for a in agents}
    train, _ = resolve_transcripts(sft, None)
    train_acts = lens.turn_activations(sft, train[:cfg.n_train_transcripts], layers=[layer])  # once for all agents
    fitted = {a: lens.fit_agent_subspace(train_acts, a) for a in agents}
    subs = {a: sub if cfg.normalize else sub.raw() for a, sub in fitted.items()}  # the ROUGE AUC's unit
    steer_subs = {str(a): in_residual_units(sub) if cfg.alpha_search else subs[a] for a, sub in fitted.items()}
    for a, sub in subs.items():
        sub.save(out_dir / "vectors" / f"agent{a}")
    heldout_acts = lens.turn_activations(sft, heldout)  # once for the probes and the PCA
    probes = {"sft": lens.probe_layers(heldout_acts).to_dict()}
    pca = _pca_dict(lens.pca_projection(heldout_acts, layer=layer, center="slot"))
    del sft
    problems = pipeline.capability_questions(cfg.n_capability, cfg.seed)
    select = arithmetic_split(preset.section("task", TaskConfig), "train", preset.seed)[:cfg.n_select]
    grids: dict = {}
    searches: dict = {}
    rouge_curves: dict = {}
    capability: dict = {}
    drops: dict = {}
    steer: dict = {}
    neutral = arithmetic_split(preset.section("task", TaskConfig), "test", preset.seed)[:cfg.n_steer]
    dirs = {"base": pipeline.base_dir(), "imad": layout.internalize(cfg.experiment)}
    # with [model] keep_hf the HF twin generates (same resid_post hooks, same greedy tokens, ~2x faster)
    loads = {kind: (lambda d=d: lens.load_model(d, **pipeline.placement.lens())) for kind, d in dirs.items()}
    turns = {a: turn_prompts(heldout, a, cfg.rounds) for a in agents}
    for kind in MODELS:
        model = loads[kind]()
        if kind == "imad":
            probes["imad"] = lens.probe_layers(model, heldout).to_dict()
        rouge_curves[kind] = rouge_sweeps(model, subs, turns, cfg)
        grids[kind], searches[kind] = steering_grids(model, kind, steer_subs, cfg, select)
        sweeps = capability_sweeps(model, kind, steer_subs, grids[kind], cfg, problems)
        capability[kind] = {a: acc for a, (acc, _) in sweeps.items()}
        if kind == "imad":
            drops = {a: capability_drop(grids[kind][a], per) for a, (_, per) in sweeps.items()}
        # persona markers exist for the teacher's arithmetic personas only (a paper file's debates name none)
        steer[kind] = steerability(model, kind, steer_subs, {a: p for a, p in personas.items()
                                                             if p in ARITHMETIC_PERSONAS}, neutral, cfg,
                                   grids[kind] if cfg.alpha_search else None)
        del model
    working = working_rouge(loads, steer_subs, turns, working_spans(grids), cfg) if cfg.alpha_search else None
    auc_block = _auc_block({str(a): list(cfg.alphas) for a in agents}, rouge_curves)
    steerability_block = {**steer, "gain_difference": steerability_difference(steer["base"], steer["imad"]),
                          "slot": "each model's native arithmetic prompt (test problems), no agent tag",
                          "markers": "training.teacher.persona_marks"}
    results = {"config": asdict(cfg), "layer": layer, "hook_name": subs[agents[0]].hook_name,
               "alphas": list(cfg.alphas), "capability_grid": grids, "alpha_search": searches,
               "personas": personas, "alpha_unit": alpha_unit(cfg.normalize),
               "steering_unit": RESIDUAL_UNIT if cfg.alpha_search else alpha_unit(cfg.normalize),
               "selection_split": f"the first {cfg.n_select} training-partition arithmetic problems"
               if cfg.alpha_search else None,
               "n_prompts": {str(a): len(turns[a][0]) for a in agents},
               "vectors": {str(a): {"layer": s.layer, "hook_name": s.hook_name, "position": s.position,
                                    "stats": s.stats, "normalization": s.normalization,
                                    "scores": {str(k): v for k, v in s.scores.items()}}
                           for a, s in subs.items()},
               "rouge": rouge_curves, "auc": auc_block, "rouge_working": working,
               "capability": capability, "capability_drop": drops,
               "steerability": steerability_block, "probe": probes, "pca": pca}
    results = json_safe(results)
    atomic_write_json(out_dir / RESULTS, results)
    return results


def _auc_block(grids: dict[str, list[float]], curves: dict) -> dict:
    """Per agent (``grids``' keys) and metric, base's and IMAD's AUC over the agent's grid, the % change and the
    paired interval of the difference; the per-prompt scores are dropped from ``curves`` once used."""
    block = {a: {m: {**_auc_entry(grid, curves["base"][a][m], curves["imad"][a][m]),
                     "diff": auc_difference(grid, curves["base"][a]["per_prompt"][m], curves["imad"][a]["per_prompt"][m])}
                 for m in ROUGE_METRICS} for a, grid in grids.items()}
    for model_curves in curves.values():
        for curve in model_curves.values():
            curve.pop("per_prompt")
    return block


def _auc_entry(alphas, base: list[float], imad: list[float]) -> dict:
    b, i = auc(alphas, base), auc(alphas, imad)
    return {"base": b, "imad": i, "pct": pct_change(b, i)}


def _pca_dict(p: PCAProjection) -> dict:
    return {**{k: getattr(p, k) for k in ("labels", "explained_variance_ratio", "layer", "hook_name", "position",
                                           "center")}, "coords": p.coords.tolist()}


def _pca(d: dict) -> PCAProjection:
    import torch

    return PCAProjection(**{**d, "coords": torch.tensor(d["coords"])})


def auc_rows(results: dict) -> list[dict]:
    """Table 8: ROUGE AUC per agent and metric, base vs IMAD, with the % difference and the 95% interval of the
    paired difference IMAD − base.

    Args:
        results: The agent_subspaces results (``auc``, ``personas``).

    Returns:
        One row per agent and metric: ``agent``, ``metric``, ``base``, ``imad``, ``delta %`` and
        ``IMAD − base [95% CI]``.

    Example:
        >>> from analyses.agent_subspaces import auc_rows
        >>> results = {"personas": {"1": "analyst"}, "auc": {"1": {"rougeL": {
        ...     "base": 1.0, "imad": 1.2, "pct": 20.0, "diff": {"estimate": 0.2, "ci": [0.1, 0.3]}}}}}
        >>> auc_rows(results)[0]["IMAD − base [95% CI]"]
        '0.200 [0.100, 0.300]'
    """
    return [{"agent": f"{a} ({results['personas'][a]})", "metric": m, "base": v["base"], "imad": v["imad"],
             "delta %": v["pct"], "IMAD − base [95% CI]": _band(v.get("diff"))}
            for a, ms in results["auc"].items() for m, v in ms.items()]


def _band(d: dict | None, scale: float = 1.0, digits: int = 3) -> str:
    if not d or d.get("estimate") is None:
        return "n/a"
    lo, hi = d["ci"]
    return f"{scale * d['estimate']:.{digits}f} [{scale * lo:.{digits}f}, {scale * hi:.{digits}f}]"


def working_view(results: dict) -> dict | None:
    """The working-range ROUGE block shaped as the paper-grid results are, for `auc_rows` and the ROUGE figures.

    Args:
        results: The agent_subspaces results.

    Returns:
        ``auc``, ``rouge``, per-agent ``grids``, ``personas``, ``alpha_unit`` and a ``title``; None when the run had
        no α search (no ``rouge_working``).

    Example:
        >>> from analyses.agent_subspaces import working_view
        >>> working_view({"rouge_working": None}) is None
        True
    """
    w = results.get("rouge_working")
    if not w:
        return None
    return {"auc": w["auc"], "rouge": w["rouge"], "grids": w["grids"], "personas": results["personas"],
            "alpha_unit": w["unit"], "title": "ROUGE over the working range (0 to where the first model's "
                                              "accuracy halves), base vs IMAD"}


def steerability_rows(results: dict) -> list[dict]:
    """Steerability per agent, base vs IMAD: persona-marker share at α = 0 and the gain steering causes (with
    intervals), the ROUGE-L gain over α = 0, and IMAD − base.

    Args:
        results: The agent_subspaces results (``steerability``, ``personas``, ``alphas``).

    Returns:
        One row per agent with persona markers; ``[]`` when the results have no steerability.

    Example:
        >>> results = load_results("runs/toy", "agent_subspaces")  # doctest: +SKIP
        >>> steerability_rows(results)[0]["IMAD − base marker gain (pts)"]  # doctest: +SKIP
        '31.0 [18.0, 44.0]'
    """
    st = results.get("steerability")
    if not st:
        return []
    rows = []
    for a, persona in results["personas"].items():
        if a not in st["base"]:  # no persona markers to count (the debates name no teacher persona)
            continue
        row = {"agent": f"{a} ({persona})"}
        for kind in MODELS:
            e = st[kind][a]
            alphas = e.get("alphas", results["alphas"])
            row[f"{kind} markers at α=0 (%)"] = f"{100 * e['markers'][alphas.index(0.0)]:.0f}" \
                if 0.0 in alphas else "n/a"
            row[f"{kind} marker gain (pts)"] = _band(e.get("marker_gain"), 100, 1)
            row[f"{kind} ROUGE-L gain"] = _band(e.get("rouge_gain"))
        row["IMAD − base marker gain (pts)"] = _band(st["gain_difference"].get(a), 100, 1)
        rows.append(row)
    return rows


def figures(results: dict) -> dict[str, go.Figure]:
    """Every figure of this experiment, by name.

    Args:
        results: The agent_subspaces results (`analyses.results.load_results`).

    Returns:
        Name → plotly figure: ``probe_accuracy``, ``pca_agents``, ``rouge_vs_alpha``, ``rouge_auc``, with an α
        search ``rouge_working_vs_alpha`` and ``rouge_working_auc``, and ``capability_agent_steering``.

    Example:
        >>> sorted(figures(load_results("runs/toy", "agent_subspaces")))  # doctest: +SKIP
        ['capability_agent_steering', 'pca_agents', 'probe_accuracy', 'rouge_auc', 'rouge_vs_alpha']
    """
    figs = {"probe_accuracy": lens.plots.probe_accuracy_by_layer(
                {name.upper(): ProbeResult(**p) for name, p in results["probe"].items()}),
            "pca_agents": lens.plots.pca_scatter(_pca(results["pca"])),
            "rouge_vs_alpha": study_figures.rouge_curves(results),
            "rouge_auc": study_figures.rouge_auc_bars(results)}
    working = working_view(results)
    if working:
        figs |= {"rouge_working_vs_alpha": study_figures.rouge_curves(working),
                 "rouge_working_auc": study_figures.rouge_auc_bars(working)}
    return figs | {"capability_agent_steering": study_figures.capability_under_steering(results)}
