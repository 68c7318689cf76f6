"""Evaluation: Table 1 (accuracy ± SE over seeds and mean tokens per question for Single, Debate, DebateGPT, SFT
and IMAD), and `evaluate_model`, the greedy held-out check of one fine-tuned model that stages 1 and 2 log.

Three kinds of method: ``single`` (one chat call, neutral persona), ``debate`` (the model debating with itself
through the real runner) and ``direct`` (a fine-tuned model continuing ``Problem: {q}\\n\\n``; its answer is the
last ``\\boxed{}``). Tokens are input + output of every call a method makes, counted with one tokenizer. Each
seed re-samples the held-out questions and the generations.
"""

from __future__ import annotations

import csv
import io
import json
import math
import random
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import plotly.graph_objects as go
from tqdm.auto import tqdm

from lens.debate_format import (ROUND_TAGS, DebateFormatError, END_TAG, extract_boxed, normalize_answer,
                                parse_trace, prompt_text)
from lens.io import atomic_write_json, atomic_write_text
from lens.plots import save_figure
from lens.rating import mean_se
from training.backends import Backend, HFBackend
from training.modelio import Placement
from training.prompts import ARITHMETIC
from training.rewards import AnswerCheck, RewardSpec, TagVocab, consensus_answer_text, debate_shape
from training.runner import DEFAULT_PERSONAS, run_debates, single_answers
from training.schema import AT_LEAST_ONE, NON_EMPTY, NON_NEGATIVE, bounds

KINDS = ("single", "debate", "direct")


@dataclass(frozen=True)
class EvalConfig:
    """Preset section ``[eval]``: held-out sample size, seeds, decoding, and the Debate baseline's agents.
    ``benchmarks``: Table 1 per benchmark as the paper reports it, ``{gsm8k = "<file or empty>", mmlu_pro = ...,
    bbh = ...}`` (an empty value: the local HF cache; a path: a local file in that benchmark's format, relative to
    the preset file); none: the toy's held-out arithmetic, with a transfer column: accuracy on ``n_transfer``
    problems per seed of a shape never trained on (`training.tasks.transfer_split`)."""

    n_questions: int = field(default=1000, metadata=AT_LEAST_ONE)
    seeds: tuple[int, ...] = field(default=(0, 1, 2), metadata=bounds(ge=0, nonempty=True))
    temperature: float = field(default=0.7, metadata=NON_NEGATIVE)
    top_p: float = field(default=0.9, metadata=bounds(gt=0, le=1))
    max_new_tokens: int = field(default=1024, metadata=AT_LEAST_ONE)  # per chat call (Single, each Debate turn)
    direct_max_new_tokens: int = field(default=1024, metadata=AT_LEAST_ONE)  # SFT / IMAD / DebateGPT continuations
    batch_size: int = field(default=8, metadata=AT_LEAST_ONE)
    personas: tuple[str, ...] = field(default=DEFAULT_PERSONAS, metadata=NON_EMPTY)  # Debate baseline agents
    n_rounds: int = field(default=2, metadata=AT_LEAST_ONE)
    single_persona: str = "neutral"
    domain: str = ARITHMETIC
    benchmarks: dict = field(default_factory=dict)
    n_transfer: int = field(default=50, metadata=NON_NEGATIVE)  # transfer column per seed (toy only); 0: none

    def __post_init__(self) -> None:
        object.__setattr__(self, "seeds", tuple(self.seeds))
        object.__setattr__(self, "personas", tuple(self.personas))
        if not self.seeds:
            raise ValueError("[eval] seeds is empty; give at least one seed (three for a standard error)")
        if self.n_questions < 1:
            raise ValueError(f"[eval] n_questions must be at least 1, got {self.n_questions}")


