"""Assemble the study report from a run directory: Table 1, both experiments, the claims, and how it was made.

Everything is read from saved artifacts (``eval/table1.json``, ``analyses/*/results.json``, ``stage.json``
manifests), so the report can be rebuilt at any time without recomputing. Writes ``report.html``,
``results.json`` and static images under ``run_dir/report/``.
"""

from __future__ import annotations

import json
import logging
import platform
import warnings
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Callable

import lens
from analyses import agent_subspaces, malicious
from analyses.metrics import json_safe
from analyses.claims import (gain_source, malicious_claims, paper_points_past_working_range, subspace_claims,
                             token_efficiency_claims)
from analyses.figures import stage2_curves
from analyses.report import Report
from analyses.results import load_results
from analyses.stats import bootstrap, by_seed, table1_intervals
from lens.io import atomic_write_json
from training.evaluate import EvalConfig, Table1, accuracy_vs_tokens
from training.tasks import TRANSFER_SHAPE
from training.layout import RunLayout
from training.pipeline import SINGLE_RL, ExperimentsConfig
from training.presets import Preset
from training.stages import stale_stages
from training.toy_base import base_summary


@dataclass(frozen=True)
class ReportConfig:
    """Preset section ``[report]``: whether to also write static PNG/PDF images of every figure, the preset's
    departures from the paper's recipe (one sentence each: what differs and why), and what its results did over
    other training seeds (``seed_spread``: one sentence each, measured with ``latent-agents spread``, because one
    run cannot show it), all listed in the report's method section and in ``results.json``."""

    static_images: bool = True
    departures: tuple[str, ...] = ()
    seed_spread: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "departures", tuple(self.departures))
        object.__setattr__(self, "seed_spread", tuple(self.seed_spread))


PACKAGES = ("torch", "transformers", "transformer-lens", "peft", "trl", "accelerate", "scikit-learn", "plotly",
            "kaleido", "rouge-score", "numpy", "tokenizers", "safetensors")


def package_versions() -> dict[str, str]:
    """The Python version and the installed version of each of `PACKAGES` (the report's package table).

    Returns:
        ``{"python": version, package: version or "not installed", ...}``, in `PACKAGES` order.

    Example:
        >>> from analyses.study_report import package_versions
        >>> list(package_versions())[:3]
        ['python', 'torch', 'transformers']
    """
    out = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = "not installed"
    return out


def stage_times(run_dir: Path) -> list[dict]:
    """Every finished stage under ``run_dir`` with its wall time, from the ``stage.json`` manifests.

    Args:
        run_dir: The run directory.

    Returns:
        ``{"stage": its dir relative to run_dir, "wall seconds": float or None}`` per manifest, sorted by path;
        manifests under a ``.partial`` dir are left out.

    Example:
        >>> stage_times(Path("runs/toy"))[0]  # doctest: +SKIP
        {'stage': 'analyses/agent_subspaces', 'wall seconds': 812.4}
    """
    rows = []
    for manifest in sorted(run_dir.rglob("stage.json")):
        if ".partial" in str(manifest.relative_to(run_dir)):
            continue
        m = json.loads(manifest.read_text())
        rows.append({"stage": str(manifest.parent.relative_to(run_dir)), "wall seconds": m.get("wall_seconds")})
    return rows


def _load(run_dir: Path, experiment: str) -> dict | None:
    try:
        return load_results(run_dir, experiment)
    except FileNotFoundError:
        return None


def _table1(run_dir: Path) -> Table1 | None:
    path = RunLayout(run_dir).table1
    return Table1.load(path) if path.is_file() else None


def table1_samples(run_dir: Path, table: Table1, split: str = "") -> dict[str, list[dict]]:
    """Every scored sample of each Table 1 method (``eval/samples/<method>.jsonl``; with ``split="transfer"``
    those of the transfer column, ``eval/samples/transfer/<method>.jsonl``), for the intervals.

    Args:
        run_dir: The run directory.
        table: Table 1 (`training.evaluate.Table1`), whose rows name the methods.
        split: ``""`` (the main column) or ``"transfer"``.

    Returns:
        Method → its sample records (``seed``, ``question``, ``correct``, ``tokens``, ...); a method without a file is
        left out.

    Example:
        >>> table = Table1.load(RunLayout(Path("runs/toy")).table1)  # doctest: +SKIP
        >>> len(table1_samples(Path("runs/toy"), table)["IMAD"])  # doctest: +SKIP
        600
    """
    out = {}
    for r in table.rows:
        slug = "".join(c if c.isalnum() or c in "-_." else "_" for c in r["method"])
        path = RunLayout(run_dir).eval / "samples" / split / f"{slug}.jsonl"
        if path.is_file():
            out[r["method"]] = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return out


