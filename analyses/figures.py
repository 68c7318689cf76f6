"""Study figures that `lens.plots` has no equivalent for: ROUGE AUC bars (paper Fig. 2 right, Fig. 10),
capability under agent steering (Fig. 11) and the malicious-agent panels (Fig. 3). Each takes saved results.
"""

from __future__ import annotations

import plotly.graph_objects as go
from plotly.subplots import make_subplots

MODEL_COLORS = {"base": "#7f7f7f", "imad": "#d62728"}
STAGE2_COLORS = {"IMAD": "#d62728", "Single + RL": "#1f77b4"}
METRIC_NAMES = {"rouge1": "ROUGE-1", "rouge2": "ROUGE-2", "rougeL": "ROUGE-L"}


def stage2_curves(curves: dict[str, list[dict]]) -> go.Figure:
    """Held-out accuracy against mean output tokens after each GRPO phase (the start model first, then one point
    per trained budget), one line per stage-2 run: IMAD (from SFT) and Single + RL (from the base).

    Args:
        curves: ``{run name: [{"budget": tokens or None for the start model, "accuracy", "mean_tokens"}, ...]}``
            (`analyses.study_report.stage2_points`).

    Returns:
        The plotly figure.

    Example:
        >>> stage2_curves({"IMAD": [{"budget": None, "accuracy": 0.6, "mean_tokens": 450.0},
        ...                         {"budget": 245, "accuracy": 0.7, "mean_tokens": 120.0}]})  # doctest: +SKIP
    """
    fig = go.Figure()
    for name, points in curves.items():
        fig.add_trace(go.Scatter(
            x=[p["mean_tokens"] for p in points], y=[100 * p["accuracy"] for p in points], mode="lines+markers+text",
            name=name, text=["start" if p["budget"] is None else f"budget {p['budget']}" for p in points],
            textposition="top center", line={"color": STAGE2_COLORS.get(name)}))
    fig.update_layout(title="Accuracy vs tokens over the stage-2 budgets (held-out, greedy)",
                      xaxis_title="mean output tokens per question", yaxis_title="accuracy (%)",
                      template="plotly_white")
    return fig


def rouge_curves(results: dict) -> go.Figure:
    """ROUGE-1/2/L vs α per agent, base (grey) vs IMAD (red): paper Fig. 9.

    Args:
        results: The agent_subspaces results (``auc``, ``personas``, ``alphas``, ``rouge``, ``alpha_unit``), or a
            block with per-agent ``grids`` in place of ``alphas`` and a ``title``.

    Returns:
        The plotly figure: one row per agent, one column per metric, a base and an IMAD curve in each.

    Example:
        >>> fig = rouge_curves(load_results("runs/toy", "agent_subspaces"))  # doctest: +SKIP
        >>> len(fig.data)  # doctest: +SKIP
        18
    """
    agents = list(results["auc"])
    metrics = list(METRIC_NAMES)
    grids = results.get("grids") or {a: results["alphas"] for a in agents}
    fig = make_subplots(rows=len(agents), cols=len(metrics), shared_xaxes="grids" not in results,
                        subplot_titles=[f"agent {a} ({results['personas'][a]}) {METRIC_NAMES[m]}"
                                        for a in agents for m in metrics])
    for i, a in enumerate(agents, 1):
        for j, m in enumerate(metrics, 1):
            for model, color in MODEL_COLORS.items():
                fig.add_trace(go.Scatter(x=grids[a], y=results["rouge"][model][a][m], mode="lines+markers",
                                         name=model, legendgroup=model, showlegend=i == j == 1,
                                         line={"color": color}), row=i, col=j)
    fig.update_xaxes(title_text=results["alpha_unit"], row=len(agents))
    fig.update_layout(title=results.get("title", "ROUGE of steered output vs the agent's own response"),
                      height=260 * len(agents),
                      width=1100)
    return fig


