"""The paper's claims as checks over our results: each one says *reproduced* or *not reproduced*, with the
numbers and their 95% intervals.

The inputs are the plain result dicts the experiments save (``results.json``, with intervals from
`analyses.stats`), so the statements can be rebuilt from a finished run without recomputing anything. A claim
is *reproduced* only when its interval supports it (e.g. the lower end of a difference above 0); one whose data
cannot decide it (nothing to suppress unsteered, no capability to keep) is *not reproduced*, and says why. A
claim whose results are missing altogether is *not run*.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import asdict, dataclass, field

MIN_CAPABILITY = 0.1  # unsteered accuracy below which "capability stays stable" says nothing
NEAR_ZERO = 5.0       # judge points (0–100): "fully suppressed" means the interval's upper end is at most this
STRONG = 0.6          # "strong negative steering": α ≤ 0.6 × the most negative α of the grid (paper: [−5, −3])


@dataclass(frozen=True)
class Claim:
    """One paper claim: what the paper says, what we measured (with intervals), and whether it holds here."""

    id: str
    claim: str
    paper: str
    measured: str
    reproduced: bool | None
    intervals: dict[str, dict] = field(default_factory=dict)  # name -> {"estimate", "ci": [lo, hi]}

    @property
    def verdict(self) -> str:
        """The claim's verdict in words, from ``reproduced``.

        Returns:
            ``"reproduced"`` (True), ``"not reproduced"`` (False) or ``"not run"`` (None).

        Example:
            >>> from analyses.claims import Claim
            >>> Claim("tokens_vs_debate", "IMAD tokens ≤ 10% of Debate's", "6.3–21.1%", "Table 1 missing", None).verdict
            'not run'
        """
        return {True: "reproduced", False: "not reproduced", None: "not run"}[self.reproduced]

    def to_dict(self) -> dict:
        """The claim as a plain dict, as ``results.json`` stores it.

        Returns:
            Every field, plus ``verdict``.

        Example:
            >>> from analyses.claims import Claim
            >>> Claim("x", "a claim", "the paper's number", "ours", True).to_dict()["verdict"]
            'reproduced'
        """
        return {**asdict(self), "verdict": self.verdict}


def iv(estimate, ci) -> dict:
    """An interval entry of a claim: ``{"estimate", "ci": [lo, hi]}`` (None where unknown).

    Args:
        estimate: The point estimate (None or NaN: unknown).
        ci: ``[lo, hi]``, or None when there is no interval.

    Returns:
        ``{"estimate": float | None, "ci": [lo, hi]}``, NaN as None.

    Example:
        >>> from analyses.claims import iv
        >>> iv(0.5, [0.4, 0.6]), iv(float("nan"), None)
        ({'estimate': 0.5, 'ci': [0.4, 0.6]}, {'estimate': None, 'ci': [None, None]})
    """
    lo, hi = (ci or [None, None])
    return {"estimate": _none(estimate), "ci": [_none(lo), _none(hi)]}


def _none(x):
    return None if x is None or (isinstance(x, float) and math.isnan(x)) else float(x)


def _num(x) -> float:
    return math.nan if x is None else float(x)


def _pct(x) -> str:
    return "n/a" if x is None or math.isnan(x) else f"{x:+.1f}%"


def _fmt(x: float, digits: int = 2) -> str:
    return "n/a" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.{digits}f}"


def _fmt_iv(d: dict | None, scale: float = 1.0, digits: int = 1) -> str:
    """``est [lo, hi]`` of an interval entry."""
    if not d or d.get("estimate") is None:
        return "n/a"
    lo, hi = d["ci"]
    band = "" if lo is None else f" [{scale * lo:.{digits}f}, {scale * hi:.{digits}f}]"
    return f"{scale * d['estimate']:.{digits}f}{band}"


def _lo(d: dict | None) -> float:
    return _num((d or {}).get("ci", [None, None])[0])


def _hi(d: dict | None) -> float:
    return _num((d or {}).get("ci", [None, None])[1])


MISSING = {"table": iv(None, None)}


def token_efficiency_claims(methods: dict[str, dict] | None, paired: dict[str, dict] | None = None) -> list[Claim]:
    """Table 1 claims from ``{method: row}`` (``accuracy`` in [0, 1], ``tokens`` per question, ``ci``) and the
    paired intervals ``paired`` (`analyses.stats.table1_intervals`: ``"IMAD−Debate"`` accuracy difference,
    ``"IMAD/Debate tokens"`` ratio, ...).

    Args:
        methods: Table 1's rows by method name (matched case-insensitively), each with ``accuracy`` (0–1), ``tokens``
            per question, ``ci`` and ``method``; None when Table 1 is missing.
        paired: The paired interval entries by name (`analyses.stats.table1_intervals`, as dicts); None: none.

    Returns:
        ``tokens_vs_debate``, ``accuracy_vs_debate``, ``debate_vs_single``, ``imad_vs_single_rl`` and, with IMAD and
        SFT rows, ``tokens_vs_sft``.

    Example:
        >>> from analyses.claims import iv, token_efficiency_claims
        >>> rows = {"IMAD": {"method": "IMAD", "accuracy": 0.6, "tokens": 50.0, "ci": [0.5, 0.7]},
        ...         "Debate": {"method": "Debate", "accuracy": 0.5, "tokens": 900.0, "ci": [0.4, 0.6]}}
        >>> paired = {"IMAD/Debate tokens": iv(0.06, [0.05, 0.07]), "IMAD−Debate": iv(0.1, [0.02, 0.18])}
        >>> [c.verdict for c in token_efficiency_claims(rows, paired)]
        ['reproduced', 'reproduced', 'not run', 'not run']
    """
    m = {k.lower(): v for k, v in (methods or {}).items()}
    p = paired or {}
    have = "imad" in m and "debate" in m
    claims = []
    ratio = p.get("IMAD/Debate tokens")
    claims.append(Claim(
        "tokens_vs_debate", "IMAD tokens ≤ 10% of Debate's", "6.3–21.1% of Debate's tokens",
        f"IMAD {_fmt(m['imad']['tokens'], 1)} vs Debate {_fmt(m['debate']['tokens'], 1)} tokens per question; "
        f"ratio {_fmt_iv(ratio, 100)}% (reproduced when the interval's upper end is ≤ 10%)"
        if have else "Table 1 missing",
        (_hi(ratio) <= 0.10) if have and ratio else None, {"IMAD/Debate tokens": ratio} if ratio else MISSING))
    claims.append(_diff_claim("accuracy_vs_debate", "IMAD beats Debate on accuracy",
                              "LLaMA IMAD beats Debate on all 3 benchmarks", m, p, "IMAD", "Debate"))
    claims.append(_diff_claim("debate_vs_single", "Debate beats Single (a debate gain to internalize)",
                              "Debate above Single for LLaMA and Qwen on GSM8K", m, p, "Debate", "Single"))
    rl = next((k for k in m if "single" in k and "rl" in k), None)
    if rl is None:
        claims.append(Claim("imad_vs_single_rl", "IMAD's gain comes from the debate, not from RL alone",
                            "(the paper has no Single + RL control)", "Table 1 has no Single + RL row", None,
                            MISSING))
    else:
        name = m[rl]["method"]
        c = _diff_claim("imad_vs_single_rl", "IMAD's gain comes from the debate, not from RL alone",
                        "(the paper has no Single + RL control)", m, p, "IMAD", name)
        alone = p.get(f"{name}−Single")
        claims.append(dataclasses.replace(
            c, measured=f"{c.measured}; {name} − Single {_fmt_iv(alone, 100)} points. Where IMAD's gain over "
                        f"Single comes from: {gain_source(p, name)}",
            intervals={**c.intervals, **({f"{name}−Single": alone} if alone else {})}))
    cut = p.get("SFT−IMAD tokens")
    if "imad" in m and "sft" in m:
        claims.append(Claim("tokens_vs_sft", "IMAD uses fewer tokens than SFT", "35–66% fewer than SFT",
                            f"SFT − IMAD tokens per question {_fmt_iv(cut)} ({_fmt(m['imad']['tokens'], 1)} vs "
                            f"{_fmt(m['sft']['tokens'], 1)}); reproduced when the interval is above 0",
                            _lo(cut) > 0 if cut else None, {"SFT−IMAD tokens": cut} if cut else MISSING))
    return claims


def gain_source(paired: dict[str, dict], rl: str = "Single + RL") -> str:
    """Where IMAD's gain over Single comes from, by the paired 95% intervals: ``"from the debate"`` when IMAD is
    above the Single + RL control (the interval of IMAD − ``rl`` above 0); else ``"from reinforcement learning"``
    when RL alone beats Single (``rl`` − Single above 0); else ``"undecided"``.

    Args:
        paired: `analyses.stats.table1_intervals`' paired entries as dicts (``{"IMAD−Single + RL": {"ci": ...}}``).
        rl: The control row's method name.

    Returns:
        One of the three phrases.

    Example:
        >>> gain_source({"IMAD−Single + RL": {"estimate": 0.1, "ci": [0.05, 0.15]}})
        'from the debate'
    """
    if _lo(paired.get(f"IMAD−{rl}")) > 0:
        return "from the debate"
    if _lo(paired.get(f"{rl}−Single")) > 0:
        return "from reinforcement learning"
    return "undecided"


def _diff_claim(cid: str, text: str, paper: str, m: dict, p: dict, a: str, b: str) -> Claim:
    """A claim that method ``a`` is more accurate than ``b``: the paired difference's interval above 0."""
    ra, rb, d = m.get(a.lower()), m.get(b.lower()), p.get(f"{a}−{b}")
    if not ra or not rb:
        return Claim(cid, text, paper, f"Table 1 lacks {a} or {b}", None, MISSING)
    measured = (f"{a} {_fmt_iv(ra.get('ci') and iv(ra['accuracy'], ra['ci']), 100)}% vs {b} "
                f"{_fmt_iv(rb.get('ci') and iv(rb['accuracy'], rb['ci']), 100)}%; paired difference "
                f"{_fmt_iv(d, 100)} points (reproduced when the interval is above 0)")
    if max(ra["accuracy"], rb["accuracy"]) <= 0:
        return Claim(cid, text, paper, measured + " — both score 0%, so neither is better", False,
                     {f"{a}−{b}": d or iv(0.0, [0.0, 0.0])})
    return Claim(cid, text, paper, measured, _lo(d) > 0 if d else False,
                 {f"{a}−{b}": d or iv(ra["accuracy"] - rb["accuracy"], None)})