def with_intervals(table: Table1, samples: dict[str, list[dict]], transfer: dict[str, list[dict]] | None = None
                   ) -> tuple[list[dict], dict[str, dict]]:
    """Table 1's rows with ``se`` (= the accuracy SE over seeds) and ``ci`` (95% bootstrap interval over seeds
    and questions), ``transfer_ci`` likewise from the ``transfer`` column's samples, and the paired comparisons
    (as claim interval entries).

    Args:
        table: Table 1 (`training.evaluate.Table1`).
        samples: Method → its samples (`table1_samples`).
        transfer: Method → its transfer-column samples (None: no ``transfer_ci``).

    Returns:
        ``(rows, paired)``: Table 1's rows with ``se``, ``ci`` and, where known, ``transfer_ci``; the paired
        comparisons of `analyses.stats.table1_intervals` as dicts.

    Example:
        >>> rows, paired = with_intervals(table, table1_samples(run_dir, table))  # doctest: +SKIP
        >>> paired["IMAD−Debate"]["ci"]  # doctest: +SKIP
        [0.02, 0.11]
    """
    acc, paired = table1_intervals(samples)
    transfer_ci = {m: bootstrap(by_seed(recs)).ci for m, recs in (transfer or {}).items() if recs}
    rows = [{**r, "se": r.get("accuracy_se"), "ci": acc[r["method"]].ci if r["method"] in acc else None,
             **({"transfer_ci": transfer_ci[r["method"]]} if r["method"] in transfer_ci else {})} for r in table.rows]
    return rows, {k: v.to_dict() for k, v in paired.items()}


def table1_rows(rows: list[dict]) -> list[dict]:
    """Table 1 as the report shows it: accuracy with its SE over seeds and 95% interval, tokens with their SE.

    Args:
        rows: Table 1's rows with intervals (`with_intervals`).

    Returns:
        One row per method: accuracy (%) ± SE, its 95% CI (%), tokens ± SE, questions, seeds, the well-formed debate
        share, and ``transfer (%)`` when any row has a transfer column.

    Example:
        >>> from analyses.study_report import table1_rows
        >>> row = {"method": "IMAD", "accuracy": 0.615, "accuracy_se": 0.012, "ci": [0.58, 0.65], "tokens": 48.0,
        ...        "tokens_se": 1.5, "n_questions": 200, "n_seeds": 3}
        >>> shown = table1_rows([row])[0]
        >>> shown["accuracy (%)"], shown["95% CI (%)"], shown["tokens / question"]
        ('61.50 ± 1.20', '[58.0, 65.0]', '48.0 ± 1.5')
    """
    def pm(v, se, scale=1.0, digits=2):
        return f"{v * scale:.{digits}f}" + ("" if se is None else f" ± {se * scale:.{digits}f}")

    def band(ci):
        return "–" if not ci or None in ci else f"[{100 * ci[0]:.1f}, {100 * ci[1]:.1f}]"
    def transfer(r):  # the transfer column: accuracy ± SE over seeds, 95% interval
        return "–" if "transfer" not in r else f"{pm(r['transfer'], r.get('transfer_se'), 100)} " \
                                                f"{band(r.get('transfer_ci'))}"
    has_transfer = any("transfer" in r for r in rows)
    return [{"method": r["method"], "accuracy (%)": pm(r["accuracy"], r["accuracy_se"], 100),
             "95% CI (%)": band(r.get("ci")),
             "tokens / question": pm(r["tokens"], r["tokens_se"], 1, 1), "questions": r["n_questions"],
             "seeds": r["n_seeds"], "well-formed debate": "–" if r.get("well_formed") is None
             else f"{100 * r['well_formed']:.0f}%", **({"transfer (%)": transfer(r)} if has_transfer else {})}
            for r in rows]


