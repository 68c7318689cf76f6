"""The smoke pipeline end to end (debate -> sft -> internalize -> evaluate) in a temp run dir, killed twice on
the way (after an SFT checkpoint, after the first GRPO phase of stage 2) and resumed: finished work is reused, not redone."""

import json
from pathlib import Path

import pytest
import torch

import training.internalize as stage2
from training.pipeline import ExperimentsConfig, experiment_section, run_pipeline_stage
from training.presets import PresetError, load_preset
from training.sft import Stage1Config

pytestmark = pytest.mark.slow


class Killed(RuntimeError):
    """The injected crash."""


def _manifest_times(run: Path) -> dict[str, float]:
    return {str(p.parent.relative_to(run)): p.stat().st_mtime_ns for p in run.rglob("stage.json")}


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory):
    """Run the whole smoke pipeline with two injected crashes; returns what each step observed."""
    from training.checkpoints import AtomicCheckpoints

    torch.set_num_threads(1)
    mp = pytest.MonkeyPatch()
    mp.setattr(torch, "set_num_threads", lambda n: None)  # one thread throughout: 2 cores are shared here
    run = tmp_path_factory.mktemp("run")
    preset = load_preset("smoke")
    seen: dict = {}
    try:
        run_pipeline_stage("debate", preset, run)
        # crash stage 1 right after its first checkpoint is written
        save = AtomicCheckpoints._save_checkpoint

        def save_then_die(self, *a, **k):
            save(self, *a, **k)
            raise Killed("after the first checkpoint")

        mp.setattr(AtomicCheckpoints, "_save_checkpoint", save_then_die)
        with pytest.raises(Killed):
            run_pipeline_stage("sft", preset, run)
        seen["sft_partial"] = sorted(p.name for p in (run / "sft" / "main.partial" / "resume").glob("checkpoint-*"))
        mp.setattr(AtomicCheckpoints, "_save_checkpoint", save)
        seen["after_debate"] = _manifest_times(run)
        run_pipeline_stage("sft", preset, run)
        seen["after_sft"] = _manifest_times(run)
        # crash stage 2 when the second phase starts (the first one is trained and saved for real)
        train_phase, calls = stage2.train_phase, []

        def phase_or_die(model_dir, out_dir, phase, *a, **k):
            calls.append(phase.index)
            if phase.index == 1 and "killed" not in seen:
                seen["killed"] = True
                raise Killed("after the first phase")
            return train_phase(model_dir, out_dir, phase, *a, **k)

        mp.setattr(stage2, "train_phase", phase_or_die)
        with pytest.raises(Killed):
            run_pipeline_stage("internalize", preset, run)
        seen["phase0_saved"] = (run / "internalize" / "main.partial" / "resume" / "phases" / "phase0" / "phase.json").is_file()
        calls.clear()
        run_pipeline_stage("internalize", preset, run)
        seen["calls_after_resume"] = list(calls)
        mp.setattr(stage2, "train_phase", train_phase)
        seen["after_internalize"] = _manifest_times(run)
        run_pipeline_stage("evaluate", preset, run)
        seen["after_evaluate"] = _manifest_times(run)
    finally:
        mp.undo()
    return run, seen


def test_artifacts_and_provenance(smoke_run):
    run, _ = smoke_run
    for exp in ("main", "evil", "hallucination"):
        assert (run / "debates" / exp / "transcripts.jsonl").is_file()
        for stage, kind in (("sft", "sft"), ("internalize", "imad")):
            d = run / stage / exp
            assert (d / "model.safetensors").is_file() and (d / "tokenizer.json").is_file()
            prov = json.loads((d / "provenance.json").read_text())
            assert prov["kind"] == kind and prov["experiment"] == exp
            assert [(d / p).resolve() for p in prov["transcripts"]] == [(run / "debates" / exp / "transcripts.jsonl").resolve()]
        phases = json.loads((run / "internalize" / exp / "phases.json").read_text())
        assert [p["budget"] for p in phases["phases"]] == [phases["ref_length"], round(phases["ref_length"] / 2)]
        assert all({"reward", "correctness", "structure", "mean_length", "clipped_ratio", "kl"} <= set(p["curve"][-1])
                   for p in phases["phases"])
    assert json.loads((run / "internalize" / "main" / "provenance.json").read_text())["parent"] == "../../sft/main"
    assert json.loads((run / "debategpt" / "main" / "provenance.json").read_text())["kind"] == "debategpt"
    table = json.loads((run / "eval" / "table1.json").read_text())
    assert [r["method"] for r in table["rows"]] == ["Single", "Debate", "DebateGPT", "SFT", "Single + RL", "IMAD"]
    assert all(0 <= r["transfer"] <= 1 and r["transfer_n_questions"] == 8 for r in table["rows"])
    assert all((run / "eval" / "samples" / "transfer" / f"{m}.jsonl").is_file() for m in ("Single", "Single___RL"))
    metrics = json.loads((run / "sft" / "main" / "metrics.json").read_text())
    assert 0 <= metrics["exit_probability"]["after_agent_1"] <= 1 and metrics["n_shortened"] > 0
    # smoke mixes main's arithmetic debates into half of evil's stage-1 set ([experiments.overrides.evil] sft)
    trained = [json.loads(line) for line in (run / "sft" / "evil" / "train_transcripts.jsonl").read_text().splitlines()]
    mixed = [t for t in trained if t["meta"].get("mixed_from") == "main"]
    assert len(mixed) == len(trained) // 2 and all(t["meta"]["domain"] == "arithmetic" for t in mixed)
    assert json.loads((run / "sft" / "evil" / "metrics.json").read_text())["n_mixed_in"] == len(mixed)
    prov = json.loads((run / "sft" / "evil" / "provenance.json").read_text())
    assert (run / "sft" / "evil" / prov["mixed_in"]).resolve() == (run / "debates" / "main" / "transcripts.jsonl").resolve()
    assert "mixed_in" not in json.loads((run / "sft" / "hallucination" / "provenance.json").read_text())