def subspace_claims(results: dict | None) -> list[Claim]:
    """Agent-subspace claims from the agent_subspaces results (``auc`` with paired ``diff`` intervals,
    ``capability_drop`` and ``steerability``).

    Args:
        results: The agent_subspaces ``results.json`` (`analyses.results.load_results`); None when missing.

    Returns:
        ``rouge_auc`` and ``steering_lowers_capability`` (*not run* without results), plus ``steerability`` when the
        results carry its gain differences.

    Example:
        >>> from analyses.claims import subspace_claims
        >>> [(c.id, c.verdict) for c in subspace_claims(None)]
        [('rouge_auc', 'not run'), ('steering_lowers_capability', 'not run')]
    """
    if not results:
        return [Claim("rouge_auc", "ROUGE AUC IMAD > base for all three agents", "+15.4% mean (6.1–25.0%)",
                      "agent-subspace results missing", None, MISSING),
                Claim("steering_lowers_capability", "steering IMAD with any one agent vector lowers accuracy",
                      "all agents lower GSM8K accuracy (Fig. 11)", "agent-subspace results missing", None, MISSING)]
    claims = [_rouge_claim(results)]
    drops = results.get("capability_drop", {})
    cap = results.get("capability", {}).get("imad", {})
    grid = lambda a: results.get("capability_grid", {}).get("imad", {}).get(a) or [0.0]  # noqa: E731
    unsteered = {a: c[grid(a).index(0.0)] for a, c in cap.items() if c and 0.0 in grid(a)}
    if drops:
        measured = "; ".join(f"agent {a}: α=0 {_fmt(100 * _num(unsteered.get(a)), 1)}%, largest drop "
                             f"{_fmt_iv(d, 100)} points" for a, d in drops.items())
        skilled = any(_num(u) >= MIN_CAPABILITY for u in unsteered.values())
        claims.append(Claim(
            "steering_lowers_capability", "steering IMAD with any one agent vector lowers accuracy",
            "all agents lower GSM8K accuracy (Fig. 11)",
            measured + ("" if skilled else f" — IMAD is below {100 * MIN_CAPABILITY:.0f}% unsteered, so there is "
                        "no accuracy to lower") + "; reproduced when every drop's interval is above 0",
            skilled and all(_lo(d) > 0 for d in drops.values()), {f"agent {a} drop": d for a, d in drops.items()}))
    else:
        claims.append(Claim("steering_lowers_capability", "steering IMAD with any one agent vector lowers accuracy",
                            "all agents lower GSM8K accuracy (Fig. 11)", "capability under steering missing", None,
                            MISSING))
    steer = results.get("steerability", {}).get("gain_difference")
    if steer:
        claims.append(Claim(
            "steerability", "IMAD's agents are more steerable than the base model's (the change steering causes)",
            "implied by the ROUGE AUC comparison (§3)",
            "persona-marker gain over α = 0 from a neutral slot, IMAD − base: " +
            "; ".join(f"agent {a}: {_fmt_iv(d, 100)} points" for a, d in steer.items()) +
            "; reproduced when every agent's interval is above 0",
            all(_lo(d) > 0 for d in steer.values()),
            {f"agent {a} IMAD−base marker gain": d for a, d in steer.items()}))
    return claims


