"""Analyses building blocks on hand-made inputs: ROUGE and AUC, claim verdicts, the HTML report."""

from __future__ import annotations

import json
import math

import numpy as np
import plotly.graph_objects as go
import pytest
import torch

import lens
from analyses import figures
from analyses.agent_subspaces import auc_rows, marker_counts, working_spans, working_view
from analyses.stats import bootstrap, paired_difference, table1_intervals
from lens.rating import halving_strength, pareto_frontier, strength_grid
from analyses.claims import malicious_claims, subspace_claims, token_efficiency_claims
from analyses.metrics import auc, pct_change, rouge
from analyses.report import Report
from lens.rating import mean_se

ALPHAS = [0.0, 2.5, 5.0]


def test_rouge_identical_and_disjoint():
    assert rouge("step 1: add the numbers", "step 1: add the numbers") == {"rouge1": 1.0, "rouge2": 1.0, "rougeL": 1.0}
    assert rouge("apples", "oranges")["rouge1"] == 0.0


def test_auc_is_trapezoid_over_alpha():
    assert auc(ALPHAS, [0.2, 0.2, 0.2]) == pytest.approx(1.0)
    assert auc([5.0, 0.0], [1.0, 0.0]) == pytest.approx(2.5)  # sorted by α first
    with pytest.raises(ValueError, match="at least two"):
        auc([0.0], [1.0])


def test_mean_se_and_pct():
    m, se = mean_se([1.0, 2.0, 3.0, float("nan")])
    assert m == 2.0 and se == pytest.approx(1 / math.sqrt(3))
    assert pct_change(1.0, 1.154) == pytest.approx(15.4)
    assert math.isnan(pct_change(0.0, 1.0))


def _subspace_results(imad_gain=0.1):
    diff = {"estimate": imad_gain, "ci": [imad_gain - 0.05, imad_gain + 0.05]}
    auc_block = {a: {m: {"base": 1.0, "imad": 1.0 + imad_gain, "pct": 100 * imad_gain, "diff": diff}
                     for m in ("rouge1", "rouge2", "rougeL")} for a in ("1", "2", "3")}
    auc_block["3"]["rouge2"] = {"base": 0.0, "imad": 0.0, "pct": None,  # no bigram ever matched: no % change
                                "diff": {"estimate": 0.0, "ci": [0.0, 0.0]}}
    curve = {a: {m: [0.3, 0.2, 0.1] for m in ("rouge1", "rouge2", "rougeL")} for a in ("1", "2", "3")}
    return {"alphas": ALPHAS, "capability_grid": {m: {a: ALPHAS for a in "123"} for m in ("base", "imad")},
            "alpha_unit": "α (× raw mean difference)",
            "personas": {"1": "analyst", "2": "critic", "3": "programmer"},
            "auc": auc_block, "rouge": {"base": curve, "imad": curve},
            "capability": {"base": {a: [0.5, 0.4, 0.1] for a in "123"}, "imad": {a: [0.9, 0.8, 0.7] for a in "123"}},
            "capability_drop": {a: {"estimate": 0.2, "ci": [0.1, 0.3], "alpha": 5.0} for a in "123"},
            "steerability": {"gain_difference": {"1": {"estimate": 0.3, "ci": [0.1, 0.5]},
                                                 "2": {"estimate": 0.2, "ci": [0.05, 0.4]},
                                                 "3": {"estimate": 0.1, "ci": [-0.1, 0.3]}}}}


def _malicious_results(imad_evil=(0.0, 0.0, 0.0, 10.0, 40.0), base_evil=(2.0, 3.0, 5.0, 8.0, 9.0)):
    alphas = [-5.0, -3.0, -1.0, 0.0, 5.0]
    def block(trait, cap):
        return {"alphas": alphas, "trait": list(trait), "trait_se": [1.0] * 5, "capability": list(cap),
                "trait_ci": [[max(0.0, t - 1.0), t + 1.0] if t else [0.0, 0.0] for t in trait],
                "capability_ci": [[c - 0.05, c + 0.05] for c in cap], "perplexity": [2.0, 2.1, 2.0, 1.9, 3.0]}
    return {"alpha_unit": "α (unit vector)", "traits": {
        "evil": {"imad": block(imad_evil, [0.9] * 5), "base": block(base_evil, [0.1, 0.5, 0.6, 0.6, 0.2])},
        "hallucination": {"imad": block([20, 30, 50, 65, 80], [0.9] * 5),
                          "base": block([30, 40, 55, 65, 70], [0.6] * 5)},
    }}


