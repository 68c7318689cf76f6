"""Fault injection on the smoke preset: kills, a full disk, damaged weights and a changed preset on a finished run.

Each case asserts the sentence the user sees and that nothing good was lost. The training cases share one
reference run (debates and SFT of ``main`` on the session's smoke base) and stay within a few minutes.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from analyses.cli import main as cli
from training.integrity import hash_file
from training.pipeline import Run
from training.presets import load_preset
from training.stages import KEEP_STALE_ENV, read_manifest, stale_stages, verify_stage

REPO = Path(__file__).resolve().parents[1]
WEIGHTS = "model.safetensors"
NOT_MODEL = ("metrics.json", "stage.json", "provenance.json", "phases.json", "base_model.json")  # times, paths


def _copy_run(src: Path, dst: Path, *parts: str) -> Path:
    for part in parts:
        shutil.copytree(src / part, dst / part)
    return dst


def _model_files(stage: Path) -> dict[str, str]:
    return {p.name: hash_file(p) for p in sorted(stage.iterdir())
            if p.suffix in (".safetensors", ".json") and p.name not in NOT_MODEL}


def _preset_file(tmp: Path, old: str, new: str) -> Path:
    text = (REPO / "configs" / "smoke.toml").read_text()
    assert old in text
    path = tmp / "changed.toml"
    path.write_text(text.replace(old, new, 1))
    return path


@pytest.fixture(scope="module")
def ref(smoke_run_dir, tmp_path_factory) -> Path:
    """A run dir holding the smoke base, debates/main, sft/main and internalize/main, built without interruption."""
    import torch

    torch.set_num_threads(1)
    run = _copy_run(smoke_run_dir, tmp_path_factory.mktemp("ref"), "base")
    Run(load_preset("smoke"), run, log=lambda line: None).internalize("main")
    return run


def _killed(script: str, run: Path) -> None:
    """Run ``script`` (then ``latent-agents <argv>`` on ``run``) in a subprocess that SIGKILLs itself."""
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-c", textwrap.dedent(script), str(run)], env=env, capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == -9, proc.stderr[-2000:]


@pytest.mark.slow
def test_kill_during_a_checkpoint_save_resumes_to_the_uninterrupted_result(ref, tmp_path):
    run = _copy_run(ref, tmp_path / "run", "base", "debates")
    # SIGKILL half-way through writing checkpoint-4 (its optimizer file is half written), after checkpoint-2
    _killed("""
        import os, signal, sys
        from transformers import Trainer
        real = Trainer._save_optimizer_and_scheduler
        def save(self, output_dir):
            if self.state.global_step == 4:
                open(os.path.join(output_dir, "optimizer.pt"), "wb").write(b"half")
                os.kill(os.getpid(), signal.SIGKILL)
            return real(self, output_dir)
        Trainer._save_optimizer_and_scheduler = save
        from analyses.cli import main
        main(["sft", "--preset", "smoke", "--run-dir", sys.argv[1]])
    """, run)
    resume = run / "sft" / "main.partial" / "resume"
    assert sorted(p.name for p in resume.glob("checkpoint-*")) == ["checkpoint-2"]
    assert (resume / ".saving" / "checkpoint-4" / "optimizer.pt").read_bytes() == b"half"
    lines = []
    Run(load_preset("smoke"), run, log=lines.append).sft("main")
    assert "[resume] ignoring checkpoint-4: the run stopped while saving it; removed it" in lines
    assert f"[resume] resuming from {resume / 'checkpoint-2'}" in lines
    done = run / "sft" / "main"
    assert _model_files(done) == _model_files(ref / "sft" / "main")
    metrics, ref_metrics = (json.loads((d / "metrics.json").read_text()) for d in (done, ref / "sft" / "main"))
    assert metrics["resumed_from"] == "checkpoint-2" and metrics["steps"] == ref_metrics["steps"] == 4
    assert metrics["train_loss"] == pytest.approx(ref_metrics["train_loss"], rel=1e-5)
    assert metrics["eval"] == ref_metrics["eval"]
    assert read_manifest(done)["outputs_digest"] != read_manifest(ref / "sft" / "main")["outputs_digest"]  # metrics


@pytest.mark.slow
def test_kill_during_stage_2_resumes_by_phase_to_the_uninterrupted_result(ref, tmp_path):
    run = _copy_run(ref, tmp_path / "run", "base", "debates", "sft")
    # SIGKILL once phase 1 is trained and merged, while it is being evaluated (phase 0 is finished)
    _killed("""
        import os, signal, sys
        import training.internalize as stage2
        real, calls = stage2.evaluate_model, []
        def evaluate(*a, **k):
            calls.append(1)
            if len(calls) == 3:  # the SFT model's start evaluation, phase 0, phase 1
                os.kill(os.getpid(), signal.SIGKILL)
            return real(*a, **k)
        stage2.evaluate_model = evaluate
        from training.pipeline import Run
        from training.presets import load_preset
        Run(load_preset("smoke"), sys.argv[1]).internalize("main")
    """, run)
    phases = run / "internalize" / "main.partial" / "resume" / "phases"
    assert sorted(p.name for p in phases.iterdir()) == ["phase0", "phase1.partial"]
    lines = []
    Run(load_preset("smoke"), run, log=lines.append).internalize("main")
    assert f"[internalize] phase 0 already trained, reusing {phases / 'phase0'}" in lines
    assert "[internalize] phase 1 was interrupted; training it again" in lines
    done, want = run / "internalize" / "main", ref / "internalize" / "main"
    assert _model_files(done) == _model_files(want)

    def phase_logs(d: Path) -> list[dict]:
        return [{k: v for k, v in p.items() if k != "train_wall_s"}
                for p in json.loads((d / "phases.json").read_text())["phases"]]

    assert phase_logs(done) == phase_logs(want)


@pytest.mark.slow
def test_full_disk_is_named_and_the_run_continues_once_space_is_freed(ref, tmp_path, capsys):
    mnt = tmp_path / "small"
    mnt.mkdir()
    need = sum(p.stat().st_size for p in (ref / "base").rglob("*")) + sum(
        p.stat().st_size for p in (ref / "debates").rglob("*"))
    size_kb = need // 1024 + 700  # room for the inputs and the stage's own small files, not for a checkpoint
    if subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size_kb}k", "tmpfs", str(mnt)],
                      capture_output=True).returncode != 0:
        pytest.skip("cannot mount a small tmpfs here (needs root); the full-disk unit tests still run")
    try:
        run = _copy_run(ref, mnt / "run", "base", "debates")
        rc = cli(["sft", "--preset", "smoke", "--run-dir", str(run)])
        err = capsys.readouterr().err
        # the line may follow the trainer's interrupted progress bar on the terminal
        said = [line[line.index("latent-agents:"):] for line in err.splitlines() if "latent-agents:" in line]
        assert rc == 2 and "Traceback" not in err and len(said) == 1
        last = said[0]
        assert last.startswith("latent-agents: no space left on the device while writing ")
        assert str(run / "sft" / "main.partial") in last
        assert last.endswith("is intact; free some space and rerun to continue")
        assert verify_stage(run / "base") == [] and verify_stage(run / "debates" / "main") == []
        resume = run / "sft" / "main.partial" / "resume"
        assert [p.name for p in resume.glob("checkpoint-*") if not (p / "checkpoint_complete.json").is_file()] == []
        assert subprocess.run(["mount", "-o", f"remount,size={size_kb + 20000}k", str(mnt)]).returncode == 0
        Run(load_preset("smoke"), run, log=lambda line: None).sft("main")
        assert _model_files(run / "sft" / "main") == _model_files(ref / "sft" / "main")
    finally:
        subprocess.run(["umount", "--lazy", str(mnt)])


@pytest.mark.slow
@pytest.mark.parametrize("damage", ["truncate", "overwrite"])
def test_damaged_weights_are_named_with_the_stage_that_wrote_them(ref, tmp_path, capsys, damage):
    run = _copy_run(ref, tmp_path / "run", "base", "debates", "sft")
    weights = run / "sft" / "main" / WEIGHTS
    size = weights.stat().st_size
    data = bytearray(weights.read_bytes())
    if damage == "truncate":
        weights.write_bytes(data[: size // 2])
    else:  # NaN floats in the middle, size unchanged
        data[size // 2: size // 2 + 4096] = b"\xff" * 4096
        weights.write_bytes(bytes(data))
    rc = cli(["sft", "--preset", "smoke", "--run-dir", str(run)])
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    how = (f"is {size // 2:,} bytes but stage sft/main wrote {size:,} bytes: it was truncated after the stage "
           "finished" if damage == "truncate" else "has the size stage sft/main wrote but different contents "
           "(SHA-256 differs): it was corrupted or overwritten after the stage finished")
    assert rc == 2 and err == [f"latent-agents: {weights} {how}; delete {run / 'sft' / 'main'} and rerun to "
                               "rebuild it"]
    assert weights.stat().st_size == (size // 2 if damage == "truncate" else size)  # left for the user to judge


@pytest.mark.slow
def test_changed_preset_on_a_finished_run_is_kept_only_on_request_then_rebuilt(ref, tmp_path, monkeypatch):
    run = _copy_run(ref, tmp_path / "run", "base", "debates", "sft")
    before = _model_files(run / "sft" / "main")
    changed = load_preset(_preset_file(tmp_path, "max_steps = 4\n", "max_steps = 3\n"))
    lines = []
    monkeypatch.setenv(KEEP_STALE_ENV, "1")
    Run(changed, run, log=lines.append).sft("main")
    assert lines[-1] == ("[sft/main] stale: [sft] max_steps 4 -> 3; kept because of --keep-stale: its results do "
                         "not match the preset")
    assert _model_files(run / "sft" / "main") == before
    assert stale_stages(run) == [("sft/main", "[sft] max_steps 4 -> 3")]
    monkeypatch.delenv(KEEP_STALE_ENV)
    lines.clear()
    Run(changed, run, log=lines.append).sft("main")
    assert "[sft/main] stale: [sft] max_steps 4 -> 3; rebuilding" in lines
    assert json.loads((run / "sft" / "main" / "metrics.json").read_text())["steps"] == 3
    assert stale_stages(run) == [] and _model_files(run / "sft" / "main") != before
    assert [line for line in lines if "debates/main" in line] == [
        f"[debates/main] cached at {run / 'debates' / 'main'}, skipping"]