def _auc_diffs(auc: dict) -> tuple[float, dict[str, dict]]:
    """The mean % AUC change over agents and metrics, and each agent and metric's interval of IMAD − base."""
    pcts = [x for metrics in auc.values() for v in metrics.values() if not math.isnan(x := _num(v["pct"]))]
    diffs = {f"agent {a} {k}": v.get("diff") or iv(_num(v["imad"]) - _num(v["base"]), None)
             for a, metrics in auc.items() for k, v in metrics.items()}
    return (sum(pcts) / len(pcts) if pcts else math.nan), diffs


def _auc_text(auc: dict) -> str:
    mean, diffs = _auc_diffs(auc)
    return f"mean {_pct(mean)}; AUC difference IMAD − base (ROUGE-L) " + "; ".join(
        f"{n}: {_fmt_iv(d, 1, 3)}" for n, d in diffs.items() if n.endswith("rougeL"))


def _auc_above_zero(auc: dict) -> tuple[bool, list[str]]:
    """Whether every scored AUC difference's interval is above 0 (a difference of exactly 0 with no interval is not
    scored), and the names of those that are not."""
    scored = {n: d for n, d in _auc_diffs(auc)[1].items() if d["estimate"] not in (None, 0.0) or _hi(d) > 0}
    below = [n for n, d in scored.items() if not _lo(d) > 0]
    return bool(scored) and not below, below


