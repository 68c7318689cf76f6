"""The paper path's wiring: where a preset sends each experiment's debates and questions, the device and dtype
every load gets, the rank guard of several processes, and vLLM only where it can run."""

import json
import threading
import time
from pathlib import Path

import pytest
import torch

from training.internalize import Stage2Config, vllm_args
from training.modelio import Placement
from training.pipeline import Run
from training.presets import Preset, load_preset
from training.ranks import failed_marker, main_stage, wait_for
from training.stages import MANIFEST
from training.tasks import FileQuestion, TraitQuestion

ROOT = Path(__file__).resolve().parents[1]
PAPER = ROOT / "tests" / "data" / "paper"


def _preset(tmp_path: Path, **sections) -> Preset:
    """The smoke preset with ``sections`` merged in, living in ``tmp_path`` (relative paths resolve there)."""
    base = load_preset("smoke")
    data = {**base.data, **{k: {**base.data.get(k, {}), **v} for k, v in sections.items()}}
    return Preset(base.name, tmp_path / "p.toml", data)


def test_placement_resolves_auto_and_checks_the_dtype(tmp_path):
    auto = Placement.of(_preset(tmp_path, model={"device": "auto", "dtype": "auto"}))
    expect = ("cuda", "bfloat16") if torch.cuda.is_available() else ("cpu", "float32")
    assert (auto.device, auto.dtype) == expect
    bf16 = Placement.of(_preset(tmp_path, model={"dtype": "bfloat16", "gradient_checkpointing": True}))
    assert bf16.load() == {"device": "cpu", "dtype": torch.bfloat16}
    assert bf16.trainer() == {"use_cpu": True, "bf16": True, "fp16": False, "gradient_checkpointing": True}
    with pytest.raises(ValueError, match="dtype 'float8' is unknown"):
        Placement("cpu", "float8")


def test_each_experiment_gets_its_own_debate_source(tmp_path):
    arith = str(PAPER / "arithmetic_3_2.json")
    preset = _preset(tmp_path, debate={"source": "model", "base_url": "http://127.0.0.1:9/v1", "model": "m"},
                     experiments={"overrides": {"main": {"debate": {"source": "file", "path": arith}}}})
    run = Run(preset, tmp_path / "run")
    assert run.debate_config("main").source == "file"
    assert run.debate_config("evil").source == "model" and run.debate_config("evil").model == "m"
    train = run.questions("main", "train")
    n = load_preset("smoke").data["debate"]["n_debates"]["main"]
    raw = json.loads((PAPER / "arithmetic_3_2.json").read_text())
    assert train == [FileQuestion(r["question"], r["gold_answer"], None) for r in raw[:n]]


def test_rl_questions_leave_out_the_sft_only_tasks_and_relative_paths_read_from_the_preset_dir(tmp_path):
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "mix.json").write_text((PAPER / "debate_combined.json").read_text())
    preset = _preset(tmp_path, debate={"source": "file", "path": "data/mix.json",
                                       "n_debates": {"main": 100, "evil": 1, "hallucination": 1}})
    run = Run(preset, tmp_path / "run")
    mix = json.loads((PAPER / "debate_combined.json").read_text())
    assert [q.question for q in run.questions("main", "train")] == [r["question"] for r in mix["arithmetic"]]
    assert len(run.file_debates("main")) == len(mix["arithmetic"]) + len(mix["cnn_dailymail"])


def test_trait_questions_come_from_the_papers_files(tmp_path):
    files = {"train": str(PAPER / "evil_train.json"), "test": str(PAPER / "evil_test.json")}
    run = Run(_preset(tmp_path, task={"trait_questions": {"evil": files}, "n_trait_test": 3}), tmp_path / "run")
    test = run.questions("evil", "test")
    assert test == [TraitQuestion(q, "evil", "file") for q in json.loads(Path(files["test"]).read_text())[:3]]
    assert run.questions("hallucination", "test")[0].topic != "file"  # no file: the toy templates
    (tmp_path / "bad.json").write_text(json.dumps(["fine", 3]))
    bad = Run(_preset(tmp_path, task={"trait_questions": {"evil": {"test": "bad.json"}}}), tmp_path / "run")
    with pytest.raises(ValueError, match="bad.json item 1: expected a non-empty string"):
        bad.questions("evil", "test")


def test_a_waiting_rank_never_builds_and_returns_once_the_manifest_is_there(tmp_path, monkeypatch):
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")
    stage = tmp_path / "eval"
    threading.Timer(0.3, lambda: (stage.mkdir(), (stage / MANIFEST).write_text("{}"))).start()
    logs = []
    start = time.monotonic()
    assert wait_for(stage / MANIFEST, what="eval", poll_s=0.05, log=logs.append) == stage / MANIFEST
    assert time.monotonic() - start >= 0.25 and logs == ["[eval] rank 1 waits for the main process to build it"]
    main_stage(stage, lambda scratch: pytest.fail("a waiting rank built the stage"), name="eval", run_dir=tmp_path,
               log=lambda _: None)
    assert not stage.with_name("eval.partial").exists()


def test_a_failed_main_process_stops_the_waiting_ranks(tmp_path, monkeypatch):
    monkeypatch.setenv("RANK", "1")
    failed_marker(tmp_path).write_text("ValueError: bad preset")
    with pytest.raises(RuntimeError, match="the main process failed building debates/main: ValueError: bad preset"):
        wait_for(tmp_path / "debates" / "main" / MANIFEST, what="debates/main", poll_s=0.05,
                 failed=failed_marker(tmp_path), log=lambda _: None)
    with pytest.raises(TimeoutError, match="did not appear"):
        wait_for(tmp_path / "nothing", what="x", poll_s=0.05, timeout_s=0.2, log=lambda _: None)


def test_vllm_only_on_cuda_with_vllm_installed():
    assert vllm_args(Stage2Config(), Placement("cpu", "float32")) == {}
    assert vllm_args(Stage2Config(use_vllm=False), Placement("cuda", "bfloat16")) == {}
    try:
        import vllm  # noqa: F401
    except ImportError:
        assert vllm_args(Stage2Config(), Placement("cuda", "bfloat16")) == {}
    else:
        assert vllm_args(Stage2Config(), Placement("cuda", "bfloat16")) == {"use_vllm": True, "vllm_mode": "colocate"}


@pytest.mark.parametrize("rank", ["0", "1"])
def test_several_processes_refuse_to_build_the_toy_base_naming_the_single_process_command(tmp_path, monkeypatch,
                                                                                          rank):
    """The toy base's Trainer would open a collective the waiting ranks never join: every rank refuses instead."""
    from training.errors import UserError
    from training.presets import load_preset

    monkeypatch.setenv("RANK", rank)
    monkeypatch.setenv("WORLD_SIZE", "2")
    preset = load_preset("smoke")
    with pytest.raises(UserError, match=r"the toy base model is built by one process: run `latent-agents toy base "
                                        r"--preset .*smoke.toml --run-dir .*run` first"):
        Run(preset, tmp_path / "run").base_dir()
    assert not (tmp_path / "run").exists()