@dataclass(frozen=True)
class MethodSpec:
    """A Table 1 row: its kind and the model dir it runs (or a ready backend, e.g. the teacher or an endpoint)."""

    kind: str
    model_dir: str | None = None
    backend: Backend | None = None

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"unknown method kind {self.kind!r}; valid: {list(KINDS)}")
        if (self.model_dir is None) == (self.backend is None):
            raise ValueError("a MethodSpec needs either model_dir or backend, not both or neither")
        if self.kind == "direct" and self.backend is not None and not hasattr(self.backend, "complete"):
            raise ValueError("a 'direct' method needs a backend with complete() (an HFBackend)")


@dataclass
class Table1:
    """Rows ``{method, accuracy, accuracy_se, tokens, tokens_se, n_questions, per_seed, ...diagnostics}``
    (accuracy in 0–1), with ``transfer`` / ``transfer_se`` (accuracy on the transfer problems) when the table has
    a transfer column, plus every scored sample per method (``transfer_samples``: those of the transfer column)."""

    rows: list[dict]
    samples: dict[str, list[dict]] = field(default_factory=dict)
    config: dict = field(default_factory=dict)
    transfer_samples: dict[str, list[dict]] = field(default_factory=dict)

    def row(self, method: str) -> dict:
        """The row of ``method``.

        Args:
            method: The row's name (``Single``, ``IMAD``, ...).

        Returns:
            The row's dict.

        Raises:
            KeyError: no row has that name (the message lists the methods).

        Example:
            >>> from training.evaluate import Table1
            >>> Table1([{"method": "Single", "accuracy": 0.5}]).row("Single")["accuracy"]
            0.5
        """
        for r in self.rows:
            if r["method"] == method:
                return r
        raise KeyError(f"no method {method!r} in Table 1; methods: {[r['method'] for r in self.rows]}")

    def save(self, out_dir: str | Path, *, static_images: bool = True) -> Path:
        """``table1.json`` / ``.csv`` / ``.md``, ``samples/<method>.jsonl`` (``samples/transfer/<method>.jsonl`` for
        the transfer column) and the accuracy-vs-tokens figure
        (HTML; PNG + PDF too via `lens.plots.save_figure` unless ``static_images`` is False).

        Args:
            out_dir: The dir to write into (created when missing).
            static_images: Also write the figure as PNG and PDF.

        Returns:
            ``out_dir`` as a `Path`.

        Example:
            >>> table.save("runs/toy/eval")  # doctest: +SKIP
            PosixPath('runs/toy/eval')
        """
        out = Path(out_dir)
        atomic_write_json(out / "table1.json", {"rows": self.rows, "config": self.config})
        atomic_write_text(out / "table1.csv", to_csv(self))
        atomic_write_text(out / "table1.md", to_markdown(self))
        for method, samples in self.samples.items():
            lines = "".join(_json_line(s) for s in samples)
            atomic_write_text(out / "samples" / f"{_slug(method)}.jsonl", lines)
        for method, samples in self.transfer_samples.items():
            lines = "".join(_json_line(s) for s in samples)
            atomic_write_text(out / "samples" / "transfer" / f"{_slug(method)}.jsonl", lines)
        save_figure(accuracy_vs_tokens(self), out / "accuracy_vs_tokens", static=static_images)
        return out

    @classmethod
    def load(cls, path: str | Path) -> "Table1":
        """A table saved by `save` (``path`` is the dir or its ``table1.json``; samples are not reloaded).

        Args:
            path: The dir a table was saved in, or its ``table1.json``.

        Returns:
            The `Table1`: ``rows`` and ``config``, no samples.

        Example:
            >>> Table1.load("runs/toy/eval").row("IMAD")["tokens"]  # doctest: +SKIP
            48.3
        """
        p = Path(path)
        p = p / "table1.json" if p.is_dir() else p
        d = json.loads(p.read_text())
        return cls(rows=d["rows"], config=d.get("config", {}))


def _json_line(obj: dict) -> str:
    return json.dumps(obj) + "\n"


def _slug(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name)