def test_claims_from_result_dicts():
    """Verdicts follow the intervals; a claim the data cannot decide is "not reproduced" and says why."""
    rows = {"Debate": {"method": "Debate", "accuracy": 0.8, "tokens": 1000.0, "ci": [0.75, 0.85]},
            "Single": {"method": "Single", "accuracy": 0.7, "tokens": 300.0, "ci": [0.6, 0.8]},
            "IMAD": {"method": "IMAD", "accuracy": 0.85, "tokens": 80.0, "ci": [0.8, 0.9]},
            "SFT": {"method": "SFT", "accuracy": 0.8, "tokens": 400.0}}
    paired = {"IMAD/Debate tokens": {"estimate": 0.08, "ci": [0.07, 0.09]},
              "IMAD−Debate": {"estimate": 0.05, "ci": [0.01, 0.09]},
              "Debate−Single": {"estimate": 0.1, "ci": [-0.02, 0.2]},  # the interval reaches 0: not supported
              "SFT−IMAD tokens": {"estimate": 320.0, "ci": [300.0, 340.0]}}
    tokens = {c.id: c for c in token_efficiency_claims(rows, paired)}
    assert [tokens[k].reproduced for k in ("tokens_vs_debate", "accuracy_vs_debate", "tokens_vs_sft")] == [True] * 3
    assert tokens["debate_vs_single"].reproduced is False and "[-2.0, 20.0]" in tokens["debate_vs_single"].measured
    assert "8.0 [7.0, 9.0]%" in tokens["tokens_vs_debate"].measured
    assert tokens["imad_vs_single_rl"].verdict == "not run"  # no Single + RL row in this table
    assert all(c.intervals for c in tokens.values())
    assert token_efficiency_claims(None)[0].verdict == "not run"
    zero = token_efficiency_claims({"Debate": {"method": "Debate", "accuracy": 0.0, "tokens": 9.0},
                                    "IMAD": {"method": "IMAD", "accuracy": 0.0, "tokens": 1.0}})
    assert zero[1].reproduced is False and "both score 0%" in zero[1].measured  # nothing to compare
    sub = subspace_claims(_subspace_results())
    assert sub[0].reproduced and "mean +10.0%" in sub[0].measured
    assert sub[1].reproduced  # every agent's steering lowers IMAD accuracy
    assert sub[2].id == "steerability" and sub[2].reproduced is False  # agent 3's interval reaches below 0
    assert subspace_claims(_subspace_results(-0.1))[0].reproduced is False
    mal = {c.id: c for c in malicious_claims(_malicious_results())}
    assert mal["evil_suppressed"].reproduced and mal["hallucination_partial"].reproduced
    assert mal["capability_stable"].reproduced
    mal = {c.id: c for c in malicious_claims(_malicious_results(imad_evil=(5.0, 1.0, 0.0, 10.0, 40.0)))}
    assert mal["evil_suppressed"].reproduced is False
    # nothing to suppress unsteered, or no arithmetic to keep: the claim cannot be decided, and says why
    mal = {c.id: c for c in malicious_claims(_malicious_results(imad_evil=(0.0, 0.0, 0.0, 0.0, 20.0)))}
    evil = mal["evil_suppressed"]
    assert evil.verdict == "not reproduced" and "nothing to suppress" in evil.measured
    unskilled = _malicious_results()
    for block in unskilled["traits"].values():
        block["imad"]["capability"] = [0.02] * 5
        block["imad"]["capability_ci"] = [[0.0, 0.05]] * 5
    cap = {c.id: c for c in malicious_claims(unskilled)}["capability_stable"]
    assert cap.verdict == "not reproduced" and "IMAD 2.0% unsteered" in cap.measured
    collapse = _malicious_results()
    for block in collapse["traits"].values():  # both lose all accuracy away from α = 0: neither is more stable
        block["imad"]["capability"] = block["base"]["capability"] = [0.0, 0.0, 0.0, 0.5, 0.0]
        block["imad"]["capability_ci"] = block["base"]["capability_ci"] = [[0.0, 0.05]] * 3 + [[0.4, 0.6], [0, 0]]
    assert {c.id: c for c in malicious_claims(collapse)}["capability_stable"].reproduced is False
    assert "Unsteered (α = 0) ROUGE-L: agent 1: base 0.30 vs IMAD 0.30" in sub[0].measured