def rouge_auc_bars(results: dict) -> go.Figure:
    """Area under each ROUGE-vs-α curve per agent and metric, base vs IMAD, with the % difference on top.

    Args:
        results: The agent_subspaces results (``auc``: per agent and metric, ``base``, ``imad`` and ``pct``;
            optionally a ``title`` naming the grid).

    Returns:
        The plotly figure: grouped bars, base and IMAD, one group per agent and metric.

    Example:
        >>> from analyses.figures import rouge_auc_bars
        >>> fig = rouge_auc_bars({"auc": {"1": {"rougeL": {"base": 1.0, "imad": 1.2, "pct": 20.0}}}})
        >>> [t.name for t in fig.data], fig.data[1].text
        (['base', 'imad'], ('+20.0%',))
    """
    fig = go.Figure()
    labels = [f"agent {a} {METRIC_NAMES[m]}" for a, ms in results["auc"].items() for m in ms]
    for model, color in MODEL_COLORS.items():
        ys = [v[model] for ms in results["auc"].values() for v in ms.values()]
        texts = [f"{v['pct']:+.1f}%" if model == "imad" and v["pct"] is not None else ""
                 for ms in results["auc"].values() for v in ms.values()]
        fig.add_trace(go.Bar(x=labels, y=ys, name=model, marker_color=color, text=texts, textposition="outside"))
    fig.update_layout(barmode="group", title=results.get("title", "ROUGE AUC over α (trapezoid), base vs IMAD"),
                      yaxis_title="AUC")
    return fig


def capability_under_steering(results: dict) -> go.Figure:
    """Arithmetic accuracy while steering with each agent's vector, base and IMAD: paper Fig. 11.

    Args:
        results: The agent_subspaces results (``capability`` and ``capability_grid`` per model and agent; the axis
            title from ``steering_unit``, else ``alpha_unit``).

    Returns:
        The plotly figure: accuracy (%) against α, one line per model and agent.

    Example:
        >>> from analyses.figures import capability_under_steering
        >>> fig = capability_under_steering({"capability": {"base": {"1": [0.8, 0.4]}, "imad": {"1": [0.9, 0.7]}},
        ...                                  "capability_grid": {"base": {"1": [0.0, 0.2]}, "imad": {"1": [0.0, 0.3]}},
        ...                                  "alpha_unit": "α (unit vector)"})
        >>> [t.name for t in fig.data]
        ['base agent 1', 'imad agent 1']
    """
    fig = go.Figure()
    dashes = ["solid", "dash", "dot", "dashdot"]
    for model, color in MODEL_COLORS.items():
        for k, (agent, curve) in enumerate(results["capability"][model].items()):
            fig.add_trace(go.Scatter(x=results["capability_grid"][model][agent], y=[100 * c for c in curve],
                                     mode="lines+markers", name=f"{model} agent {agent}",
                                     line={"color": color, "dash": dashes[k % 4]}))
    fig.update_layout(title="Arithmetic accuracy under agent steering (each model and agent on its own grid)",
                      xaxis_title=results.get("steering_unit", results["alpha_unit"]),
                      yaxis_title="accuracy (%)")
    return fig


CONTROL_STYLE = {"random_imad": ("random direction (IMAD)", "#ff7f0e"), "prompting_base": ("prompting (base)", "#7f7f7f"),
                 "prompting_imad": ("prompting (IMAD)", "#d62728"), "ablation_imad": ("ablation (IMAD)", "#2ca02c")}


def capping_choice(capping: dict, capability0: float, budget: float) -> dict | None:
    """The capping point (of its percentiles) with the lowest trait whose accuracy drop from the unsteered IMAD
    (``capability0``) stays within ``budget``, else the one with the smallest drop; ``None`` without points.

    Args:
        capping: The ``capping_imad`` control (``points`` with ``strength``, ``trait`` and ``capability``).
        capability0: Unsteered IMAD's accuracy (0–1).
        budget: The allowed accuracy drop (0–1).

    Returns:
        The chosen point, or None when no point has both a trait and a capability.

    Example:
        >>> from analyses.figures import capping_choice
        >>> capping = {"points": [{"strength": 50.0, "trait": 30.0, "capability": 0.8},
        ...                       {"strength": 90.0, "trait": 10.0, "capability": 0.6}]}
        >>> capping_choice(capping, 0.8, 0.05)["strength"], capping_choice(capping, 0.8, 0.3)["strength"]
        (50.0, 90.0)
    """
    pts = [p for p in capping.get("points", []) if p.get("trait") is not None and p.get("capability") is not None]
    fit = [p for p in pts if capability0 - p["capability"] <= budget]
    if fit:
        return min(fit, key=lambda p: (p["trait"], p["strength"]))
    return min(pts, key=lambda p: capability0 - p["capability"]) if pts else None