def is_correct(pred: str | None, question: object) -> bool:
    """Exact match of a predicted answer with the question's gold (a question may bring its own ``matches``).

    Args:
        pred: The predicted answer (``None``: no answer, never correct).
        question: A question object: its ``matches(pred)`` decides when it has one, else its ``answer``.

    Returns:
        True when ``pred`` equals the normalised gold answer; False without a gold answer.

    Example:
        >>> from training.evaluate import is_correct
        >>> from training.tasks import ArithmeticProblem
        >>> is_correct("-19", ArithmeticProblem.from_operands((1, 2, 3, 4, 5, 6)))
        True
    """
    if hasattr(question, "matches"):
        return bool(question.matches(pred))
    gold = getattr(question, "answer", None)
    return pred is not None and gold is not None and pred == normalize_answer(str(gold))


def well_formed(text: str, question: str) -> bool:
    """Whether ``text`` is a whole tagged debate: every tag in order, closed by ``<|endofdebate|>``.

    Args:
        text: A completion (debate tags kept in the text).
        question: The question it answers (names the trace in errors).

    Returns:
        True when ``text`` parses as a debate trace and ends with ``<|endofdebate|>``.

    Example:
        >>> from lens.debate_format import Transcript, Turn, render_trace
        >>> from training.evaluate import well_formed
        >>> trace = render_trace(Transcript("1+1", [Turn(1, 1, "\\\\boxed{2}")], "All agents agree: \\\\boxed{2}"))
        >>> well_formed(trace, "1+1"), well_formed(trace.removesuffix("<|endofdebate|>"), "1+1")
        (True, False)
    """
    body = text.strip()
    if not body.endswith(END_TAG):
        return False
    try:
        parse_trace(body, question=question)
    except DebateFormatError:
        return False
    return True


def sample_questions(questions: Sequence[object] | Callable[[int], Sequence[object]], n: int,
                     seed: int) -> list[object]:
    """The held-out questions of one seed: ``questions(seed)`` if callable, else ``n`` drawn from the pool.

    Args:
        questions: The pool, or a function ``seed -> questions``.
        n: How many to draw from a pool (all of a smaller one).
        seed: The seed (passed to the function, or of the draw).

    Returns:
        ``min(n, pool size)`` questions, drawn without replacement (the pool returned by the function too).

    Raises:
        ValueError: the question set is empty.

    Example:
        >>> from training.evaluate import sample_questions
        >>> sample_questions(["q1", "q2", "q3", "q4"], 2, seed=0)
        ['q4', 'q2']
    """
    pool = list(questions(seed) if callable(questions) else questions)
    if not pool:
        raise ValueError("the evaluation question set is empty")
    return random.Random(seed).sample(pool, min(n, len(pool)))


def _score(method: str, spec: MethodSpec, backend, qs: list[object], seed: int, cfg: EvalConfig) -> list[dict]:
    """Per-question records: prediction, correctness, tokens and diagnostics."""
    if spec.kind == "single":
        answers = single_answers(qs, backend, cfg.single_persona, domain=cfg.domain, seed=seed)
        return [{"question": a.question, "gold": a.gold, "pred": a.answer, "correct": is_correct(a.answer, q),
                 "tokens": a.input_tokens + a.output_tokens, "output_tokens": a.output_tokens, "text": a.text}
                for a, q in zip(answers, qs)]
    if spec.kind == "debate":
        records = run_debates(qs, backend, personas=cfg.personas, n_rounds=cfg.n_rounds, domain=cfg.domain,
                              seed=seed, id_prefix=f"eval-{_slug(method)}")
        return [{"question": r.transcript.question, "gold": r.transcript.gold,
                 "pred": r.transcript.consensus_answer, "correct": is_correct(r.transcript.consensus_answer, q),
                 "tokens": r.total_tokens, "output_tokens": r.output_tokens, "has_majority": r.has_majority,
                 "round2": r.transcript.n_rounds == 2, "transcript": r.transcript.to_dict()}
                for r, q in zip(records, qs)]
    texts = [getattr(q, "question", q) for q in qs]
    completions = backend.complete([prompt_text(t) for t in texts], cfg.direct_max_new_tokens, seed=seed)
    out = []
    for c, q, t in zip(completions, qs, texts):
        pred = extract_boxed(c.text)
        out.append({"question": t, "gold": getattr(q, "answer", None), "pred": pred, "correct": is_correct(pred, q),
                    "tokens": c.input_tokens + c.output_tokens, "output_tokens": c.output_tokens,
                    "well_formed": well_formed(c.text, t), "round2": ROUND_TAGS[1] in c.text, "text": c.text})
    return out


