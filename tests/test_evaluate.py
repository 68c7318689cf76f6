"""Table 1 evaluation (teacher and tiny-model methods, real code paths) and the offline benchmark loaders."""

import json
import math
import statistics

import pytest

from lens.debate_format import render_trace
from training.backends import TeacherBackend
from training.benchmarks_data import BenchmarkDataError, load_benchmark
from training.evaluate import (EvalConfig, MethodSpec, Table1, accuracy_vs_tokens, evaluate_methods, is_correct,
                               well_formed)
from training.presets import load_preset
from training.runner import run_debates
from training.tasks import TaskConfig, arithmetic_split
from training.teacher import Teacher
from training.tiny_models import TinyModelSpec, make_tiny_model

TASKS = TaskConfig(n_train=100, n_test=40)


@pytest.fixture(scope="module")
def held_out():
    return arithmetic_split(TASKS, "test", seed=0)


@pytest.fixture(scope="module")
def long_ctx_dir(tmp_path_factory, tiny_tokenizer):
    """A tiny Llama with room for round-2 prompts (the shared fixture models have a 256-token context)."""
    spec = TinyModelSpec(d_model=32, n_layers=2, n_heads=2, d_mlp=64, n_ctx=1024)
    d = tmp_path_factory.mktemp("long_ctx")
    make_tiny_model(spec, tiny_tokenizer, seed=0).save_pretrained(d)
    tiny_tokenizer.save_pretrained(d)
    return str(d)


@pytest.fixture(scope="module")
def table(held_out, tiny_tokenizer, tiny_model_dirs, long_ctx_dir):
    teacher = TeacherBackend(Teacher(), tiny_tokenizer)
    methods = {"Single": MethodSpec("single", backend=teacher), "Debate": MethodSpec("debate", backend=teacher),
               "Tiny debate": MethodSpec("debate", long_ctx_dir),
               "Tiny direct": MethodSpec("direct", tiny_model_dirs["llama"])}
    cfg = EvalConfig(n_questions=8, seeds=(0, 1, 2), max_new_tokens=6, direct_max_new_tokens=10, batch_size=32)
    return evaluate_methods(methods, held_out, cfg=cfg)


def test_rows_keys_and_standard_error(table):
    assert [r["method"] for r in table.rows] == ["Single", "Debate", "Tiny debate", "Tiny direct"]
    for r in table.rows:
        assert {"method", "accuracy", "accuracy_se", "tokens", "tokens_se", "n_questions", "per_seed"} <= set(r)
        assert 0 <= r["accuracy"] <= 1 and r["n_questions"] == 8 and len(r["per_seed"]) == 3
        acc = [s["accuracy"] for s in r["per_seed"]]
        assert r["accuracy"] == pytest.approx(statistics.mean(acc))
        assert r["accuracy_se"] == pytest.approx(statistics.stdev(acc) / math.sqrt(3))
        assert r["tokens_se"] == pytest.approx(statistics.stdev(s["tokens"] for s in r["per_seed"]) / math.sqrt(3))


def test_debate_beats_single_and_costs_more(table):
    single, debate = table.row("Single"), table.row("Debate")
    assert debate["accuracy"] > single["accuracy"]  # the teacher's persona slips are independent
    assert debate["tokens"] > 3 * single["tokens"]
    assert 0 < debate["round2_share"] < 1 and debate["well_formed"] is None
    direct = table.row("Tiny direct")
    assert direct["well_formed"] == 0 and direct["mean_output_tokens"] <= 10


def test_seeds_resample_questions(table):
    by_seed = {}
    for s in table.samples["Single"]:
        by_seed.setdefault(s["seed"], set()).add(s["question"])
    assert by_seed[0] != by_seed[1]


def test_save_and_load(table, tmp_path):
    table.save(tmp_path, static_images=False)
    rows = json.loads((tmp_path / "table1.json").read_text())["rows"]
    assert [r["method"] for r in rows] == [r["method"] for r in table.rows]
    assert (tmp_path / "table1.csv").read_text().startswith("method,kind,accuracy,accuracy_se,tokens")
    assert "| Debate |" in (tmp_path / "table1.md").read_text()
    assert (tmp_path / "accuracy_vs_tokens.html").stat().st_size > 1000
    assert len((tmp_path / "samples" / "Tiny_direct.jsonl").read_text().splitlines()) == 24
    assert Table1.load(tmp_path).rows == rows
    assert accuracy_vs_tokens(table).layout.xaxis.type == "log"