def base_rows(base: dict) -> list[dict]:
    """`base_summary`'s facts as report rows (measure, value); percentages with one decimal.

    Args:
        base: `training.toy_base.base_summary` of the toy base.

    Returns:
        ``{"measure", "value"}`` rows: the accuracies, the round-2 revisions, each round-2 check and the repair
        phases, each only when known.

    Example:
        >>> from analyses.study_report import base_rows
        >>> [r["value"] for r in base_rows({"accuracy": {"neutral": 0.62, "majority": 0.7}, "repairs": 1})]
        ['62.0% / 70.0%', '1']
    """
    acc, rows = base.get("accuracy") or {}, []
    if acc:
        rows.append({"measure": "accuracy: " + " / ".join(k.replace("_", " ") for k in acc),
                     "value": " / ".join(f"{100 * v:.1f}%" for v in acc.values())})
    if "round2" in base:
        rows.append({"measure": "round-2 revisions right (test split, the teacher's round-1 turns)",
                     "value": f"{100 * base['round2']['accuracy']:.1f}%"})
    for check in base.get("round2_checks") or []:
        rows.append({"measure": f"round-2 check after phase {check['after_phase']} ({check['n']} held-out "
                                "training-partition debates)", "value": f"{100 * check['accuracy']:.1f}%"})
    if "repairs" in base:
        rows.append({"measure": "repair phases run", "value": str(base["repairs"])})
    return rows


def stage2_points(preset: Preset, run_dir: Path) -> dict[str, list[dict]]:
    """The accuracy–tokens curve over the stage-2 budgets of Table 1's runs that exist, IMAD
    (``internalize/<exp>``) and Single + RL (``single_rl/<exp>``), from their ``phases.json``: the start model
    (``budget`` None), then each trained phase's held-out ``accuracy`` and ``mean_tokens``.

    Args:
        preset: The loaded preset (``[experiments] table1``).
        run_dir: The run directory.

    Returns:
        ``{"IMAD": [...], "Single + RL": [...]}`` for the runs with a ``phases.json``, each point ``{"budget",
        "accuracy", "mean_tokens"}``; skipped phases are left out.

    Example:
        >>> stage2_points(load_preset("toy"), Path("runs/toy"))["IMAD"][0]  # doctest: +SKIP
        {'budget': None, 'accuracy': 0.62, 'mean_tokens': 431.0}
    """
    layout, exp = RunLayout(run_dir), preset.section("experiments", ExperimentsConfig).table1
    paths = {"IMAD": layout.internalize(exp) / "phases.json", SINGLE_RL: layout.single_rl(exp) / "phases.json"}
    out = {}
    for name, path in paths.items():
        if path.is_file():
            run = json.loads(path.read_text())
            out[name] = [{"budget": budget, "accuracy": e["accuracy"], "mean_tokens": e["mean_tokens"]}
                         for budget, e in [(None, run["start_eval"]),
                                           *((p["budget"], p["eval"]) for p in run["phases"] if not p["skipped"])]]
    return out


