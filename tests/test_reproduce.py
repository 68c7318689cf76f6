"""The whole smoke study through `latent-agents reproduce` in a temp run dir: report, results, resumption,
and the paper-scale presets (they validate, and fail fast without their model in the local HF cache)."""

from __future__ import annotations

import json
import re
import shutil
import time
from pathlib import Path

import pytest

from analyses import reproduce as repro
from analyses.cli import main as cli_main
from analyses.models import resolve_model
from analyses.validate import validate_preset
from training.layout import RunLayout
from training.presets import PresetError, load_preset

PAPER_PRESETS = ("llama3.1-8b", "qwen2.5-7b", "mistral-nemo")


@pytest.fixture(scope="session")
def smoke_study(smoke_run_dir) -> Path:
    """The smoke study, reproduced in the session's smoke run dir (its toy base is shared with other tests); a
    second module using this fixture finds every stage cached and only rewrites the report."""
    start = time.time()
    repro.reproduce(load_preset("smoke"), smoke_run_dir)
    print(f"smoke study: {time.time() - start:.0f}s")
    return smoke_run_dir


@pytest.mark.slow
def test_report_has_every_figure_table_and_claim(smoke_study):
    html = (smoke_study / "report" / "report.html").read_text()
    results = json.loads((smoke_study / "report" / "results.json").read_text())
    assert html.count("plotly-graph-div") >= 6
    assert len(re.findall(r"<script type='text/javascript'>", html)) == 1  # plotly.js inlined once
    for fig in ("accuracy_vs_tokens", "stage2_accuracy_vs_tokens", "probe_accuracy", "pca_agents", "rouge_vs_alpha",
                "rouge_auc",
                "capability_agent_steering", "malicious_fig3", "tradeoff_evil", "tradeoff_hallucination",
                "pareto_evil", "pareto_hallucination"):
        assert f'id="fig-{fig}"' in html and fig in results["figures"]
    for caption in ("Paper claims", "Table 1", "Table 8", "Suppression rating", "Wall time per stage", "Seeds",
                    "Package versions", "Suppression rating with controls", "Monitoring", "Steerability per agent",
                    "Paired comparisons"):
        assert f"<caption>{caption}" in html
    assert set(results) >= {"preset", "seeds", "versions", "stages", "table1", "agent_subspaces", "malicious",
                            "claims", "figures"}
    assert {r["method"] for r in results["table1"]} == {"Single", "Debate", "DebateGPT", "SFT", "Single + RL", "IMAD"}
    assert all(0 <= r["transfer"] <= 1 and len(r["transfer_ci"]) == 2 for r in results["table1"])
    assert {c["id"] for c in results["claims"]} >= {"tokens_vs_debate", "accuracy_vs_debate", "rouge_auc",
                                                    "evil_suppressed", "capability_stable", "imad_vs_single_rl"}
    source = next(c for c in results["claims"] if c["id"] == "imad_vs_single_rl")
    assert source["verdict"] in ("reproduced", "not reproduced")
    assert len(source["intervals"]["IMAD−Single + RL"]["ci"]) == 2
    assert results["gain_source"] in ("from the debate", "from reinforcement learning", "undecided")
    assert f"Single comes from: {results['gain_source']}" in html and "Single + RL: the stage-2 GRPO recipe" in html
    assert set(results["stage2_curves"]) == {"IMAD", "Single + RL"}
    assert [p["budget"] for p in results["stage2_curves"]["Single + RL"]][0] is None  # the base, before RL
    verdicts = ("reproduced", "not reproduced", "not run")  # never "not testable": undecided is "not reproduced"
    assert all(c["verdict"] in verdicts for c in results["claims"])
    assert all(c["intervals"] and all(len(iv["ci"]) == 2 for iv in c["intervals"].values())
               for c in results["claims"])
    assert all(r["ci"] is not None and len(r["ci"]) == 2 and "se" in r for r in results["table1"])
    assert any(s["stage"] == "analyses/malicious" and s["wall seconds"] is not None for s in results["stages"])
    subs = results["agent_subspaces"]
    assert subs["hook_name"] == f"blocks.{subs['layer']}.hook_resid_post"
    assert set(subs["auc"]) == {"1", "2", "3"} and set(subs["auc"]["1"]) == {"rouge1", "rouge2", "rougeL"}
    assert set(results["malicious"]["traits"]) == {"evil", "hallucination"}
    assert results["malicious"]["alpha_unit"] == "α (× mean residual norm)"
    for trait, block in results["malicious"]["traits"].items():
        controls = block["controls"]
        assert set(controls) == {"prompting_base", "prompting_imad", "random_imad", "ablation_imad", "capping_imad"}
        assert controls["random_imad"]["alphas"] == block["imad"]["alphas"]  # the random direction on IMAD's grid
        assert [p["strength"] for p in controls["capping_imad"]["points"]] == [50.0, 90.0]
        for point in (controls["prompting_imad"], controls["ablation_imad"], *controls["capping_imad"]["points"]):
            assert 0 <= point["capability"] <= 1 and point["capability_ci"][0] <= point["capability_ci"][1]
        for kind in ("base", "imad"):  # α grid: 2 points per side between 0 and the halving strength (or its cap)
            assert len(block[kind]["alphas"]) == 5 and 0.0 in block[kind]["alphas"]
            assert len(block[kind]["trait_ci"]) == len(block[kind]["capability_ci"]) == 5
        methods = {p["method"] for p in block["pareto"]["points"]}
        assert {"IMAD agent-2 vector", "base system-prompt vector", "random direction (IMAD)", "prompting (base)",
                "prompting (IMAD)", "ablation (IMAD)", "capping (IMAD)"} == methods
        assert block["pareto"]["frontier"] and block["pareto"]["best_method"] in methods
        mon = block["monitor"]
        assert 0 <= mon["direction_auroc"] <= 1 and 0 <= mon["judge_auroc"] <= 1 and mon["n_agent_turns"] > 0
    steer = subs["steerability"]
    assert set(steer["gain_difference"]) == {"1", "2", "3"}
    assert subs["steering_unit"] == "α (× mean residual norm)"
    for k in ("base", "imad"):  # capability on each agent's searched grid; steerability on its non-negative half
        for a in "123":
            grid = subs["capability_grid"][k][a]
            assert len(grid) == 5 and 0.0 in grid and len(subs["capability"][k][a]) == 5
            assert steer[k][a]["alphas"] == [x for x in grid if x >= 0]
            assert len(steer[k][a]["markers"]) == len(steer[k][a]["alphas"])
            assert set(subs["alpha_search"][k][a]) == {"selection_capability", "negative", "positive"}
    assert all(len(subs["auc"][a]["rougeL"]["diff"]["ci"]) == 2 for a in "123")
    assert "NaN" not in (smoke_study / "report" / "results.json").read_text()