def _mean(xs: Sequence[float]) -> float:
    return mean_se(xs)[0]


def _se(xs: Sequence[float]) -> float | None:
    """Standard error of the mean over seeds; ``None`` with fewer than two seeds."""
    return mean_se(xs)[1] if len(xs) > 1 else None


def _share(records: list[dict], key: str) -> float | None:
    vals = [r[key] for r in records if key in r]
    return sum(map(bool, vals)) / len(vals) if vals else None


def _row(method: str, spec: MethodSpec, per_seed: list[tuple[int, list[dict]]]) -> dict:
    seeds = []
    for seed, recs in per_seed:
        seeds.append({"seed": seed, "n": len(recs), "accuracy": _mean([r["correct"] for r in recs]),
                      "tokens": _mean([r["tokens"] for r in recs])})
    every = [r for _, recs in per_seed for r in recs]
    acc, tok = [s["accuracy"] for s in seeds], [s["tokens"] for s in seeds]
    return {"method": method, "kind": spec.kind, "model": spec.model_dir, "accuracy": _mean(acc),
            "accuracy_se": _se(acc), "tokens": _mean(tok), "tokens_se": _se(tok),
            "n_questions": seeds[0]["n"], "n_seeds": len(seeds), "per_seed": seeds,
            "mean_output_tokens": _mean([r["output_tokens"] for r in every]),
            "well_formed": _share(every, "well_formed"), "round2_share": _share(every, "round2"),
            "majority_share": _share(every, "has_majority")}


def _transfer_row(per_seed: list[tuple[int, list[dict]]]) -> dict:
    acc = [_mean([r["correct"] for r in recs]) for _, recs in per_seed]
    return {"transfer": _mean(acc), "transfer_se": _se(acc), "transfer_n_questions": len(per_seed[0][1])}


def _backend(spec: MethodSpec, cfg: EvalConfig, cache: dict[str, HFBackend], placement: Placement):
    if spec.backend is not None:
        return spec.backend
    if spec.model_dir not in cache:
        cache[spec.model_dir] = HFBackend(spec.model_dir, max_new_tokens=cfg.max_new_tokens,
                                          temperature=cfg.temperature, top_p=cfg.top_p, batch_size=cfg.batch_size,
                                          **placement.load())
    return cache[spec.model_dir]