def _controls(fig: go.Figure, controls: dict, row: int, col: int, key: str, capping: dict | None = None) -> None:
    """The random-direction curve (dashed) and the one-point controls (prompting, ablation, the chosen capping
    percentile) as dotted levels."""
    styles = dict(CONTROL_STYLE)
    if capping is not None:
        controls = {**controls, "capping_imad": capping}
        styles["capping_imad"] = (f"capping (IMAD, p{capping['strength']:g})", "#9467bd")
    for name, (label, color) in styles.items():
        c = controls.get(name)
        if c is None or key not in c or c[key] is None:
            continue
        scale = 100 if key == "capability" else 1
        if "alphas" in c:
            fig.add_trace(go.Scatter(x=c["alphas"], y=[None if y is None else scale * y for y in c[key]],
                                     mode="lines+markers", name=label, legendgroup=name, showlegend=row == col == 1,
                                     line={"color": color, "dash": "dash"}), row=row, col=col)
        else:
            fig.add_hline(y=scale * c[key], line={"color": color, "dash": "dot"}, row=row, col=col,
                          annotation_text=label if col == 1 else None)


def malicious_panels(results: dict) -> go.Figure:
    """Trait score, capability and perplexity vs α for each trait, base vs IMAD: paper Fig. 3, with the
    random-direction curve and the prompting, ablation and capping levels (capping at the percentile
    `capping_choice` picks within the accuracy budget; every percentile is on the Pareto figure).

    Args:
        results: The malicious results (per trait ``base``, ``imad`` and ``controls``; ``alpha_unit``; the budget
            from ``config.capacity_budget``, else 0.05).

    Returns:
        The plotly figure: one row per trait; trait score, accuracy (%) and perplexity (log axis) against α.

    Example:
        >>> fig = malicious_panels(load_results("runs/toy", "malicious"))  # doctest: +SKIP
        >>> fig.write_html("fig3.html")  # doctest: +SKIP
    """
    traits = list(results["traits"])
    cols = [("trait", "trait score"), ("capability", "accuracy %"), ("perplexity", "perplexity (log)")]
    fig = make_subplots(rows=len(traits), cols=3, subplot_titles=[f"{t} · {c[1]}" for t in traits for c in cols])
    for i, trait in enumerate(traits, 1):
        controls = results["traits"][trait].get("controls", {})
        imad = results["traits"][trait]["imad"]
        capping = capping_choice(controls["capping_imad"], imad["capability"][imad["alphas"].index(0.0)],
                                 results.get("config", {}).get("capacity_budget", 0.05)) \
            if "capping_imad" in controls else None
        for j, (key, _) in enumerate(cols, 1):
            for model, color in MODEL_COLORS.items():
                block = results["traits"][trait][model]
                ys = [100 * y for y in block[key]] if key == "capability" else block[key]
                err = block.get(f"{key}_se")
                fig.add_trace(go.Scatter(
                    x=block["alphas"], y=ys, mode="lines+markers", name=model, legendgroup=model,
                    showlegend=i == j == 1, line={"color": color},
                    error_y={"type": "data", "array": err, "visible": True} if err else None), row=i, col=j)
            _controls(fig, controls, i, j, key, capping)
    fig.update_xaxes(title_text=results["alpha_unit"])
    fig.update_yaxes(type="log", col=3)
    fig.update_layout(title="Steering against the malicious agent: base vs IMAD", height=330 * len(traits),
                      width=1000)
    return fig