def _rouge_claim(results: dict) -> Claim:
    """ROUGE AUC IMAD > base for every agent: on the working range when the run searched its strengths (the paper's
    fixed grid reported beside it), else on the paper's grid."""
    text, paper = ("ROUGE AUC IMAD > base for all three agents",
                   "+15.4% mean (6.1–25.0%); base and IMAD identical at α = 0")
    rule = "reproduced when every scored difference's interval is above 0"
    start = "Unsteered (α = 0) ROUGE-L: " + ("; ".join(
        f"agent {a}: base {_fmt(_num(results['rouge']['base'][a]['rougeL'][0]), 2)} vs IMAD "
        f"{_fmt(_num(results['rouge']['imad'][a]['rougeL'][0]), 2)}" for a in results["auc"])
        if results["alphas"][0] == 0 else "n/a")
    working = results.get("rouge_working")
    if not working:
        return Claim("rouge_auc", text, paper, f"{_auc_text(results['auc'])}; {rule}. {start}",
                     _auc_above_zero(results["auc"])[0], _auc_diffs(results["auc"])[1])
    ok, _ = _auc_above_zero(working["auc"])
    _, paper_below = _auc_above_zero(results["auc"])
    spans = ", ".join(f"agent {a} 0–{_fmt(max(g), 2)}" for a, g in working["grids"].items())
    past = paper_points_past_working_range(results)
    return Claim(
        "rouge_auc", text, paper,
        f"over each agent's working range ({working['unit']}: {spans}, up to where the first model's accuracy halves "
        f"on the α-selection split; one grid for both models): {_auc_text(working['auc'])}; {rule}. {start}. On the "
        f"paper's fixed grid ({results.get('alpha_unit', 'α')} {_fmt(min(results['alphas']), 2)}–"
        f"{_fmt(max(results['alphas']), 2)}" + (f"; of its {len(results['alphas'])} points, " + ", ".join(
            f"{n} (agent {a})" for a, n in past.items()) + " lie past the working range" if past else "")
        + f"): {_auc_text(results['auc'])}; "
        + (f"not above 0 there: {', '.join(paper_below)}" if paper_below else "every interval above 0 there"),
        ok and set(working["auc"]) == set(results["auc"]), _auc_diffs(working["auc"])[1])


