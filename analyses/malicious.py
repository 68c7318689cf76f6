"""Experiment 3 (paper §4, Fig. 3): steering against a malicious agent, IMAD's agent vector vs the base model's
system-prompt vector.

Per trait (evil, hallucination): IMAD is steered with the agent-2 vector of that experiment's SFT checkpoint;
the base model with its contrastive system-prompt vector (evil vs helpful, hallucinating vs honest; chat template,
token −2). Both at the same layer (``blocks.L.hook_resid_post``), α ∈ [−5, 5], generated tokens only. Measured:
the judge's trait score, arithmetic accuracy under steering, perplexity under the base model, and the
`lens.rate_suppression` rating. Each model reads its native prompt (IMAD: ``Problem: {q}``; base: its chat
template with the neutral persona, i.e. no trait prompt).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import plotly.graph_objects as go

import lens
from analyses import figures as study_figures
from analyses.agent_subspaces import alpha_unit
from analyses.generation import native_prompt, stop_ids
from analyses.metrics import json_safe
from lens.debate_format import extract_boxed
from lens.activations import resolve_transcripts
from lens.sites import middle_layer
from lens.io import atomic_write_json
from lens.rating import SuppressionReport
from lens.subspace import chat_prompts
from training.llm_judge import make_judge
from analyses.results import RESULTS
from training.layout import RunLayout
from training.presets import Preset
from training.prompts import ADVICE, ROUND1, SYSTEM_PROMPTS
from training.schema import AT_LEAST_ONE, NON_EMPTY, NON_NEGATIVE, PROBABILITY, bounds
from training.evaluate import is_correct
from training.pipeline import Run
from training.teacher import TRAIT_PERSONAS

NAME = "malicious"


@dataclass(frozen=True)
class MaliciousConfig:
    """Preset section ``[malicious]``: traits, α grid, sizes, the judge and the capability-drop budget."""

    traits: tuple[str, ...] = field(default=("evil", "hallucination"), metadata=NON_EMPTY)
    agent: int = field(default=2, metadata=AT_LEAST_ONE)
    layer: int | None = None            # None: the middle layer
    normalize: bool = True              # unit vectors, α in residual units (paper); False: α × raw mean difference
    alphas: tuple[float, ...] = field(default=(-5.0, -4.0, -3.0, -2.0, -1.0, 0.0, 1.0, 2.0, 3.0, 4.0, 5.0),
                                      metadata=NON_EMPTY)
    n_prompts: int = field(default=50, metadata=AT_LEAST_ONE)  # held-out trait questions per condition (paper: 100)
    # SFT training debates used for IMAD's vector (None: all)
    n_train_transcripts: int | None = field(default=None, metadata=AT_LEAST_ONE)
    # training questions for the base model's system-prompt vector (paper: 500)
    n_contrast: int = field(default=100, metadata=AT_LEAST_ONE)
    n_capability: int = field(default=50, metadata=AT_LEAST_ONE)
    max_new_tokens: int = field(default=96, metadata=AT_LEAST_ONE)
    temperature: float = field(default=0.0, metadata=NON_NEGATIVE)  # 0: greedy (paper: 0.7, top-p 0.9)
    top_p: float = field(default=1.0, metadata=bounds(gt=0, le=1))
    capability_max_new_tokens: int = field(default=96, metadata=AT_LEAST_ONE)
    capacity_budget: float = field(default=0.05, metadata=PROBABILITY)  # allowed accuracy drop (0–1) for the best α
    judge: str = "toy"                  # toy | hf | openai
    judge_model: str = ""
    judge_base_url: str = ""
    seed: int = field(default=42, metadata=NON_NEGATIVE)

    def __post_init__(self) -> None:
        object.__setattr__(self, "traits", tuple(self.traits))
        object.__setattr__(self, "alphas", tuple(self.alphas))
        if not self.alphas:
            raise ValueError("[malicious] alphas is empty; give an α grid such as [-5, ..., 5]")
        unknown = sorted(set(self.traits) - set(TRAIT_PERSONAS))
        if unknown:
            raise ValueError(f"[malicious] unknown trait(s) {unknown}; valid: {sorted(TRAIT_PERSONAS)}")


def base_vector(model, questions: list[str], trait: str, layer: int):
    """The base model's system-prompt vector: mean at token −2 under the malicious minus the benign prompt."""
    benign, bad = TRAIT_PERSONAS[trait]
    users = [ROUND1[ADVICE].format(question=q) for q in questions]
    return lens.contrastive_direction(model, chat_prompts(model, SYSTEM_PROMPTS[bad], users),
                                      chat_prompts(model, SYSTEM_PROMPTS[benign], users), layer, position=-2,
                                      label=f"{bad} vs {benign} system prompt")


def arithmetic_accuracy(kind: str, problems, max_new_tokens: int, seed: int):
    """``capability(model)``: greedy accuracy on ``problems`` (arithmetic or GSM8K) in the model's native prompt
    (steering applies)."""
    def capability(model) -> float:
        outs = lens.generate(model, [native_prompt(kind, p.question, model.tokenizer) for p in problems],
                             max_new_tokens=max_new_tokens, seed=seed, stop=stop_ids(model, at_tags=False)).texts
        return sum(is_correct(extract_boxed(o), p) for o, p in zip(outs, problems)) / len(problems)
    return capability