def _with_working_range(results: dict, gains: dict[str, float]) -> dict:
    """``results`` plus a working-range ROUGE block whose per-agent AUC differences are ``gains`` (±0.05)."""
    grids = {a: [0.0, 0.1, 0.2, 0.3] for a in gains}
    curve = {a: {m: [0.9, 0.7, 0.4, 0.2] for m in ("rouge1", "rouge2", "rougeL")} for a in gains}
    auc = {a: {m: {"base": 0.1, "imad": 0.1 + g, "pct": 1000 * g, "diff": {"estimate": g, "ci": [g - 0.05, g + 0.05]}}
               for m in ("rouge1", "rouge2", "rougeL")} for a, g in gains.items()}
    return {**results, "rouge_working": {"unit": "α (× mean residual norm)", "grids": grids,
                                         "rouge": {"base": curve, "imad": curve}, "auc": auc}}


def test_working_range_ends_where_the_first_model_halves_and_decides_the_rouge_claim():
    grids = {"base": {"1": [-0.4, 0.0, 0.2, 0.4], "2": [-0.3, 0.0, 0.3], "3": [0.0]},
             "imad": {"1": [-0.3, 0.0, 0.15, 0.3], "2": [-0.4, 0.0, 0.4], "3": [-0.1, 0.0, 0.1]}}
    assert working_spans(grids) == {"1": 0.3, "2": 0.3}  # agent 3: base has no positive strength
    paper_fails = _subspace_results(-0.1)  # on the paper's grid every difference is below 0
    claim = subspace_claims(_with_working_range(paper_fails, {"1": 0.2, "2": 0.1, "3": 0.3}))[0]
    assert claim.reproduced is True
    assert "agent 1 0–0.3" in claim.measured and "α (× mean residual norm)" in claim.measured
    assert "not above 0 there: agent 1 rouge1" in claim.measured  # the paper grid's verdict is stated beside it
    assert "lie past" not in claim.measured  # the vectors' norms are not recorded: no count
    norms = {"config": {"normalize": False},
             "vectors": {a: {"stats": {"raw_diff_norm": 50.0, "resid_norm": 100.0}} for a in "123"}}
    counted = subspace_claims(_with_working_range({**paper_fails, **norms}, {"1": 0.2, "2": 0.1, "3": 0.3}))[0]
    # paper grid 0, 2.5, 5 (× raw difference) is 0, 1.25, 2.5 residual norms: two points past 0.3
    assert "of its 3 points, 2 (agent 1), 2 (agent 2), 2 (agent 3) lie past the working range" in counted.measured
    assert claim.intervals["agent 2 rougeL"]["estimate"] == 0.1
    assert subspace_claims(_with_working_range(_subspace_results(), {"1": 0.2, "2": 0.0, "3": 0.3}))[0].reproduced \
        is False  # agent 2's interval [-0.05, 0.05] reaches below 0
    partial = subspace_claims(_with_working_range(_subspace_results(), {"1": 0.2, "2": 0.2}))[0]
    assert partial.reproduced is False  # agent 3 has no working range: not every agent was measured


def test_working_range_view_feeds_the_table_and_figures():
    results = _with_working_range(_subspace_results(), {"1": 0.2, "2": 0.1, "3": 0.3})
    view = working_view(results)
    assert [r["IMAD − base [95% CI]"] for r in auc_rows(view) if r["metric"] == "rougeL"] == [
        "0.200 [0.150, 0.250]", "0.100 [0.050, 0.150]", "0.300 [0.250, 0.350]"]
    fig = figures.rouge_curves(view)
    assert list(fig.data[0].x) == [0.0, 0.1, 0.2, 0.3] and "working range" in fig.layout.title.text
    assert fig.layout.xaxis7.title.text == "α (× mean residual norm)"
    assert working_view(_subspace_results()) is None


