"""Table 1 per benchmark from local files in the GSM8K / MMLU-Pro / BBH formats, re-sampled per seed."""

from pathlib import Path

import pytest

from training.benchmarks_data import load_benchmark
from training.evaluate import EvalConfig, MethodSpec, sample_questions
from training.table1_benchmarks import benchmark_pool, check_pool, evaluate_benchmarks, save_benchmarks, wide_rows

PAPER = Path(__file__).parent / "data" / "paper"
FILES = {"gsm8k": PAPER / "gsm8k.jsonl", "mmlu_pro": PAPER / "mmlu_pro.jsonl", "bbh": PAPER / "bbh.jsonl"}


def test_each_seed_samples_its_own_questions_from_a_larger_pool():
    pool = load_benchmark("gsm8k", data_file=FILES["gsm8k"])
    samples = {seed: sample_questions(pool, 4, seed) for seed in (2025, 2026, 2027)}
    assert all(len(s) == 4 and set(s) <= set(pool) for s in samples.values())
    assert len({tuple(q.question for q in s) for s in samples.values()}) == 3
    assert sample_questions(pool, 4, 2025) == samples[2025]


def test_a_pool_no_larger_than_the_sample_is_refused():
    with pytest.raises(ValueError, match="has 12 questions and \\[eval\\] n_questions is 12: every seed would draw"):
        benchmark_pool("gsm8k", FILES["gsm8k"], EvalConfig(n_questions=12, seeds=(1, 2)))
    check_pool(12, 12, 1, "one seed")  # one seed: nothing to re-sample
    with pytest.raises(ValueError, match="names 'math'"):
        benchmark_pool("math", None, EvalConfig())


def test_table1_has_one_column_per_benchmark(smoke_base_dir, tmp_path):
    cfg = EvalConfig(n_questions=3, seeds=(2025, 2026), max_new_tokens=8, direct_max_new_tokens=8, batch_size=8)
    pools = {name: benchmark_pool(name, f, cfg) for name, f in FILES.items()}
    methods = {"Single": MethodSpec("single", str(smoke_base_dir)), "SFT": MethodSpec("direct", str(smoke_base_dir))}
    tables = evaluate_benchmarks(methods, pools, cfg)
    assert list(tables) == ["gsm8k", "mmlu_pro", "bbh"]
    for name, table in tables.items():
        assert [r["method"] for r in table.rows] == ["Single", "SFT"]
        single = table.row("Single")
        assert single["n_questions"] == 3 and [s["seed"] for s in single["per_seed"]] == [2025, 2026]
        asked = {s["question"] for s in table.samples["Single"]}
        assert asked <= {q.question for q in pools[name]} and len(asked) > 3  # two seeds, different questions
        assert single["tokens"] > 0
    mmlu_prompt = tables["mmlu_pro"].samples["Single"][0]
    assert mmlu_prompt["gold"] == "B"
    rows = wide_rows(tables)
    assert set(rows[0]) >= {"method", "gsm8k_accuracy", "mmlu_pro_accuracy", "bbh_accuracy", "bbh_tokens"}
    out = save_benchmarks(tables, tmp_path / "eval", static_images=False)
    md = (out / "benchmarks.md").read_text()
    assert "GSM8K acc (%)" in md and "MMLU-Pro acc (%)" in md and "BBH acc (%)" in md
    assert (out / "bbh" / "table1.json").is_file()