def evaluate_methods(methods: dict[str, MethodSpec], questions: Sequence[object] | Callable[[int], Sequence[object]],
                     seeds: Sequence[int] | None = None, cfg: EvalConfig | None = None,
                     placement: Placement = Placement(), transfer: Sequence[object] = ()) -> Table1:
    """Score every method on the same held-out questions for each seed (``cfg.seeds`` when ``seeds`` is None).

    ``questions`` is a pool to sample ``cfg.n_questions`` from per seed, or a function ``seed -> questions``.
    ``transfer``: a pool of problems of a shape never trained on; each seed samples ``cfg.n_transfer`` of them
    for the transfer column (none when empty). Each model dir is loaded once (as ``placement`` says) and shared
    by the methods that name it.

    Args:
        methods: Row name → `MethodSpec`, in Table 1's order.
        questions: The held-out pool, or a function ``seed -> questions``.
        seeds: The seeds (``None``: ``cfg.seeds``).
        cfg: The ``[eval]`` section (``None``: its defaults).
        placement: Where and in which dtype model dirs are loaded.
        transfer: The transfer column's pool (empty: no column).

    Returns:
        The `Table1`: one row per method, every scored sample, and the config with the seeds used.

    Raises:
        ValueError: no methods, no seeds, or an empty question set.

    Example:
        >>> methods = {"Single": MethodSpec("single", "runs/toy/base")}  # doctest: +SKIP
        >>> evaluate_methods(methods, pool, seeds=[0]).row("Single")["accuracy"]  # doctest: +SKIP
        0.62
    """
    cfg = cfg or EvalConfig()
    seeds = tuple(cfg.seeds if seeds is None else seeds)
    if not methods:
        raise ValueError("no methods to evaluate; pass e.g. {'Single': MethodSpec('single', 'runs/toy/base')}")
    if not seeds:
        raise ValueError("no seeds to evaluate; pass at least one (three for a standard error)")
    cache: dict[str, HFBackend] = {}
    rows, samples, transferred = [], {}, {}
    splits = {"held-out": (questions, cfg.n_questions), **({"transfer": (transfer, cfg.n_transfer)}
                                                           if transfer and cfg.n_transfer else {})}
    bar = tqdm(total=len(methods) * len(seeds) * len(splits), desc="Table 1")
    for method, spec in methods.items():
        backend = _backend(spec, cfg, cache, placement)
        per_split = {}
        for split, (pool, n) in splits.items():
            per_seed = per_split.setdefault(split, [])
            for seed in seeds:
                bar.set_postfix_str(f"{method} {split} seed {seed}")
                recs = _score(method, spec, backend, sample_questions(pool, n, seed), seed, cfg)
                per_seed.append((seed, recs))
                (samples if split == "held-out" else transferred).setdefault(method, []).extend(
                    {"seed": seed, **r} for r in recs)
                bar.update()
        rows.append({**_row(method, spec, per_split["held-out"]),
                     **(_transfer_row(per_split["transfer"]) if "transfer" in per_split else {})})
    bar.close()
    return Table1(rows, samples, {**asdict(cfg), "seeds": list(seeds)}, transferred)


def to_csv(table: Table1) -> str:
    """Table 1 as CSV: one line per method with the headline and diagnostic columns (empty where a row has none).

    Args:
        table: The table.

    Returns:
        The CSV text, header first.

    Example:
        >>> from training.evaluate import Table1, to_csv
        >>> table = Table1([{"method": "Single", "kind": "single", "accuracy": 0.5, "tokens": 120.0}])
        >>> to_csv(table).splitlines()[1]
        'Single,single,0.5,,120.0,,,,,,,,,'
    """
    cols = ["method", "kind", "accuracy", "accuracy_se", "tokens", "tokens_se", "n_questions", "n_seeds",
            "mean_output_tokens", "well_formed", "round2_share", "majority_share", "transfer", "transfer_se"]
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=cols, extrasaction="ignore", lineterminator="\n")
    w.writeheader()
    w.writerows(table.rows)
    return buf.getvalue()


def _pm(value: float, se: float | None, scale: float = 1.0, digits: int = 2) -> str:
    s = f"{value * scale:.{digits}f}"
    return s if se is None else f"{s} ± {se * scale:.{digits}f}"


