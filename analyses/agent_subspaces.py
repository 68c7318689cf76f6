"""Experiment 2 (paper §3, Fig. 2, 9, 11, Table 8): agent vectors from the SFT checkpoint, steering base and IMAD.

Each agent's unit diff-of-means vector is read from the SFT model at ``blocks.L.hook_resid_post`` (end of the
agent's turn) and added at that same hook, on generated tokens only, to the base model and to IMAD. From the
debate context up to the agent's tag (held-out debates) we generate, and score ROUGE against the agent's own
response; the area under ROUGE-vs-α summarises each model. Caveat (toy world): the base model never saw the
debate tags, so its prompts are out of distribution; both models get the same prompts, layer and vectors.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path

import plotly.graph_objects as go

import lens
from analyses import figures as study_figures
from analyses.generation import fits_context, native_prompt, stop_ids
from analyses.metrics import ROUGE_METRICS, auc, json_safe, mean_rouge, pct_change
from lens.debate_format import Transcript, extract_boxed, training_text, turn_spans
from lens.activations import resolve_transcripts
from lens.sites import middle_layer
from lens.io import atomic_write_json
from lens.probes import PCAProjection, ProbeResult
from analyses.results import RESULTS
from training.layout import RunLayout
from training.presets import Preset
from training.runner import load_debates
from training.schema import AT_LEAST_ONE, NON_EMPTY, NON_NEGATIVE, bounds
from training.evaluate import is_correct
from training.pipeline import Run

NAME = "agent_subspaces"
MODELS = ("base", "imad")


@dataclass(frozen=True)
class SubspaceConfig:
    """Preset section ``[subspaces]``: where to read/write, the α grid, and how much to generate."""

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
    seed: int = field(default=42, metadata=NON_NEGATIVE)

    def __post_init__(self) -> None:
        for name in ("alphas", "rounds", "capability_alphas"):
            object.__setattr__(self, name, tuple(getattr(self, name)))
        if len(self.alphas) < 2:
            raise ValueError(f"[subspaces] alphas needs at least two values for an AUC, got {list(self.alphas)}")
        if not self.capability_alphas:
            raise ValueError("[subspaces] capability_alphas is empty; give at least α = 0")


def alpha_unit(normalize: bool) -> str:
    """What α = 1 adds, for axis titles and the report."""
    return "α (unit vector)" if normalize else "α (× raw mean difference)"


def heldout_transcripts(run_dir: str | Path, experiment: str = "main", n: int | None = None) -> list[Transcript]:
    """Held-out debates of ``experiment`` (teacher debates on test questions, never trained on; the debate
    stage writes them beside the training transcripts)."""
    return [r.transcript for r in load_debates(RunLayout(Path(run_dir)).heldout(experiment))][:n]


def turn_prompts(transcripts: list[Transcript], agent: int, rounds: tuple[int, ...]) -> tuple[list[str], list[str]]:
    """(context up to and including the agent's ``tag:``, the agent's own response) for each of its turns."""
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


def rouge_sweep(model, sub, prompts: list[str], refs: list[str], cfg: SubspaceConfig) -> dict[str, list[float]]:
    """Mean ROUGE-1/2/L per α of the steered continuation against the agent's own turn (one batched sweep);
    contexts too long to leave room for a continuation are skipped."""
    keep = fits_context(model, prompts, margin=16)
    prompts, refs = [p for p, k in zip(prompts, keep) if k], [r for r, k in zip(refs, keep) if k]
    if not prompts:
        raise ValueError(f"every held-out context is longer than the model's context of {model.cfg.n_ctx} tokens")
    outs = lens.generate(model, prompts, interventions=sub, alphas=cfg.alphas, max_new_tokens=cfg.max_new_tokens,
                         temperature=cfg.temperature, top_p=cfg.top_p, seed=cfg.seed,
                         stop=stop_ids(model, at_tags=True)).texts
    curves: dict[str, list[float]] = {m: [] for m in ROUGE_METRICS}
    n = len(prompts)
    for i in range(len(cfg.alphas)):
        scores = mean_rouge([o.strip() for o in outs[i * n:(i + 1) * n]], refs)
        for m in ROUGE_METRICS:
            curves[m].append(scores[m])
    return curves


def capability_sweep(model, kind: str, sub, cfg: SubspaceConfig, problems) -> list[float]:
    """Arithmetic accuracy per α in ``cfg.capability_alphas`` under steering with ``sub`` (native prompts)."""
    prompts = [native_prompt(kind, p.question, model.tokenizer) for p in problems]
    out = lens.generate(model, prompts, interventions=sub, alphas=cfg.capability_alphas,
                        max_new_tokens=cfg.capability_max_new_tokens, seed=cfg.seed,
                        stop=stop_ids(model, at_tags=False))
    n = len(problems)
    correct = [is_correct(extract_boxed(o), problems[k]) for o, k in zip(out.texts, out.prompt)]
    return [sum(correct[i * n:(i + 1) * n]) / n for i in range(len(cfg.capability_alphas))]


def run(preset: Preset, run_dir: str | Path, out_dir: str | Path) -> dict:
    """The whole experiment; the agent vectors (safetensors + JSON) and ``results.json`` go to ``out_dir``."""
    cfg = preset.section("subspaces", SubspaceConfig)
    layout, out_dir = RunLayout.of(preset, run_dir), Path(out_dir)
    heldout = heldout_transcripts(layout.root, cfg.experiment, cfg.n_heldout)
    run = Run(preset, run_dir)
    sft = lens.load_model(layout.sft(cfg.experiment), **run.placement.load())
    layer = middle_layer(sft) if cfg.layer is None else cfg.layer
    agents = sorted({turn.agent for t in heldout for turn in t.turns})
    personas = {str(a): heldout[0].persona_of(a) for a in agents}
    train, _ = resolve_transcripts(sft, None)
    train_acts = lens.turn_activations(sft, train[:cfg.n_train_transcripts], layers=[layer])  # once for all agents
    subs = {a: lens.fit_agent_subspace(train_acts, a) for a in agents}
    if not cfg.normalize:
        subs = {a: sub.raw() for a, sub in subs.items()}
    for a, sub in subs.items():
        sub.save(out_dir / "vectors" / f"agent{a}")
    heldout_acts = lens.turn_activations(sft, heldout)  # once for the probes and the PCA
    probes = {"sft": lens.probe_layers(heldout_acts).to_dict()}
    pca = _pca_dict(lens.pca_projection(heldout_acts, layer=layer, center="slot"))
    del sft
    problems = run.capability_questions(cfg.n_capability, cfg.seed)
    rouge: dict = {}
    capability: dict = {}
    dirs = {"base": layout.base, "imad": layout.internalize(cfg.experiment)}
    for kind in MODELS:
        model = lens.load_model(dirs[kind], **run.placement.load())
        if kind == "imad":
            probes["imad"] = lens.probe_layers(model, heldout).to_dict()
        rouge[kind], capability[kind] = {}, {}
        for a, sub in subs.items():
            prompts, refs = turn_prompts(heldout, a, cfg.rounds)
            rouge[kind][str(a)] = rouge_sweep(model, sub, prompts, refs, cfg)
            capability[kind][str(a)] = capability_sweep(model, kind, sub, cfg, problems)
        del model
    auc_block = {str(a): {m: _auc_entry(cfg.alphas, rouge["base"][str(a)][m], rouge["imad"][str(a)][m])
                          for m in ROUGE_METRICS} for a in agents}
    results = {"config": asdict(cfg), "layer": layer, "hook_name": subs[agents[0]].hook_name,
               "alphas": list(cfg.alphas), "capability_alphas": list(cfg.capability_alphas), "personas": personas,
               "alpha_unit": alpha_unit(cfg.normalize),
               "n_prompts": {str(a): len(turn_prompts(heldout, a, cfg.rounds)[0]) for a in agents},
               "vectors": {str(a): {"layer": s.layer, "hook_name": s.hook_name, "position": s.position,
                                    "stats": s.stats, "normalization": s.normalization,
                                    "scores": {str(k): v for k, v in s.scores.items()}}
                           for a, s in subs.items()},
               "rouge": rouge, "auc": auc_block, "capability": capability, "probe": probes, "pca": pca}
    results = json_safe(results)
    atomic_write_json(out_dir / RESULTS, results)
    return results


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
    """Table 8: ROUGE AUC per agent and metric, base vs IMAD, with the % difference."""
    return [{"agent": f"{a} ({results['personas'][a]})", "metric": m, "base": v["base"], "imad": v["imad"],
             "delta %": v["pct"]} for a, ms in results["auc"].items() for m, v in ms.items()]


def figures(results: dict) -> dict[str, go.Figure]:
    """Every figure of this experiment, by name."""
    return {"probe_accuracy": lens.plots.probe_accuracy_by_layer(
                {name.upper(): ProbeResult(**p) for name, p in results["probe"].items()}),
            "pca_agents": lens.plots.pca_scatter(_pca(results["pca"])),
            "rouge_vs_alpha": study_figures.rouge_curves(results),
            "rouge_auc": study_figures.rouge_auc_bars(results),
            "capability_agent_steering": study_figures.capability_under_steering(results)}