@pytest.mark.slow
def test_report_says_table1_is_missing_only_when_it_is(smoke_study, tmp_path):
    """The note follows Table 1 itself, not the stage-2 curves: a run holding Table 1 but no phases.json reports
    the table without the note, and a run without Table 1 carries it."""
    from analyses.study_report import build
    preset = load_preset("smoke")
    table_only = RunLayout(tmp_path / "table_only")
    table_only.eval.mkdir(parents=True)
    shutil.copytree(RunLayout(smoke_study).eval, table_only.eval, dirs_exist_ok=True)
    assert not any(table_only.root.rglob("phases.json"))
    html = build(preset, table_only.root)[0].html()
    assert "<caption>Table 1" in html and "Table 1 is missing" not in html
    assert "Table 1 is missing (eval/table1.json)." in build(preset, tmp_path / "empty")[0].html()


@pytest.mark.slow
def test_killed_experiment_resumes_without_redoing_finished_stages(smoke_study, monkeypatch):
    manifests = {p: p.stat().st_mtime for p in smoke_study.rglob("stage.json")}
    target = smoke_study / "analyses" / "agent_subspaces"
    keep = target.with_name("agent_subspaces.kept")
    target.rename(keep)  # as if the run had been killed before this experiment finished
    real = repro.EXPERIMENTS["agent_subspaces"]

    def killed(preset, run_dir, out):
        (out / "half-written.json").write_text("{")
        raise KeyboardInterrupt

    monkeypatch.setitem(repro.EXPERIMENTS, "agent_subspaces", killed)
    with pytest.raises(KeyboardInterrupt):
        repro.reproduce(load_preset("smoke"), smoke_study)
    monkeypatch.setitem(repro.EXPERIMENTS, "agent_subspaces", real)
    lines: list[str] = []
    repro.reproduce(load_preset("smoke"), smoke_study, log=lines.append)
    assert any(l.startswith("[analyses/agent_subspaces] done") for l in lines)
    assert any(l.startswith("[analyses/malicious] cached") for l in lines)
    cached = [l.split("]")[0] + "]" for l in lines if "] cached at" in l]
    assert "[base]" in cached and "[sft/main]" in cached
    assert len(cached) == len(set(cached)), f"finished stages logged more than once: {sorted(cached)}"
    assert not (target / "half-written.json").exists() and (target / "results.json").is_file()
    for path, mtime in manifests.items():
        if "agent_subspaces" not in str(path):
            assert path.stat().st_mtime == mtime, f"{path} was rebuilt"
    import shutil

    shutil.rmtree(keep)