def to_markdown(table: Table1) -> str:
    """Table 1 as markdown: accuracy (%) ± SE, tokens per question ± SE, the well-formed and round-2 shares, and a
    transfer column when any row has one.

    Args:
        table: The table.

    Returns:
        The markdown text.

    Example:
        >>> from training.evaluate import Table1, to_markdown
        >>> row = {"method": "IMAD", "accuracy": 0.9, "accuracy_se": 0.01, "tokens": 48.0, "tokens_se": 1.5}
        >>> print(to_markdown(Table1([row])))
        | Method | Accuracy (%) | Tokens / question | Well-formed | Round 2 |
        |---|---|---|---|---|
        | IMAD | 90.00 ± 1.00 | 48.0 ± 1.5 | – | – |
        <BLANKLINE>
    """
    has = any("transfer" in r for r in table.rows)
    lines = ["| Method | Accuracy (%) | Tokens / question | Well-formed | Round 2 |" + (" Transfer (%) |" * has),
             "|---|---|---|---|---|" + "---|" * has]
    for r in table.rows:
        opt = ["–" if r.get(k) is None else f"{100 * r[k]:.0f}%" for k in ("well_formed", "round2_share")]
        lines.append(f"| {r['method']} | {_pm(r['accuracy'], r['accuracy_se'], 100)} | "
                     f"{_pm(r['tokens'], r['tokens_se'], 1, 1)} | {opt[0]} | {opt[1]} |" +
                     (f" {_pm(r['transfer'], r.get('transfer_se'), 100)} |" if "transfer" in r else
                      " – |" * has))
    return "\n".join(lines) + "\n"


def accuracy_vs_tokens(table: Table1) -> go.Figure:
    """Accuracy (%) against mean tokens per question (log x), one point per method with SE bars.

    Args:
        table: The table (rows with ``accuracy``, ``accuracy_se``, ``tokens`` and ``tokens_se``).

    Returns:
        The plotly figure, one trace per method.

    Example:
        >>> from training.evaluate import Table1, accuracy_vs_tokens
        >>> row = {"method": "IMAD", "accuracy": 0.9, "accuracy_se": 0.01, "tokens": 48.0, "tokens_se": 1.5}
        >>> [trace.name for trace in accuracy_vs_tokens(Table1([row])).data]
        ['IMAD']
    """
    fig = go.Figure()
    for r in table.rows:
        fig.add_trace(go.Scatter(
            x=[r["tokens"]], y=[100 * r["accuracy"]], mode="markers+text", name=r["method"], text=[r["method"]],
            textposition="top center",
            error_y=dict(type="data", array=[100 * (r["accuracy_se"] or 0.0)], visible=r["accuracy_se"] is not None),
            error_x=dict(type="data", array=[r["tokens_se"] or 0.0], visible=r["tokens_se"] is not None)))
    fig.update_layout(title="Accuracy vs tokens per question", xaxis_title="tokens per question (input + output)",
                      yaxis_title="accuracy (%)", xaxis_type="log", template="plotly_white", showlegend=False)
    return fig


# ------------------------------------------------------------- held-out evaluation of one fine-tuned model

Prompt = str | list[dict]  # a plain-text prompt ("Problem: q", continued) or chat messages (the Single prompt)


@dataclass(frozen=True)
class EvalItem:
    """A held-out question, how to check a completion's answer (`gold_match` or `judge_benign`), and the prompt
    the model sees (``None``: ``Problem: {question}``, continued; chat messages: a chat reply, as Single)."""

    question: str
    check: AnswerCheck
    prompt: Prompt | None = None


def _generate(backend: HFBackend, prompts: Sequence[Prompt], seed: int = 0) -> list:
    """Completions of plain-text prompts (`HFBackend.complete`) or of chat conversations (`HFBackend.chat`)."""
    chats = [isinstance(p, list) for p in prompts]
    if any(chats) and not all(chats):
        raise ValueError("prompts mix plain text and chat messages; give one kind per call")
    return backend.chat(list(prompts), seed=seed) if any(chats) else backend.complete(list(prompts), seed=seed)