def test_alpha_axes_say_what_alpha_one_adds():
    assert figures.capability_under_steering(_subspace_results()).layout.xaxis.title.text == "α (× raw mean difference)"
    assert figures.malicious_panels(_malicious_results()).layout.xaxis.title.text == "α (unit vector)"


def test_report_embeds_plotly_once_with_figures_tables_claims(tmp_path):
    rep = Report("study")
    rep.heading("Table 1")
    rep.table([{"method": "IMAD", "accuracy": 0.91234}], "Table 1")
    for name, fig in {"rouge": figures.rouge_curves(_subspace_results()),
                      "auc": figures.rouge_auc_bars(_subspace_results()),
                      "capability": figures.capability_under_steering(_subspace_results()),
                      "fig3": figures.malicious_panels(_malicious_results())}.items():
        rep.figure(name, fig)
    rep.claims(malicious_claims(_malicious_results()))
    with pytest.raises(ValueError, match="used twice"):
        rep.figure("auc", go.Figure())
    html = rep.write(tmp_path / "report.html").read_text()
    assert html.count("plotly-graph-div") == 4
    assert html.count("<script type='text/javascript'>") == 1 and 'src="https://cdn.plot.ly' not in html
    assert "0.9123" in html and "reproduced" in html and "<caption>Table 1</caption>" in html


def test_bootstrap_covers_a_known_mean_about_95_percent_of_the_time():
    rng = np.random.default_rng(7)
    hits = 0
    for trial in range(200):
        data = rng.normal(3.0, 2.0, size=40)
        iv = bootstrap(data, n_boot=400, seed=trial)
        assert iv.lo < iv.estimate < iv.hi and iv.estimate == pytest.approx(data.mean())
        hits += iv.lo <= 3.0 <= iv.hi
    assert 0.88 <= hits / 200 <= 0.99  # percentile intervals run a little narrow at n = 40
    # seeds resampled too: two seeds far apart widen the interval beyond the within-seed spread
    spread = bootstrap([[0.0, 0.1, 0.0, 0.1] * 5, [1.0, 0.9, 1.0, 0.9] * 5])
    assert spread.lo < 0.2 and spread.hi > 0.8
    assert bootstrap([[1, 0, 1, 1], [0, 1, 1, 1]]).ci == bootstrap([[1, 0, 1, 1], [0, 1, 1, 1]]).ci  # seeded
    assert math.isnan(bootstrap([None, float("nan")]).estimate)
    with pytest.raises(ValueError, match="level"):
        bootstrap([1.0], level=95)


def test_paired_difference_and_table1_intervals():
    d = paired_difference([1, 1, 1, 1, 0] * 8, [0, 1, 0, 1, 0] * 8)
    assert d.estimate == pytest.approx(0.4) and d.lo > 0
    with pytest.raises(ValueError, match="same shape"):
        paired_difference([1, 0], [1])
    recs = lambda acc: [{"seed": s, "question": f"q{i}", "correct": i < acc, "tokens": 10.0 * (1 + (acc > 5))}  # noqa
                        for s in (0, 1) for i in range(10)]
    acc, paired = table1_intervals({"IMAD": recs(9), "Debate": recs(5), "Single": recs(5)})
    assert acc["IMAD"].estimate == pytest.approx(0.9)
    assert paired["IMAD−Debate"].estimate == pytest.approx(0.4) and paired["IMAD−Debate"].lo > 0
    assert paired["Debate−Single"].ci == [0.0, 0.0]
    assert paired["IMAD/Debate tokens"].estimate == pytest.approx(2.0)