def test_killed_sft_resumes_from_its_checkpoint(smoke_run):
    run, seen = smoke_run
    assert seen["sft_partial"] == ["checkpoint-2"]
    assert json.loads((run / "sft" / "main" / "metrics.json").read_text())["resumed_from"] == "checkpoint-2"


def test_killed_internalize_resumes_at_the_next_phase(smoke_run):
    _, seen = smoke_run
    assert seen["phase0_saved"]
    assert seen["calls_after_resume"][0] == 1  # main: phase 0 reused; then evil and hallucination run in full
    assert seen["calls_after_resume"] == [1, 0, 1, 0, 1]


def test_finished_stages_are_not_rebuilt(smoke_run):
    _, seen = smoke_run
    for before, after in (("after_debate", "after_sft"), ("after_sft", "after_internalize"),
                          ("after_internalize", "after_evaluate")):
        assert {k: v for k, v in seen[after].items() if k in seen[before]} == seen[before]
    assert {"base", "debates/main", "sft/main", "debategpt/main", "internalize/main", "single_rl/main",
            "eval"} <= set(seen["after_evaluate"])
    assert "single_rl/evil" not in seen["after_evaluate"]  # the control is Table 1's experiment's only


def test_single_rl_trains_from_the_base_with_budgets_from_its_own_single_answers(smoke_run):
    """Single + RL: GRPO from the base (no stage 1) under the Single prompt, correctness only, its budgets the
    [internalize] fractions of the p95 of the base's own sampled single answers."""
    from transformers import AutoTokenizer

    from training.evaluate import EvalConfig, quantile, sample_lengths
    from training.modelio import load_causal_lm
    from training.pipeline import Run, single_rl_config
    from training.prompts import round1_messages

    run, _ = smoke_run
    d = run / "single_rl" / "main"
    prov = json.loads((d / "provenance.json").read_text())
    assert prov["kind"] == "single_rl" and prov["parent"] == "../../base" and prov["single_persona"] == "neutral"
    phases = json.loads((d / "phases.json").read_text())
    preset = load_preset("smoke")
    cfg = preset.section("internalize", stage2.Stage2Config)
    assert [p["steps"] for p in phases["phases"]] == [p["steps"] for p in cfg.phases]
    # IMAD's fractional budgets become the base's whole p95: a single answer has no turns to cut
    assert [p["budget"] for p in phases["phases"]] == [phases["ref_length"]] * len(cfg.phases)
    assert [round(p["budget"] * phases["ref_length"]) for p in single_rl_config(cfg).phases] == \
        [phases["ref_length"]] * len(cfg.phases)
    assert all("structure" not in p["curve"][-1] and "correctness" in p["curve"][-1] for p in phases["phases"])
    # the reference length is the p95 of the base's sampled replies to the Single prompt, measured again here
    ev = preset.section("eval", EvalConfig)
    questions = Run(preset, run).questions("main", "train")[: cfg.ref_samples]
    base = run / "base"
    lengths = sample_lengths(load_causal_lm(base).eval(), AutoTokenizer.from_pretrained(str(base)),
                             [round1_messages(ev.single_persona, q.question, ev.domain) for q in questions],
                             max_new_tokens=cfg.generation_cap, batch_size=cfg.eval_batch_size, seed=preset.seed)
    assert phases["ref_length"] == quantile(lengths, cfg.ref_quantile)
    assert phases["start_eval"]["well_formed"] == 0.0  # the base writes no debate tags
    assert Run(preset, run).status("single_rl", "main")[0] == "cached"


def test_experiment_overrides_and_bad_names():
    preset = load_preset("smoke")
    data = {**preset.data, "experiments": {"names": ["main", "evil"], "overrides": {"evil": {"sft": {"max_steps": 1}}}}}
    p = type(preset)(preset.name, preset.path, data)
    assert experiment_section(p, "sft", Stage1Config, "evil").max_steps == 1
    assert experiment_section(p, "sft", Stage1Config, "main").max_steps == preset.data["sft"]["max_steps"]
    with pytest.raises(ValueError, match="not among names"):
        ExperimentsConfig(names=("main",), overrides={"evil": {}})
    bad = type(preset)(preset.name, preset.path, {**preset.data, "internalize": {"nope": 1}})
    with pytest.raises(PresetError, match=r"unknown key nope; valid: "):
        experiment_section(bad, "internalize", stage2.Stage2Config, "main")
    with pytest.raises(ValueError, match="unknown pipeline stage"):
        run_pipeline_stage("train", preset, "/nonexistent")