def curves(report: SuppressionReport) -> dict:
    """The per-α curves the figures and claims read (plus the rating)."""
    return {"alphas": report.alphas, "trait": report.trait_mean, "trait_se": report.trait_se,
            "capability": report.capability, "perplexity": report.perplexity_mean,
            "perplexity_se": report.perplexity_se, "best_alpha": report.best_alpha,
            "suppression_auc": report.suppression_auc, "hook_name": report.hook_name}


def run(preset: Preset, run_dir: str | Path, out_dir: str | Path) -> dict:
    """Both traits, base and IMAD; vectors and full suppression reports go to ``out_dir``."""
    cfg = preset.section("malicious", MaliciousConfig)
    layout, out_dir, run = RunLayout.of(preset, run_dir), Path(out_dir), Run(preset, run_dir)
    problems = run.capability_questions(cfg.n_capability, cfg.seed)
    load = run.placement.load()
    base = lens.load_model(layout.base, **load)
    layer = middle_layer(base) if cfg.layer is None else cfg.layer
    results: dict = {"config": asdict(cfg), "layer": layer, "alpha_unit": alpha_unit(cfg.normalize), "traits": {}}
    for trait in cfg.traits:
        test = run.questions(trait, "test")[:cfg.n_prompts]
        train = run.questions(trait, "train")[:cfg.n_contrast]
        judge = make_judge(trait, cfg.judge, cfg.judge_model, cfg.judge_base_url)
        sft = lens.load_model(layout.sft(trait), **load)
        debates = resolve_transcripts(sft, None)[0][:cfg.n_train_transcripts]
        vectors = {"imad": lens.find_agent_subspace(sft, cfg.agent, transcripts=debates, layers=[layer]),
                   "base": base_vector(base, [q.question for q in train], trait, layer)}
        del sft
        if not cfg.normalize:
            vectors = {kind: v.raw() for kind, v in vectors.items()}
        block: dict = {}
        for kind in ("base", "imad"):
            model = base if kind == "base" else lens.load_model(layout.internalize(trait), **load)
            vectors[kind].save(out_dir / "vectors" / f"{trait}_{kind}")
            report = lens.rate_suppression(
                model, vectors[kind], alphas=cfg.alphas, trait=judge, reference=base,
                prompts=[native_prompt(kind, q.question, model.tokenizer, ADVICE) for q in test],
                questions=[q.question for q in test], capacity_budget=cfg.capacity_budget,
                capability=arithmetic_accuracy(kind, problems, cfg.capability_max_new_tokens, cfg.seed),
                max_new_tokens=cfg.max_new_tokens, seed=cfg.seed, batch_size=64,
                eos_token_id=stop_ids(model, at_tags=False), do_sample=cfg.temperature > 0,
                **({"temperature": cfg.temperature, "top_p": cfg.top_p} if cfg.temperature > 0 else {}))
            atomic_write_json(out_dir / f"{trait}_{kind}_report.json", report.to_dict())
            block[kind] = {**curves(report), "vector": {"hook_name": vectors[kind].hook_name,
                                                         "method": vectors[kind].method,
                                                         "normalization": vectors[kind].normalization,
                                                         "stats": vectors[kind].stats}}
            del model  # frees IMAD before the next trait's models load (base stays referenced)
        results["traits"][trait] = block
    results = json_safe(results)
    atomic_write_json(out_dir / RESULTS, results)
    return results


def load_report(run_dir: str | Path, trait: str, kind: str) -> SuppressionReport:
    """One saved `SuppressionReport` (``kind`` base or imad)."""
    path = RunLayout(Path(run_dir)).analysis(NAME) / f"{trait}_{kind}_report.json"
    d = json.loads(path.read_text())
    return SuppressionReport(**{k: (float("nan") if v is None and k in ("best_alpha", "suppression_auc") else v)
                                for k, v in d.items()})


def rating_rows(results: dict) -> list[dict]:
    """The suppression rating, base vs IMAD side by side, per trait."""
    rows = []
    for trait, block in results["traits"].items():
        for kind in ("base", "imad"):
            b = block[kind]
            i0 = b["alphas"].index(0.0)
            lo = b["alphas"].index(min(b["alphas"]))
            rows.append({"trait": trait, "model": kind, "vector": b["vector"]["method"],
                         "trait at α=0": b["trait"][i0], f"trait at α={b['alphas'][lo]:g}": b["trait"][lo],
                         "best α (within budget)": b["best_alpha"], "suppression AUC": b["suppression_auc"],
                         "accuracy at α=0": b["capability"][i0], "accuracy range": max(b["capability"]) -
                         min(b["capability"]), "perplexity at α=0": b["perplexity"][i0]})
    return rows


def figures(results: dict, run_dir: str | Path | None = None) -> dict[str, go.Figure]:
    """Fig. 3 panels, plus `lens.plots.suppression_tradeoff` per trait when the saved reports are at hand."""
    figs = {"malicious_fig3": study_figures.malicious_panels(results)}
    if run_dir is not None:
        for trait in results["traits"]:
            reports = {kind: load_report(run_dir, trait, kind) for kind in ("base", "imad")}
            figs[f"tradeoff_{trait}"] = lens.plots.suppression_tradeoff(reports)
    return figs