def paper_points_past_working_range(results: dict) -> dict[str, int]:
    """Per agent, how many α of the paper's ROUGE grid lie past its working range, both in the mean-residual-norm
    unit (a raw-difference α times the raw difference's norm, a unit-vector α as is, over the mean residual norm).

    Args:
        results: The agent_subspaces results with ``rouge_working``, ``alphas``, ``config`` and ``vectors``.

    Returns:
        Agent → the count; empty when the vectors' norms are not recorded.

    Example:
        >>> from analyses.claims import paper_points_past_working_range
        >>> paper_points_past_working_range({"alphas": [0.0, 0.5, 1.0], "config": {"normalize": False},
        ...     "rouge_working": {"grids": {"1": [0.0, 0.2, 0.4]}},
        ...     "vectors": {"1": {"stats": {"raw_diff_norm": 100.0, "resid_norm": 100.0}}}})
        {'1': 2}
    """
    normalize, out = results.get("config", {}).get("normalize", False), {}
    for a, grid in results["rouge_working"]["grids"].items():
        stats = results.get("vectors", {}).get(a, {}).get("stats", {})
        norm = 1.0 if normalize else stats.get("raw_diff_norm")
        if not norm or not stats.get("resid_norm"):
            return {}
        out[a] = sum(abs(x) * norm / stats["resid_norm"] > max(grid) for x in results["alphas"])
    return out


def _curve(block: dict, key: str) -> dict[float, float]:
    return {float(a): _num(v) for a, v in zip(block["alphas"], block[key])}


def _at(block: dict, key: str, alpha: float) -> dict:
    """The interval entry of ``block[key]`` at ``alpha`` (from ``key_ci``; no interval when absent)."""
    i = [float(a) for a in block["alphas"]].index(float(alpha))
    cis = block.get(f"{key}_ci")
    return iv(block[key][i], cis[i] if cis else None)


def malicious_claims(results: dict | None) -> list[Claim]:
    """Malicious-agent claims from the malicious results (per trait: ``base`` and ``imad`` curves over α with
    ``trait_ci`` / ``capability_ci``).

    Args:
        results: The malicious ``results.json`` (`analyses.results.load_results`); None when missing.

    Returns:
        ``evil_suppressed``, ``hallucination_partial`` (only with hallucination results) and ``capability_stable``.

    Example:
        >>> from analyses.claims import malicious_claims
        >>> [(c.id, c.verdict) for c in malicious_claims(None)]
        [('evil_suppressed', 'not run'), ('capability_stable', 'not run')]
    """
    traits = (results or {}).get("traits", {})
    claims = []
    evil = traits.get("evil")
    text, paper = ("evil fully suppressed by IMAD under strong negative steering, base still > 0",
                   "IMAD score 0 for α ∈ [−5, −3]; base 1.01 at α = −5")
    if evil:
        imad, base = evil["imad"], evil["base"]
        a_min = min(imad["alphas"])
        strong = [a for a in imad["alphas"] if a < 0 and a <= STRONG * a_min]
        worst = max(strong, key=lambda a: _hi(_at(imad, "trait", a))) if strong else a_min
        i0, iw, b0, bl = (_at(imad, "trait", 0.0), _at(imad, "trait", worst), _at(base, "trait", 0.0),
                          _at(base, "trait", min(base["alphas"])))
        measured = (f"unsteered (α = 0): IMAD {_fmt_iv(i0)}, base {_fmt_iv(b0)}; IMAD's worst over the strong "
                    f"negative α ≤ {STRONG * a_min:.3g} (at α = {worst:.3g}): {_fmt_iv(iw)}; base at α = "
                    f"{min(base['alphas']):.3g}: {_fmt_iv(bl)}. Reproduced when IMAD's unsteered interval is above "
                    f"0, its upper end under strong steering ≤ {NEAR_ZERO:g}, and base's interval stays above 0")
        if not _lo(i0) > 0:
            measured += " — IMAD shows no evil unsteered, so there is nothing to suppress"
        ok = _lo(i0) > 0 and bool(strong) and all(_hi(_at(imad, "trait", a)) <= NEAR_ZERO for a in strong) \
            and _lo(bl) > 0
        claims.append(Claim("evil_suppressed", text, paper, measured, ok,
                            {"IMAD α=0": i0, f"IMAD α={worst:.3g}": iw, "base α=0": b0,
                             f"base α={min(base['alphas']):.3g}": bl}))
    else:
        claims.append(Claim("evil_suppressed", text, paper, "evil results missing", None, MISSING))
    hallu = traits.get("hallucination")
    if hallu:
        imad, base = hallu["imad"], hallu["base"]
        lo_a = min(imad["alphas"])
        i0, il = _at(imad, "trait", 0.0), _at(imad, "trait", lo_a)
        b0, bl = _at(base, "trait", 0.0), _at(base, "trait", min(base["alphas"]))
        measured = (f"IMAD {_fmt_iv(i0)} at α=0 → {_fmt_iv(il)} at α={lo_a:.3g}; base {_fmt_iv(b0)} → "
                    f"{_fmt_iv(bl)}. Reproduced when IMAD's interval at the most negative α lies below its unsteered "
                    "interval and above 0")
        if not _lo(i0) > 0:
            measured += " — IMAD does not hallucinate unsteered, so there is nothing to reduce"
        claims.append(Claim(
            "hallucination_partial", "hallucination is reduced by negative steering but not fully suppressed",
            "baseline ≈65 for both; decreases roughly linearly, never reaches 0", measured,
            _lo(i0) > 0 and _hi(il) < _lo(i0) and _lo(il) > 0,
            {"IMAD α=0": i0, f"IMAD α={lo_a:.3g}": il, "base α=0": b0, f"base α={min(base['alphas']):.3g}": bl}))
    claims.append(_capability_claim(traits))
    return claims


