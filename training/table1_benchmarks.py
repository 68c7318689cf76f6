"""Table 1 per benchmark, as the paper reports it (PAPER.md §5): GSM8K, MMLU-Pro and BBH's five tasks, each method's
accuracy ± SE over seeds and mean tokens, one column per benchmark.

The questions come from the offline loaders in `training.benchmarks_data` (local HF cache or a local file per
benchmark, ``[eval] benchmarks``). Each seed samples ``n_questions`` from the whole benchmark, which must be
larger than the sample so that seeds see different questions (the paper: 1000 per seed, seeds 2025, 2026, 2027).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Mapping

from lens.io import atomic_write_json, atomic_write_text
from training.benchmarks_data import BenchmarkQuestion, load_benchmark
from training.evaluate import EvalConfig, MethodSpec, Table1, evaluate_methods
from training.modelio import Placement
from training.prompts import ARITHMETIC, QUESTION

BENCHMARK_DOMAINS = {"gsm8k": ARITHMETIC, "mmlu_pro": QUESTION, "bbh": QUESTION}
TITLES = {"gsm8k": "GSM8K", "mmlu_pro": "MMLU-Pro", "bbh": "BBH"}


def check_pool(pool_size: int, n_questions: int, n_seeds: int, what: str) -> None:
    """Refuse a pool no larger than the per-seed sample when several seeds should see different questions.

    Args:
        pool_size: The number of questions the pool holds.
        n_questions: The per-seed sample (``[eval] n_questions``).
        n_seeds: The number of seeds.
        what: The pool's name, for the message.

    Returns:
        None.

    Raises:
        ValueError: several seeds and a pool no larger than the sample.

    Example:
        >>> from training.table1_benchmarks import check_pool
        >>> check_pool(1319, 1000, 3, "benchmark 'gsm8k'")
        >>> check_pool(100, 100, 3, "the held-out arithmetic")
        Traceback (most recent call last):
        ...
        ValueError: the held-out arithmetic has 100 questions and [eval] n_questions is 100: every seed would ...
    """
    if n_seeds > 1 and pool_size <= n_questions:
        raise ValueError(f"{what} has {pool_size} questions and [eval] n_questions is {n_questions}: every seed would "
                         f"draw the same questions; use n_questions below {pool_size} (the paper samples 1000 per "
                         "seed from the whole benchmark)")


def benchmark_pool(name: str, data_file: str | Path | None, cfg: EvalConfig) -> list[BenchmarkQuestion]:
    """Every question of benchmark ``name`` (from ``data_file``, else the local HF cache), checked to be larger
    than ``cfg.n_questions``.

    Args:
        name: ``gsm8k``, ``mmlu_pro`` or ``bbh``.
        data_file: a local json/jsonl/parquet file in the benchmark's format, or None for the HF cache.
        cfg: the ``[eval]`` section (sample size and seeds).

    Returns:
        The pool each seed samples from.

    Example:
        >>> pool = benchmark_pool("gsm8k", None, EvalConfig())  # doctest: +SKIP
    """
    if name not in BENCHMARK_DOMAINS:
        raise ValueError(f"[eval] benchmarks names {name!r}; valid: {sorted(BENCHMARK_DOMAINS)}")
    pool = load_benchmark(name, data_file=data_file or None)
    check_pool(len(pool), cfg.n_questions, len(cfg.seeds), f"benchmark {name!r}")
    return pool


def evaluate_benchmarks(methods: dict[str, MethodSpec], pools: Mapping[str, list], cfg: EvalConfig,
                        placement: Placement = Placement()) -> dict[str, Table1]:
    """One Table 1 per benchmark: every method on each seed's sample of each pool, prompted in the benchmark's
    domain (a number for GSM8K, any boxed answer for MMLU-Pro and BBH), models loaded as ``placement`` says.

    Args:
        methods: Row name → `MethodSpec`.
        pools: Benchmark name → its questions (`benchmark_pool`).
        cfg: The ``[eval]`` section.
        placement: Where and in which dtype model dirs are loaded.

    Returns:
        Benchmark name → its `Table1`.

    Example:
        >>> pools = {"gsm8k": benchmark_pool("gsm8k", None, cfg)}  # doctest: +SKIP
        >>> evaluate_benchmarks(methods, pools, cfg)["gsm8k"].row("IMAD")["accuracy"]  # doctest: +SKIP
        0.79
    """
    return {name: evaluate_methods(methods, pool, cfg=dataclasses.replace(cfg, domain=BENCHMARK_DOMAINS[name]),
                                   placement=placement)
            for name, pool in pools.items()}


def wide_rows(tables: Mapping[str, Table1]) -> list[dict]:
    """Per method: accuracy (%) ± SE and mean tokens for every benchmark, the layout of the paper's Table 1.

    Args:
        tables: Benchmark name → its `Table1` (each with the first table's methods).

    Returns:
        One row per method, in the first table's order: ``method`` and, per benchmark ``b``, ``b_accuracy`` (a share
        in 0–1), ``b_accuracy_se`` and ``b_tokens``.

    Raises:
        KeyError: a table lacks a method of the first.

    Example:
        >>> from training.evaluate import Table1
        >>> from training.table1_benchmarks import wide_rows
        >>> tables = {"gsm8k": Table1([{"method": "IMAD", "accuracy": 0.8, "accuracy_se": 0.02, "tokens": 210.0}])}
        >>> wide_rows(tables)
        [{'method': 'IMAD', 'gsm8k_accuracy': 0.8, 'gsm8k_accuracy_se': 0.02, 'gsm8k_tokens': 210.0}]
    """
    methods = [r["method"] for r in next(iter(tables.values())).rows]
    out = []
    for m in methods:
        row: dict = {"method": m}
        for name, table in tables.items():
            r = table.row(m)
            row[f"{name}_accuracy"] = r["accuracy"]
            row[f"{name}_accuracy_se"] = r["accuracy_se"]
            row[f"{name}_tokens"] = r["tokens"]
        out.append(row)
    return out


def wide_markdown(tables: Mapping[str, Table1]) -> str:
    """The wide table as markdown: one accuracy and one token column per benchmark.

    Args:
        tables: Benchmark name → its `Table1`.

    Returns:
        The markdown text: accuracy (%) ± SE, then tokens, per benchmark.

    Example:
        >>> from training.evaluate import Table1
        >>> from training.table1_benchmarks import wide_markdown
        >>> tables = {"gsm8k": Table1([{"method": "IMAD", "accuracy": 0.8, "accuracy_se": 0.02, "tokens": 210.0}])}
        >>> print(wide_markdown(tables))
        | Method | GSM8K acc (%) | tok GSM8K |
        |---|---|---|
        | IMAD | 80.00 ± 2.00 | 210.0 |
        <BLANKLINE>
    """
    names = list(tables)
    head = ["Method", *(f"{TITLES.get(n, n)} acc (%)" for n in names), *(f"tok {TITLES.get(n, n)}" for n in names)]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in wide_rows(tables):
        acc = []
        for n in names:
            se = row[f"{n}_accuracy_se"]
            acc.append(f"{100 * row[f'{n}_accuracy']:.2f}" + ("" if se is None else f" ± {100 * se:.2f}"))
        tok = [f"{row[f'{n}_tokens']:.1f}" for n in names]
        lines.append("| " + " | ".join([row["method"], *acc, *tok]) + " |")
    return "\n".join(lines) + "\n"


def save_benchmarks(tables: Mapping[str, Table1], out_dir: str | Path, *, static_images: bool = True) -> Path:
    """``<name>/`` (each benchmark's full Table 1) plus ``benchmarks.json`` and ``benchmarks.md`` (the wide table)
    under ``out_dir``.

    Args:
        tables: Benchmark name → its `Table1`.
        out_dir: The dir to write into.
        static_images: Also write each figure as PNG and PDF.

    Returns:
        ``out_dir`` as a `Path`.

    Example:
        >>> save_benchmarks(evaluate_benchmarks(methods, pools, cfg), "runs/llama/eval/benchmarks")  # doctest: +SKIP
        PosixPath('runs/llama/eval/benchmarks')
    """
    out = Path(out_dir)
    for name, table in tables.items():
        table.save(out / name, static_images=static_images)
    atomic_write_json(out / "benchmarks.json", {"benchmarks": list(tables), "rows": wide_rows(tables)})
    atomic_write_text(out / "benchmarks.md", wide_markdown(tables))
    return out
