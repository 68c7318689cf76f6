"""Analyses building blocks on hand-made inputs: ROUGE and AUC, claim verdicts, the HTML report."""

from __future__ import annotations

import math

import plotly.graph_objects as go
import pytest

from analyses import figures
from analyses.claims import malicious_claims, subspace_claims, token_efficiency_claims
from analyses.metrics import auc, mean_rouge, pct_change, rouge
from analyses.report import Report
from lens.rating import mean_se

ALPHAS = [0.0, 2.5, 5.0]


def test_rouge_identical_and_disjoint():
    assert rouge("step 1: add the numbers", "step 1: add the numbers") == {"rouge1": 1.0, "rouge2": 1.0, "rougeL": 1.0}
    assert rouge("apples", "oranges")["rouge1"] == 0.0
    with pytest.raises(ValueError, match="as many predictions as references"):
        mean_rouge(["a"], [])


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
    auc_block = {a: {m: {"base": 1.0, "imad": 1.0 + imad_gain, "pct": 100 * imad_gain}
                     for m in ("rouge1", "rouge2", "rougeL")} for a in ("1", "2", "3")}
    auc_block["3"]["rouge2"] = {"base": 0.0, "imad": 0.0, "pct": None}  # no bigram ever matched: no % change
    curve = {a: {m: [0.3, 0.2, 0.1] for m in ("rouge1", "rouge2", "rougeL")} for a in ("1", "2", "3")}
    return {"alphas": ALPHAS, "capability_alphas": ALPHAS, "alpha_unit": "α (× raw mean difference)",
            "personas": {"1": "analyst", "2": "critic", "3": "programmer"},
            "auc": auc_block, "rouge": {"base": curve, "imad": curve},
            "capability": {"base": {a: [0.5, 0.4, 0.1] for a in "123"}, "imad": {a: [0.9, 0.8, 0.7] for a in "123"}}}


def _malicious_results(imad_evil=(0.0, 0.0, 0.0, 10.0, 40.0), base_evil=(2.0, 3.0, 5.0, 8.0, 9.0)):
    alphas = [-5.0, -3.0, -1.0, 0.0, 5.0]
    def block(trait, cap):
        return {"alphas": alphas, "trait": list(trait), "trait_se": [1.0] * 5, "capability": list(cap),
                "perplexity": [2.0, 2.1, 2.0, 1.9, 3.0]}
    return {"alpha_unit": "α (unit vector)", "traits": {
        "evil": {"imad": block(imad_evil, [0.9] * 5), "base": block(base_evil, [0.1, 0.5, 0.6, 0.6, 0.2])},
        "hallucination": {"imad": block([20, 30, 50, 65, 80], [0.9] * 5),
                          "base": block([30, 40, 55, 65, 70], [0.6] * 5)},
    }}


def test_claims_from_result_dicts():
    tokens = token_efficiency_claims({"Debate": {"accuracy": 0.8, "tokens": 1000.0},
                                      "IMAD": {"accuracy": 0.85, "tokens": 80.0},
                                      "SFT": {"accuracy": 0.8, "tokens": 400.0}})
    assert [c.reproduced for c in tokens] == [True, True, True]
    assert "8.0%" in tokens[0].measured
    assert token_efficiency_claims(None)[0].verdict == "not run"
    zero = token_efficiency_claims({"Debate": {"accuracy": 0.0, "tokens": 9.0},
                                    "IMAD": {"accuracy": 0.0, "tokens": 1.0}})
    assert zero[1].reproduced is None  # 0% vs 0%: nothing to compare
    sub = subspace_claims(_subspace_results())
    assert sub[0].reproduced and "mean +10.0%" in sub[0].measured
    assert sub[1].reproduced  # every agent's steering lowers IMAD accuracy
    assert subspace_claims(_subspace_results(-0.1))[0].reproduced is False
    mal = {c.id: c for c in malicious_claims(_malicious_results())}
    assert mal["evil_suppressed"].reproduced and mal["hallucination_partial"].reproduced
    assert mal["capability_stable"].reproduced
    mal = {c.id: c for c in malicious_claims(_malicious_results(imad_evil=(5.0, 1.0, 0.0, 10.0, 40.0)))}
    assert mal["evil_suppressed"].reproduced is False
    # nothing to suppress unsteered, or no arithmetic to keep: the claim cannot be decided, and says why
    mal = {c.id: c for c in malicious_claims(_malicious_results(imad_evil=(0.0, 0.0, 0.0, 0.0, 20.0)))}
    evil = mal["evil_suppressed"]
    assert evil.verdict == "not testable here" and "nothing to suppress" in evil.measured
    unskilled = _malicious_results()
    for block in unskilled["traits"].values():
        block["imad"]["capability"] = [0.02] * 5
    cap = {c.id: c for c in malicious_claims(unskilled)}["capability_stable"]
    assert cap.verdict == "not testable here" and "IMAD 2.0% unsteered" in cap.measured
    collapse = _malicious_results()
    for block in collapse["traits"].values():  # both lose all accuracy away from α = 0: neither is more stable
        block["imad"]["capability"] = block["base"]["capability"] = [0.0, 0.0, 0.0, 0.5, 0.0]
    assert {c.id: c for c in malicious_claims(collapse)}["capability_stable"].reproduced is False
    assert "Unsteered (α = 0) ROUGE-L: agent 1: base 0.30 vs IMAD 0.30" in sub[0].measured


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