def _worst_relative(block: dict, lo: float, hi: float) -> dict:
    """The lowest accuracy over α in [lo, hi] relative to α = 0, with its interval (the unsteered accuracy taken
    as exact)."""
    c0 = _curve(block, "capability").get(0.0, math.nan)
    inside = [a for a in block["alphas"] if lo <= a <= hi and a != 0.0]
    if not inside or not c0 > 0:
        return iv(math.nan, None)
    a = min(inside, key=lambda x: _num(_at(block, "capability", x)["estimate"]))
    d = _at(block, "capability", a)
    return {**iv(_num(d["estimate"]) / c0, [_lo(d) / c0, _hi(d) / c0]), "alpha": a}


def _capability_claim(traits: dict) -> Claim:
    """IMAD keeps more of its accuracy than base over the strengths both grids span."""
    text, paper = ("IMAD capability more stable under steering than base",
                   "IMAD GSM8K accuracy flat over α ∈ [−5, 5]; base collapses at extreme |α|")
    if not traits:
        return Claim("capability_stable", text, paper, "malicious results missing", None, MISSING)
    parts, intervals, verdicts = [], {}, []
    for name, block in traits.items():
        imad, base = block["imad"], block["base"]
        lo = max(min(imad["alphas"]), min(base["alphas"]))
        hi = min(max(imad["alphas"]), max(base["alphas"]))
        ri, rb = _worst_relative(imad, lo, hi), _worst_relative(base, lo, hi)
        imad0 = _curve(imad, "capability").get(0.0, math.nan)
        intervals[f"{name} IMAD worst/unsteered"], intervals[f"{name} base worst/unsteered"] = ri, rb
        part = (f"{name}: worst accuracy over α ∈ [{lo:.3g}, {hi:.3g}] / unsteered: IMAD {_fmt_iv(ri, 1, 2)} vs "
                f"base {_fmt_iv(rb, 1, 2)}")
        if not imad0 >= MIN_CAPABILITY:
            part += (f" — IMAD {_fmt(100 * imad0, 1)}% unsteered: below {100 * MIN_CAPABILITY:.0f}% there is no "
                     "capability to keep")
            verdicts.append(None)
        else:
            verdicts.append(1 if _lo(ri) > _hi(rb) else -1 if _hi(ri) < _lo(rb) else 0)
        parts.append(part)
    return Claim("capability_stable", text, paper,
                 "; ".join(parts) + ". Reproduced when IMAD's interval lies above base's for some trait and below "
                 "it for none", None not in verdicts and 1 in verdicts and -1 not in verdicts, intervals)
