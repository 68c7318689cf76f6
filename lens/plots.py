"""Figures from lens results: each function takes results and returns a `plotly.graph_objects.Figure`.

They never train or load a model. `save_figure` writes HTML always, and PNG + PDF when kaleido finds Chromium.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
import plotly.graph_objects as go
from plotly.offline import get_plotlyjs

from lens.geometry import CosineSimilarities, PrincipalAngles
from lens.io import atomic_write_bytes, atomic_write_text
from lens.monitor import TokenProjections, TurnDetection
from lens.probes import PCAProjection, ProbeResult
from lens.rating import ParetoFrontier, SuppressionReport

log = logging.getLogger(__name__)
PALETTE = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#e377c2", "#7f7f7f")


def _rgba(hex_color: str, alpha: float) -> str:
    r, g, b = (int(hex_color[i:i + 2], 16) for i in (1, 3, 5))
    return f"rgba({r},{g},{b},{alpha})"


def _band(fig: go.Figure, x, mean, se, name: str, color: str, **line) -> None:
    """A line with a ±SE band (the band is one filled trace, hidden from the legend)."""
    x, mean, se = np.asarray(x, float), np.asarray(mean, float), np.nan_to_num(np.asarray(se, float))
    fig.add_trace(go.Scatter(x=np.concatenate([x, x[::-1]]), y=np.concatenate([mean + se, (mean - se)[::-1]]),
                             fill="toself", fillcolor=_rgba(color, 0.2), line=dict(width=0), hoverinfo="skip",
                             showlegend=False, name=f"{name} ± SE", legendgroup=name))
    fig.add_trace(go.Scatter(x=x, y=mean, mode="lines+markers", name=name, legendgroup=name,
                             line=dict(color=color, **line)))


def probe_accuracy_by_layer(results: ProbeResult | Mapping[str, ProbeResult], title: str | None = None) -> go.Figure:
    """Cross-validated probe accuracy vs layer (± SE), one series per model, with the chance level."""
    results = {"model": results} if isinstance(results, ProbeResult) else dict(results)
    fig = go.Figure()
    for (name, r), color in zip(results.items(), PALETTE):
        _band(fig, r.layers, r.accuracy, r.accuracy_se, name, color)
    chance = max(r.chance for r in results.values())
    fig.add_hline(y=chance, line_dash="dot", annotation_text="chance")
    label = next(iter(results.values())).label
    fig.update_layout(title=title or f"{label} probe accuracy by layer", xaxis_title="layer (resid_post)",
                      yaxis_title="cross-validated accuracy", yaxis_range=[0, 1.02], template="plotly_white")
    return fig


def pca_scatter(projection: PCAProjection, color_by: str = "agent", symbol_by: str | None = "round",
                title: str | None = None) -> go.Figure:
    """Turns in the first two PCA components, one trace per ``color_by`` value (agent by default)."""
    coords = projection.coords.numpy()
    colors, symbols = projection.column(color_by), projection.column(symbol_by) if symbol_by else None
    fig = go.Figure()
    for value, color in zip(sorted(set(colors), key=str), PALETTE * 4):
        idx = [i for i, c in enumerate(colors) if c == value]
        fig.add_trace(go.Scatter(
            x=coords[idx, 0], y=coords[idx, 1], mode="markers", name=f"{color_by} {value}",
            marker=dict(color=color, size=8, symbol=[("circle", "diamond", "square")[(symbols[i] or 1) % 3 - 1]
                                                     for i in idx] if symbols else "circle"),
            text=[f"{projection.labels[i].get('question_id')} r{projection.labels[i].get('round')}" for i in idx]))
    ev = projection.explained_variance_ratio
    fig.update_layout(title=title or f"turn activations, {projection.hook_name} ({projection.center}-centred)",
                      xaxis_title=f"PC1 ({ev[0]:.0%})", yaxis_title=f"PC2 ({ev[1]:.0%})" if len(ev) > 1 else "PC2",
                      template="plotly_white")
    return fig


def steering_curves(series: Mapping[str, tuple[Sequence[float], Sequence[float], Sequence[float]]], *,
                    metric: str = "score", title: str | None = None) -> go.Figure:
    """Score vs α with SE bands; ``series`` maps a name (e.g. "base", "IMAD") to (alphas, mean, se)."""
    fig = go.Figure()
    for (name, (alphas, mean, se)), color in zip(series.items(), PALETTE):
        _band(fig, alphas, mean, se, name, color)
    fig.update_layout(title=title or f"{metric} vs steering strength", xaxis_title="α", yaxis_title=metric,
                      template="plotly_white")
    return fig


def suppression_tradeoff(reports: SuppressionReport | Mapping[str, SuppressionReport],
                         title: str | None = None) -> go.Figure:
    """Trait score vs capability across α, one path per model (e.g. base vs IMAD), points annotated with α and
    the best α within the capability budget ringed."""
    reports = {"model": reports} if isinstance(reports, SuppressionReport) else dict(reports)
    fig = go.Figure()
    for (name, r), color in zip(reports.items(), PALETTE):
        fig.add_trace(go.Scatter(
            x=r.capability, y=r.trait_mean, mode="lines+markers+text", name=name, line=dict(color=color),
            error_y=dict(type="data", array=np.nan_to_num(r.trait_se), visible=True),
            text=[f"α={a:g}" for a in r.alphas], textposition="top center"))
        i = r.alphas.index(r.best_alpha)
        fig.add_trace(go.Scatter(x=[r.capability[i]], y=[r.trait_mean[i]], mode="markers", showlegend=False,
                                 name=f"{name} best α", marker=dict(size=18, color="rgba(0,0,0,0)",
                                                                    line=dict(color=color, width=2))))
    fig.update_layout(title=title or "trait suppression vs capability", xaxis_title="capability (accuracy)",
                      yaxis_title="trait score (0-100)", template="plotly_white")
    return fig


def pareto_plot(frontier: ParetoFrontier, *, title: str | None = None,
                strength_unit: str | Mapping[str, str] = "") -> go.Figure:
    """Trait reduction vs capability drop for every method and strength, the Pareto frontier as a line, the
    capability budget as a dashed line and the best point within it ringed.

    Args:
        frontier: A `lens.rating.ParetoFrontier`.
        title: Figure title.
        strength_unit: Appended to the hover text of each point's strength (e.g. the α unit); a mapping gives each
            method its own unit (methods it does not name get none), e.g. α for vectors and percentiles for capping.

    Returns:
        A plotly Figure.

    Example:
        >>> fig = lens.plots.pareto_plot(lens.rating.pareto_frontier(points, budget=0.1))  # doctest: +SKIP
    """
    fig = go.Figure()
    finite = lambda p: all(isinstance(p[k], (int, float)) and np.isfinite(p[k])  # noqa: E731
                           for k in ("trait_reduction", "capability_drop"))
    methods = list(dict.fromkeys(p["method"] for p in frontier.points))
    units = strength_unit if isinstance(strength_unit, Mapping) else dict.fromkeys(methods, strength_unit)
    for method, color in zip(methods, PALETTE * (1 + len(methods) // len(PALETTE))):
        pts = [p for p in frontier.points if p["method"] == method and finite(p)]
        unit = units.get(method, "")
        fig.add_trace(go.Scatter(
            x=[100 * p["capability_drop"] for p in pts], y=[p["trait_reduction"] for p in pts], mode="markers",
            name=method, marker=dict(color=color, size=9),
            text=[f"{method} {p['strength']:g}{(' ' + unit) if unit else ''}" for p in pts],
            hoverinfo="text+x+y"))
    front = [frontier.points[i] for i in frontier.frontier]
    fig.add_trace(go.Scatter(x=[100 * p["capability_drop"] for p in front], y=[p["trait_reduction"] for p in front],
                             mode="lines", name="Pareto frontier", line=dict(color="black", dash="dot")))
    fig.add_vline(x=100 * frontier.budget, line=dict(color="grey", dash="dash"),
                  annotation_text=f"budget {100 * frontier.budget:g} pts")
    if frontier.best_point is not None:
        b = frontier.best_point
        fig.add_trace(go.Scatter(x=[100 * b["capability_drop"]], y=[b["trait_reduction"]], mode="markers",
                                 name=f"best: {b['method']} {b['strength']:g}",
                                 marker=dict(size=20, color="rgba(0,0,0,0)", line=dict(color="black", width=2))))
    fig.update_layout(title=title or "trait reduction vs capability drop", template="plotly_white",
                      xaxis_title="capability drop (accuracy points)", yaxis_title="trait reduction (judge points)")
    return fig


def token_projection_heatmap(proj: TokenProjections, index: int = 0, *, title: str | None = None) -> go.Figure:
    """Which agent is speaking: text ``index``'s tokens (x) against each direction (y), coloured by projection,
    with a line where generated tokens start.

    Args:
        proj: From `lens.monitor.token_projections` or `lens.monitor.monitor_generation`.
        index: Which text.
        title: Figure title.

    Returns:
        A plotly heatmap.

    Example:
        >>> lens.plots.token_projection_heatmap(proj, 0).show()  # doctest: +SKIP
    """
    if not 0 <= index < len(proj.projections):
        raise ValueError(f"text index {index} is out of range: there are {len(proj.projections)} texts")
    z = proj.projections[index].T.numpy()
    x = [f"{p}:{t!r}" for p, t in enumerate(proj.tokens[index])]
    fig = go.Figure(go.Heatmap(z=z, x=x, y=proj.names, colorscale="RdBu", zmid=0,
                               colorbar=dict(title="projection")))
    start = proj.prompt_lens[index] if proj.prompt_lens else len(x)
    if start < len(x):
        fig.add_vline(x=start - 0.5, line_dash="dash", annotation_text="generated")
    fig.update_layout(title=title or "projection of each token onto each agent's direction",
                      xaxis_title="token", yaxis_title="direction", template="plotly_white")
    return fig


def detection_roc(detection: TurnDetection, *, title: str | None = None) -> go.Figure:
    """ROC curves of the projection detector and (if scored) the text judge on the same held-out turns.

    Args:
        detection: From `lens.monitor.detect_agent_turns`.
        title: Figure title.

    Returns:
        A plotly figure with one curve per scorer (AUROC in the legend) and the chance line.

    Example:
        >>> lens.plots.detection_roc(det).show()  # doctest: +SKIP
    """
    from sklearn.metrics import roc_curve

    fig = go.Figure()
    curves = [("projection", detection.scores, detection.auroc)]
    if detection.judge_scores is not None:
        curves.append(("text judge", detection.judge_scores, detection.judge_auroc))
    for (name, scores, auc), color in zip(curves, PALETTE):
        fpr, tpr, _ = roc_curve(detection.is_agent, scores)
        fig.add_trace(go.Scatter(x=fpr, y=tpr, mode="lines", name=f"{name} (AUROC {auc:.3f})",
                                 line=dict(color=color)))
    fig.add_trace(go.Scatter(x=[0, 1], y=[0, 1], mode="lines", name="chance", line=dict(dash="dot", color="grey")))
    fig.update_layout(title=title or f"detecting agent {detection.agent}'s turns ({detection.hook_name})",
                      xaxis_title="false positive rate", yaxis_title="true positive rate", template="plotly_white")
    return fig


def cosine_heatmap(sims: CosineSimilarities, *, title: str | None = None) -> go.Figure:
    """Cosine similarities between named directions (agents, layers, models), annotated.

    Args:
        sims: From `lens.geometry.cosine_similarities`.
        title: Figure title.

    Returns:
        A plotly heatmap on [-1, 1].

    Example:
        >>> lens.plots.cosine_heatmap(lens.geometry.cosine_similarities({"a1": s1, "a2": s2}))  # doctest: +SKIP
    """
    fig = go.Figure(go.Heatmap(z=sims.matrix, x=sims.names, y=sims.names, zmin=-1, zmax=1, colorscale="RdBu",
                               zmid=0, text=np.round(sims.matrix, 2), texttemplate="%{text}",
                               colorbar=dict(title="cosine")))
    fig.update_layout(title=title or "cosine similarity between directions", yaxis_autorange="reversed",
                      template="plotly_white")
    return fig


def principal_angle_bars(angles: PrincipalAngles | Sequence[PrincipalAngles], *,
                         title: str | None = None) -> go.Figure:
    """Principal angles (degrees) of each pair of subspaces, one group of bars per pair.

    Args:
        angles: One or several results of `lens.geometry.principal_angles`.
        title: Figure title.

    Returns:
        A grouped bar chart on [0°, 90°].

    Example:
        >>> lens.plots.principal_angle_bars(lens.geometry.principal_angles(base, imad))  # doctest: +SKIP
    """
    angles = [angles] if isinstance(angles, PrincipalAngles) else list(angles)
    fig = go.Figure()
    for i in range(max(len(a.angles_deg) for a in angles)):
        fig.add_trace(go.Bar(x=[f"{a.a} vs {a.b}" for a in angles],
                             y=[a.angles_deg[i] if i < len(a.angles_deg) else None for a in angles],
                             name=f"angle {i + 1}", marker_color=PALETTE[i % len(PALETTE)]))
    fig.update_layout(title=title or "principal angles between subspaces", yaxis_title="degrees",
                      yaxis_range=[0, 90], barmode="group", template="plotly_white")
    return fig


def save_figure(fig: go.Figure, path_stem: str | Path, *, static: bool = True) -> list[Path]:
    """Write ``stem.html`` (always, offline: it loads ``plotly.min.js`` written once beside it) and, with
    ``static``, ``stem.png`` + ``stem.pdf`` when export works; logs one line and skips them otherwise."""
    stem = Path(path_stem)
    bundle = stem.parent / "plotly.min.js"
    if not bundle.exists():
        atomic_write_text(bundle, get_plotlyjs())
    written = [atomic_write_text(stem.with_suffix(".html"), fig.to_html(include_plotlyjs="directory", full_html=True))]
    if not static:
        return written
    try:
        for suffix in (".png", ".pdf"):
            written.append(atomic_write_bytes(stem.with_suffix(suffix), fig.to_image(format=suffix[1:])))
    except Exception as e:  # kaleido raises several types when Chromium is missing or fails to start
        log.warning("static export skipped for %s (HTML written): %s", stem, str(e).splitlines()[0][:160])
    return written