def build(preset: Preset, run_dir: Path) -> tuple[Report, dict]:
    """The report and the ``results.json`` payload for ``run_dir``.

    Args:
        preset: The loaded preset.
        run_dir: The run directory.

    Returns:
        ``(report, payload)``: the `Report` (claims, Table 1, both experiments, how it was made) and the dict saved
        as ``report/results.json``.

    Example:
        >>> rep, payload = build(load_preset("toy"), Path("runs/toy"))  # doctest: +SKIP
        >>> [c["verdict"] for c in payload["claims"]][:2]  # doctest: +SKIP
        ['reproduced', 'not reproduced']
    """
    table = _table1(run_dir)
    subs = _load(run_dir, agent_subspaces.NAME)
    mal = _load(run_dir, malicious.NAME)
    rows, paired = with_intervals(table, table1_samples(run_dir, table), table1_samples(run_dir, table, "transfer")) \
        if table else (None, {})
    curves = stage2_points(preset, run_dir)
    methods = {r["method"]: r for r in rows} if rows else None
    claims = [*token_efficiency_claims(methods, paired), *subspace_claims(subs), *malicious_claims(mal)]
    stages = stage_times(run_dir)
    seeds = {"preset": preset.seed, "eval": list(preset.section("eval", EvalConfig).seeds),
             "subspaces": preset.section("subspaces", agent_subspaces.SubspaceConfig).seed,
             "malicious": preset.section("malicious", malicious.MaliciousConfig).seed}
    rep = Report(f"latent-agents study: preset {preset.name}")
    rep.text(f"{preset.data.get('meta', {}).get('description', '')} Run directory: {run_dir}. "
             f"Total stage wall time: {sum(s['wall seconds'] or 0 for s in stages):.0f} s.")
    for stage, why in stale_stages(run_dir):
        rep.text(f"Warning: stage {stage} was kept although it is stale ({why}); its results, and everything "
                 "built from it, do not match this preset.", "note")
    rep.heading("Paper claims")
    rep.claims(claims)

    rep.heading("1. Token efficiency (paper Table 1)")
    if table:
        rep.table(table1_rows(rows), "Table 1: accuracy ± SE over seeds with its 95% bootstrap interval (seeds and "
                                     "questions), mean tokens (input + output) per question")
        rep.table([{"comparison": k, "estimate": v["estimate"], "95% CI": v["ci"]} for k, v in paired.items()],
                  "Paired comparisons (same seeds and questions; accuracy differences in 0–1)")
        if any("transfer" in r for r in rows):
            rep.text(f"Transfer: accuracy on held-out arithmetic of a shape no stage trains on "
                     f"({TRANSFER_SHAPE}, operands as [task]), the toy analogue of training on arithmetic and testing "
                     "on GSM8K / BBH; same seeds and sampling as the table.")
        if any(SINGLE_RL == r["method"] for r in rows):
            rep.text(f"{SINGLE_RL}: the stage-2 GRPO recipe ([internalize]: phases, steps, generations, lr, clipping, "
                     "correctness reward; no tag reward) from the base model under the Single prompt, budgets as "
                     "fractions of the p95 of the base's own sampled single answers; evaluated as Single. "
                     f"Where IMAD's gain over Single comes from: {gain_source(paired, SINGLE_RL)} (IMAD − "
                     f"{SINGLE_RL} interval above 0: the debate; else {SINGLE_RL} − Single above 0: reinforcement "
                     "learning; else undecided).")
        rep.figure("accuracy_vs_tokens", accuracy_vs_tokens(table))
    else:
        rep.text("Table 1 is missing (eval/table1.json).", "note")
    if curves:
        rep.figure("stage2_accuracy_vs_tokens", stage2_curves(curves))

    rep.heading("2. Agent subspaces (paper §3)")
    if subs:
        rep.text(f"Vectors: diff-of-means per agent from the SFT checkpoint of '{subs['config']['experiment']}', "
                 f"read and written at {subs['hook_name']} (end of the agent's turn; no layer offset), "
                 f"{_vector_scaling(subs['config']['normalize'])}. Steering adds α·v on generated tokens only, "
                 "to the base model and to IMAD, from the held-out debate context up "
                 "to the agent's tag. ROUGE is against the agent's own response; AUC is the trapezoid over α.")
        rep.text("Caveat: the toy base model never saw the debate tags, so the tagged prompts are out of its "
                 "distribution; both models get the same prompts, layer and vectors. Capability is arithmetic "
                 "accuracy with each model's native prompt (base: chat template, neutral persona; IMAD: "
                 "'Problem: q').", "note")
        rep.table(agent_subspaces.auc_rows(subs), "Table 8: ROUGE AUC over α, base vs IMAD")
        working = agent_subspaces.working_view(subs)
        if working:
            past = paper_points_past_working_range(subs)
            rep.text(f"The paper's grid is in the vectors' own unit ({subs['alpha_unit']})"
                     + (f"; of its {len(subs['alphas'])} points, " + ", ".join(
                         f"{n} (agent {a})" for a, n in past.items()) + " lie past the agent's working range "
                        "(stronger than where the first model's arithmetic accuracy halves)" if past else "")
                     + f". The same sweep over each agent's working range ({working['alpha_unit']}; "
                     + ", ".join(f"agent {a}: 0–{max(g):.2f}" for a, g in working["grids"].items())
                     + f", in {len(next(iter(working['grids'].values()))) - 1} equal steps, the end being the smaller "
                     "of base's and IMAD's positive strengths where accuracy on the α-selection split halves; one "
                     "grid for both models) is below; the rouge_auc claim is decided on it. Like the paper's, this "
                     "AUC carries each model's unsteered ROUGE (IMAD knows the tags), so it says which model "
                     "continues an agent's turn more like that agent, not which one steering moves more: the "
                     "steerability table below measures that.")
            rep.table(agent_subspaces.auc_rows(working), "Table 8b: ROUGE AUC over the working range, base vs IMAD")
        if subs.get("steerability"):
            rep.text("Steerability, not familiarity: from a neutral slot (each model's native arithmetic prompt, "
                     "no agent tag), the share of outputs carrying agent i's persona markers and their ROUGE-L "
                     "against the teacher's solution in agent i's style, as gains over α = 0 at the best α of "
                     + (f"each model and agent's grid ({subs['steering_unit']}: 0 up to where accuracy on "
                        f"{subs['selection_split']} halves)" if subs.get("selection_split") else
                        f"{subs['alphas']} ({subs['alpha_unit']})") + "; 95% bootstrap intervals over prompts.")
            rep.table(agent_subspaces.steerability_rows(subs), "Steerability per agent, base vs IMAD")
        rep.table([{"agent": a, "persona": subs["personas"][a], "hook": v["hook_name"],
                    "residual norm": v["stats"].get("resid_norm"), "raw diff norm": v["stats"].get("raw_diff_norm"),
                    "held-out prompts": subs["n_prompts"][a]} for a, v in subs["vectors"].items()],
                  "Agent vectors")
        for name, fig in agent_subspaces.figures(subs).items():
            rep.figure(name, fig)
    else:
        rep.text("Agent-subspace results are missing.", "note")

    rep.heading("3. Malicious agents (paper §4)")
    if mal:
        rep.text("IMAD: agent-2 vector from the trait experiment's SFT checkpoint. Base: contrastive system-prompt "
                 "vector (malicious minus benign prompt, chat template, token −2), "
                 f"{_vector_scaling(mal['config']['normalize'])}. "
                 "Same layer for both; "
                 "trait scores from the judge (0–100), accuracy under steering, perplexity of the response under "
                 "the base model. Best α: the lowest trait score whose accuracy drop stays within the budget.")
        rep.text(f"Strengths: {mal['alpha_unit']}. " + (
            "Each model's grid was chosen on the α-selection split "
            f"({mal.get('selection_split', 'training problems')}): the strength at which its capability halves, "
            "in each direction, then evenly spaced points from 0 to it; the test prompts were only scored. "
            if mal["config"].get("alpha_search") else "Fixed grid from the preset. ") +
            "Controls: prompting (a benign system prompt, no vector), a random direction of the IMAD vector's "
            "norm, ablation of the agent-2 direction, and capping its projection at percentiles of the benign "
            "agents' training-turn projections. The Pareto frontier ranks every method and strength by trait "
            "reduction against accuracy drop, each relative to its own model unsteered; ★ marks the best within "
            f"a {100 * mal['config']['capacity_budget']:g}-point accuracy budget. Intervals: 95% bootstrap over "
            "prompts (trait) and problems (accuracy).")
        rep.table(malicious.rating_rows(mal), "Suppression rating, base vs IMAD")
        if all("pareto" in b for b in mal["traits"].values()):
            rep.table(malicious.control_rows(mal), "Suppression rating with controls (best strength per method "
                                                   "within the budget)")
            rep.table(malicious.monitor_rows(mal), "Monitoring: AUROC of the agent-2 direction vs the judge at "
                                                   "telling the malicious agent's held-out turns from the others'")
        for name, fig in malicious.figures(mal, run_dir).items():
            rep.figure(name, fig)
    else:
        rep.text("Malicious-agent results are missing.", "note")

    rep.heading("How this was made")
    report_config = preset.section("report", ReportConfig)
    departures = [*report_config.departures, *((mal or {}).get("departures") or [])]
    if departures:
        rep.heading("Departures from the paper's recipe", 3)
        rep.table([{"departure": d} for d in departures], "What this preset does differently from the paper, and why")
    versions = package_versions()
    base = base_summary(RunLayout(run_dir).toy_base)
    if base:
        rep.table(base_rows(base), "Toy base: greedy accuracy on the test split, its round-2 revisions, and the "
                                   "round-2 checks on held-out training-partition debates that decide repair phases")
    rep.table([{"stage": s["stage"], "wall seconds": s["wall seconds"]} for s in stages], "Wall time per stage")
    rep.table([{"seed of": k, "value": v} for k, v in seeds.items()], "Seeds")
    if report_config.seed_spread:
        rep.table([{"measured": m} for m in report_config.seed_spread],
                  "Spread over training seeds (this preset run again with other meta.seed values; latent-agents "
                  "spread)")
    rep.table([{"package": k, "version": v} for k, v in versions.items()], "Package versions")
    rep.heading("Preset", 3)
    rep.pre(preset.path.read_text())
    payload = {"preset": preset.name, "preset_path": str(preset.path), "run_dir": str(run_dir), "seeds": seeds,
               "versions": versions, "stages": stages, "table1": rows, "table1_paired": paired,
               "gain_source": gain_source(paired, SINGLE_RL) if methods and SINGLE_RL in methods else None,
               "stage2_curves": curves,
               "agent_subspaces": subs, "malicious": mal, "claims": [c.to_dict() for c in claims],
               "figures": list(rep.figures), "tables": rep.tables, "departures": list(departures),
               "seed_spread": list(report_config.seed_spread), "base": base}
    return rep, payload