def sample_lengths(model, tokenizer, prompts: Sequence[Prompt], *, max_new_tokens: int, batch_size: int = 32,
                   seed: int = 0) -> list[int]:
    """Completion lengths (stop token included) of T=1 samples, the distribution the budgets are cut from;
    ``prompts`` are plain text (continued) or chat messages (replied to).

    Args:
        model: The causal LM.
        tokenizer: Its tokenizer.
        prompts: Plain-text prompts or chat conversations (one kind per call).
        max_new_tokens: The sampling cap.
        batch_size: Prompts per ``generate`` batch.
        seed: The torch seed set before sampling.

    Returns:
        One completion length per prompt, in order.

    Raises:
        ValueError: ``prompts`` mix plain text and chat messages.

    Example:
        >>> lengths = sample_lengths(model, tok, [prompt_text(q) for q in qs], max_new_tokens=2048)  # doctest: +SKIP
        >>> quantile(lengths, 0.95)  # doctest: +SKIP
        412
    """
    backend = HFBackend(model=model, tokenizer=tokenizer, max_new_tokens=max_new_tokens, temperature=1.0,
                        top_p=1.0, batch_size=batch_size)
    return [c.output_tokens for c in _generate(backend, prompts, seed)]


def quantile(values: Sequence[float], q: float) -> float:
    """The ``q`` quantile by the nearest-rank rule (no interpolation).

    Args:
        values: The values (at least one).
        q: The quantile, in [0, 1].

    Returns:
        The smallest value with at least a ``q`` share of ``values`` at or below it.

    Example:
        >>> from training.evaluate import quantile
        >>> quantile(range(1, 11), 0.95), quantile(range(1, 11), 0.5)
        (10, 5)
    """
    xs = sorted(values)
    return xs[min(len(xs) - 1, max(0, math.ceil(q * len(xs)) - 1))]


def evaluate_model(model, tokenizer, items: Sequence[EvalItem], *, max_new_tokens: int, batch_size: int = 32,
                   needs_boxed: bool = True) -> dict:
    """Greedy held-out evaluation: accuracy (consensus answer, else the last one), output tokens, well-formed
    share, and how many agents speak in each round. Each item's ``prompt`` (default ``Problem: q``) is what the
    model sees; a model without debate tags (Single + RL) is scored on its last answer.

    Args:
        model: The causal LM.
        tokenizer: Its tokenizer (one without debate tags reads as untagged).
        items: The held-out `EvalItem`s.
        max_new_tokens: The greedy generation cap.
        batch_size: Prompts per ``generate`` batch.
        needs_boxed: Whether a turn needs a ``\\boxed{}`` answer to count (arithmetic).

    Returns:
        ``{"n", "accuracy", "mean_tokens", "p95_tokens", "well_formed", "round2", "round1_agents", "samples"}``:
        shares of the items, except the token counts, the share per number of round-1 agents (``"0"`` to ``"3"``)
        and the first two completions.

    Example:
        >>> evaluate_model(model, tok, items, max_new_tokens=1024)["accuracy"]  # doctest: +SKIP
        0.87
    """
    vocab = TagVocab(tokenizer, require=False)
    spec = RewardSpec(budget=10 ** 9, coeff=1.0, turn_needs_boxed=needs_boxed)
    backend = HFBackend(model=model, tokenizer=tokenizer, max_new_tokens=max_new_tokens, temperature=0.0,
                        batch_size=batch_size)
    done = _generate(backend, [prompt_text(it.question) if it.prompt is None else it.prompt for it in items])
    correct, lengths, well, r1_agents, round2, texts = [], [], [], [], [], []
    for it, c in zip(items, done):
        segments = vocab.segments(c.ids)
        shape = debate_shape(segments, spec)
        full = "".join((s.tag or "") + s.text for s in segments)
        correct.append(bool(it.check(consensus_answer_text(segments), full)))
        lengths.append(c.output_tokens)
        well.append(shape.well_formed)
        r1_agents.append(shape.agents[0] if shape.agents else 0)
        round2.append(len(shape.agents) > 1)
        texts.append(c.text)
    n = len(items)
    return {"n": n, "accuracy": sum(correct) / n, "mean_tokens": sum(lengths) / n,
            "p95_tokens": quantile(lengths, 0.95), "well_formed": sum(well) / n, "round2": sum(round2) / n,
            "round1_agents": {str(k): r1_agents.count(k) / n for k in range(4)}, "samples": texts[:2]}