@pytest.mark.slow
def test_keep_hf_false_runs_the_malicious_experiment_on_transformer_lens_alone(smoke_study, tmp_path, monkeypatch):
    import lens
    from analyses import malicious

    real, loads = lens.load_model, []

    def recording(path, **kw):
        model = real(path, **kw)
        loads.append((kw.get("keep_hf"), getattr(model, "lens_hf", None)))
        return model

    monkeypatch.setattr(lens, "load_model", recording)
    results = malicious.run(load_preset("smoke", ["model.keep_hf=false"]), smoke_study, tmp_path)
    assert loads and all(keep is False and twin is None for keep, twin in loads)
    cached = json.loads((smoke_study / "analyses" / "malicious" / "results.json").read_text())
    assert sorted(results["traits"]) == sorted(cached["traits"])
    for trait, block in results["traits"].items():  # the same curves, computed without the HF twin
        assert block["imad"]["alphas"] == cached["traits"][trait]["imad"]["alphas"]
        assert len(block["imad"]["trait"]) == len(cached["traits"][trait]["imad"]["trait"])


@pytest.mark.parametrize("name", PAPER_PRESETS)
def test_paper_presets_validate(name):
    sections = validate_preset(load_preset(name))
    assert sections["sft"].lora_r == 64 and sections["sft"].lora_alpha == 128 and sections["sft"].lora_dropout == 0.1
    assert [p["budget"] for p in sections["internalize"].phases] == [2000, 1274, 500]
    assert sections["subspaces"].layer == sections["malicious"].layer == (20 if name == "mistral-nemo" else 15)
    assert sections["sft"].learning_rate == (3e-5 if name == "mistral-nemo" else 5e-5)
    assert sections["task"].operand_min == 10 and sections["task"].operand_max == 99


@pytest.mark.parametrize("name", PAPER_PRESETS)
def test_paper_presets_fail_fast_without_the_cached_model(name, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    with pytest.raises(PresetError, match=r"needs the model .* in the local Hugging Face cache"):
        resolve_model(load_preset(name))
    assert cli_main(["reproduce", "--preset", name, "--run-dir", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "huggingface-cli download" in err
    assert not (tmp_path / "run").exists()


def test_unknown_preset_section_is_one_clear_error(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text('[meta]\nname = "bad"\n[subspace]\nlayer = 3\n')
    with pytest.raises(PresetError, match=r"unknown section \[subspace\]; valid: "):
        validate_preset(load_preset(bad))