def export_static(figures: dict, out_dir: Path, log: Callable[[str], None]) -> list[str]:
    """``lens.plots.save_figure`` for each figure, sharing one Chromium; HTML only (one log line) without it.

    Args:
        figures: Name → plotly figure (`Report.figures`).
        out_dir: Where the files go (``<name>.html``, ``.png`` and ``.pdf`` per figure).
        log: Where the line about a missing Chromium goes.

    Returns:
        The names of the files written; ``[]`` without Chromium.

    Example:
        >>> export_static(rep.figures, Path("runs/toy/report/figures"), print)[:3]  # doctest: +SKIP
        ['rouge_auc.html', 'rouge_auc.png', 'rouge_auc.pdf']
    """
    import shutil

    if not any(shutil.which(b) for b in ("chromium", "chromium-browser", "google-chrome", "chrome")):
        log("[report] Chromium not found: figures are interactive in report.html only (no PNG/PDF)")
        return []
    import kaleido

    logging.getLogger("lens.plots").setLevel(logging.ERROR)
    written = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        kaleido.start_sync_server(silence_warnings=True)
        try:
            for name, fig in figures.items():
                written += [p.name for p in lens.plots.save_figure(fig, out_dir / name)]
        finally:
            kaleido.stop_sync_server(silence_warnings=True)
    return written


def write_report(preset: Preset, run_dir: str | Path, *, log: Callable[[str], None] = print) -> Path:
    """``report.html`` + ``results.json`` + figures under ``run_dir/report/``; returns the report path.

    Args:
        preset: The loaded preset (``[report] static_images``).
        run_dir: The run directory.
        log: Where progress lines go.

    Returns:
        The path of ``report.html``.

    Example:
        >>> write_report(load_preset("toy"), "runs/toy")  # doctest: +SKIP
        PosixPath('runs/toy/report/report.html')
    """
    run_dir = Path(run_dir)
    out = RunLayout(run_dir).report
    rep, payload = build(preset, run_dir)
    cfg = preset.section("report", ReportConfig)
    payload["static_figures"] = export_static(rep.figures, out / "figures", log) if cfg.static_images else []
    atomic_write_json(out / "results.json", json_safe(payload))
    return rep.write(out / "report.html")


def _vector_scaling(normalize: bool) -> str:
    """How an experiment's steering vectors were scaled (its ``normalize`` setting), in words."""
    return ("each of unit norm, so α is in residual units (the paper)" if normalize else
            "each scaled to its raw mean difference, so α = 1 moves one mean onto the other")