def test_well_formed_and_matching(held_out, tiny_tokenizer):
    t = run_debates(held_out[:1], TeacherBackend(Teacher(), tiny_tokenizer))[0].transcript
    text = render_trace(t)
    assert well_formed(text, t.question) and not well_formed(text[: len(text) // 2], t.question)
    assert is_correct(t.gold, held_out[0]) and not is_correct(None, held_out[0])


def test_bad_method_and_preset_section():
    with pytest.raises(ValueError, match="unknown method kind 'x'"):
        MethodSpec("x", "dir")
    for preset in ("toy", "smoke"):
        cfg = load_preset(preset).section("eval", EvalConfig)
        assert len(cfg.seeds) >= 2 and cfg.n_questions > 0


def _write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_benchmark_loaders_on_local_files(tmp_path):
    gsm = _write_jsonl(tmp_path / "gsm.jsonl", [{"question": "2+2?", "answer": "2+2=4\n#### 1,004"}])
    q = load_benchmark("gsm8k", data_file=gsm)[0]
    assert q.answer == "1004" and q.matches("1004") and not q.matches("4")
    mmlu = tmp_path / "mmlu.json"
    mmlu.write_text(json.dumps([{"question": "Pick", "options": ["x", "y", "z"], "answer": "B", "category": "m"}]))
    q = load_benchmark("mmlu_pro", data_file=mmlu)[0]
    assert "A) x\nB) y\nC) z" in q.question and q.matches("B") and q.matches("(B)") and not q.matches("A")
    bbh = _write_jsonl(tmp_path / "bbh.jsonl", [{"input": "Q1", "target": "(A)", "task": "web_of_lies"},
                                                 {"input": "Q2", "target": "Yes", "task": "navigate"}])
    qs = load_benchmark("bbh", data_file=bbh)
    assert [x.question for x in qs] == ["Q1"] and qs[0].matches("a") and qs[0].task == "web_of_lies"
    assert load_benchmark("bbh", data_file=bbh, tasks=("navigate",))[0].matches("yes")


def test_benchmark_cache_is_read_offline_even_when_the_hub_was_imported_first(tmp_path, monkeypatch):
    import socket

    import datasets
    from huggingface_hub import constants

    # a notebook that imported transformers before HF_HUB_OFFLINE was set: both libraries think they are online
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", False)
    lookups = []

    def no_network(host, *args, **kwargs):
        lookups.append(host)
        raise OSError(f"no network here ({host})")

    monkeypatch.setattr(socket, "getaddrinfo", no_network)
    with pytest.raises(BenchmarkDataError, match=r"'openai/gsm8k'\) is not in the local cache"):
        load_benchmark("gsm8k", cache_dir=str(tmp_path))
    assert lookups == []
    assert constants.HF_HUB_OFFLINE is False and datasets.config.HF_HUB_OFFLINE is False  # restored after
    from training.benchmarks_data import offline_hub

    monkeypatch.setenv("HF_HUB_OFFLINE", "0")  # a user who opts in to downloads keeps them
    with offline_hub():
        assert datasets.config.HF_HUB_OFFLINE is False


def test_benchmark_errors_are_one_clear_sentence(tmp_path):
    with pytest.raises(BenchmarkDataError, match=r"'TIGER-Lab/MMLU-Pro'\) is not in the local cache.*--data-file"):
        load_benchmark("mmlu_pro", cache_dir=str(tmp_path / "empty"))
    with pytest.raises(BenchmarkDataError, match="unknown benchmark 'gsm'"):
        load_benchmark("gsm")
    bad = _write_jsonl(tmp_path / "bad.jsonl", [{"q": "x"}])
    with pytest.raises(BenchmarkDataError, match=r"lack field\(s\) \['question', 'answer'\]"):
        load_benchmark("gsm8k", data_file=bad)