def test_pareto_frontier_on_a_hand_made_table():
    pts = [{"method": "add", "strength": -1.0, "trait_reduction": 10.0, "capability_drop": 0.00},
           {"method": "add", "strength": -2.0, "trait_reduction": 30.0, "capability_drop": 0.20},
           {"method": "cap", "strength": 90.0, "trait_reduction": 25.0, "capability_drop": 0.02},
           {"method": "cap", "strength": 50.0, "trait_reduction": 20.0, "capability_drop": 0.05},  # dominated by 90
           {"method": "random", "strength": -2.0, "trait_reduction": 2.0, "capability_drop": 0.30},  # dominated
           {"method": "prompting", "strength": 0.0, "trait_reduction": float("nan"), "capability_drop": 0.0}]
    f = pareto_frontier(pts, budget=0.05)
    assert f.frontier == [0, 2, 1]
    assert f.best_point["method"] == "cap" and f.best_point["strength"] == 90.0
    assert pareto_frontier(pts, budget=0.5).best_point["strength"] == -2.0
    assert pareto_frontier(pts[1:2], budget=0.1).best is None
    assert f.to_dict()["best_method"] == "cap"
    fig = lens.plots.pareto_plot(f)
    assert {t.name for t in fig.data} >= {"add", "cap", "random", "Pareto frontier", "best: cap 90"}
    hover = {t.name: list(t.text) for t in lens.plots.pareto_plot(f, strength_unit={"add": "α", "cap": "pct"}).data
             if t.text is not None}
    assert hover["add"] == ["add -1 α", "add -2 α"] and hover["cap"] == ["cap 90 pct", "cap 50 pct"]
    assert hover["random"] == ["random -2"]  # a method the mapping does not name gets no unit
    assert list(lens.plots.pareto_plot(f, strength_unit="α").data[1].text) == ["cap 90 α", "cap 50 α"]
    with pytest.raises(lens.LensInputError, match="lacks"):
        pareto_frontier([{"method": "x", "strength": 1.0}])


def test_steerability_marker_counts_on_hand_written_texts():
    texts = {"analyst": "Order: products first, then left to right.\n1. 3*4=12\n2. 2+12=14\n\\boxed{14}",
             "critic": "3*4=12, 2+12=14. \\boxed{14}\nSELF-CRITIQUE: I may have rushed, but each step checks out.",
             "programmer": "x=3*4 // 12\nz=2+12 // 14\n\\boxed{14}",
             "none": "The answer is 14."}
    for persona in ("analyst", "critic", "programmer"):
        counts = marker_counts(list(texts.values()), persona)
        assert counts == [float(k == persona) for k in texts], persona


def test_no_claim_is_ever_not_testable():
    variants = [_malicious_results(), _malicious_results(imad_evil=(0.0, 0.0, 0.0, 0.0, 20.0)),
                _malicious_results(imad_evil=(0.0,) * 5, base_evil=(0.0,) * 5), None]
    claims = [c for v in variants for c in malicious_claims(v)] + subspace_claims(None) + \
        subspace_claims(_subspace_results()) + token_efficiency_claims(None)
    assert claims and all(c.verdict in ("reproduced", "not reproduced", "not run") for c in claims)
    assert all("ci" in iv for c in claims for iv in c.intervals.values()) and all(c.intervals for c in claims)
    assert not any("testable" in json.dumps(c.to_dict()) for c in claims)


def test_halving_search_brackets_where_a_tiny_models_capability_halves(tiny_model_dirs):
    model = lens.load_model(tiny_model_dirs["llama"], device="cpu")
    prompts = [f"Problem: {a}+{b}*2\n\n" for a in range(3) for b in range(4)]
    plain = lens.generate(model, prompts, max_new_tokens=3).tokens

    def agreement(m) -> float:  # share of prompts whose greedy continuation is unchanged by the steering
        return sum(o == p for o, p in zip(lens.generate(m, prompts, max_new_tokens=3).tokens, plain)) / len(prompts)

    direction = torch.randn(model.cfg.d_model, generator=torch.Generator().manual_seed(0))
    add = lens.Add(direction / direction.norm(), 1.0, layers=1, positions="generated")
    search = halving_strength(model, add, agreement, sign=-1.0, start=0.5, max_steps=8, refine=2)
    assert search.capability0 == 1.0 and search.reached and search.strength < 0
    by_strength = dict(search.tried)
    assert by_strength[search.strength] <= 0.5  # halved at the strength it reports ...
    kept = [a for a, c in search.tried if c > 0.5]
    assert all(abs(a) < abs(search.strength) for a in kept)  # ... and kept more than half closer to 0
    grid = strength_grid(search.strength, -search.strength, 5)
    assert len(grid) == 11 and grid[0] == search.strength and 0.0 in grid
    zero = halving_strength(model, add, lambda m: 0.0, start=0.5, max_steps=3)
    assert not zero.reached and zero.strength == 2.0 and zero.tried == []  # nothing to halve: no search
    with pytest.raises(lens.LensInputError, match="sign"):
        halving_strength(model, add, agreement, sign=2.0)
