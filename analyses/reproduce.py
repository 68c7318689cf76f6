"""``latent-agents reproduce``: every missing stage, the three experiments, then the report.

Each step is a cached stage (a ``stage.json`` manifest marks it done), so a killed run resumes where it stopped
and a finished one only rewrites the report.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Callable

from analyses import agent_subspaces, malicious
from analyses.models import resolve_model
from analyses.study_report import write_report
from analyses.validate import validate_preset
from training.layout import STAGES, RunLayout
from training.pipeline import Run
from training.presets import Preset
from training.ranks import is_main, main_stage
from training.stages import read_manifest
from training.tasks import TaskConfig
from training.threads import generation_threads

EXPERIMENTS: dict[str, Callable[[Preset, Path, Path], dict]] = {
    agent_subspaces.NAME: agent_subspaces.run,
    malicious.NAME: malicious.run,
}


def is_toy(preset: Preset) -> bool:
    """Whether the preset trains its own base model (the toy world) instead of loading a local HF model.

    Args:
        preset: The loaded preset.

    Returns:
        True when ``[model] path`` is unset or empty.

    Example:
        >>> from pathlib import Path
        >>> from analyses.reproduce import is_toy
        >>> from training.presets import Preset
        >>> is_toy(Preset("toy", Path("toy.toml"), {})), is_toy(Preset("m", Path("m.toml"), {"model": {"path": "/m"}}))
        (True, False)
    """
    return not preset.data.get("model", {}).get("path")


def run_experiment(name: str, preset: Preset, run_dir: Path, log: Callable[[str], None] = print) -> dict:
    """One experiment as a cached stage under ``run_dir/analyses/<name>/``.

    Args:
        name: ``agent_subspaces`` or ``malicious`` (a key of `EXPERIMENTS`).
        preset: The loaded preset.
        run_dir: The run directory.
        log: Where progress lines go.

    Returns:
        The stage's manifest (``stage.json``), built now or found cached.

    Example:
        >>> run_experiment("malicious", preset, Path("runs/toy"))["results"]  # doctest: +SKIP
        'results.json'
    """
    fn = EXPERIMENTS[name]

    def build(out: Path) -> dict:
        with generation_threads():  # small batched generation gains little from threads, loses much when shared
            results = fn(preset, run_dir, out)
        return {"kind": "analysis", "experiment": name, "results": "results.json", "keys": sorted(results)}

    path = RunLayout(run_dir).analysis(name)
    main_stage(path, build, name=f"analyses/{name}", run_dir=run_dir, log=log,
               **experiment_reads(name, preset, run_dir))
    return read_manifest(path)


def experiment_reads(name: str, preset: Preset, run_dir: Path) -> dict:
    """The preset values and stages experiment ``name`` reads: the ``keys`` and ``inputs`` that fingerprint its
    cached results (`training.stages.run_stage`). Builds nothing.

    Args:
        name: ``agent_subspaces`` or ``malicious``.
        preset: the preset.
        run_dir: the run directory.

    Returns:
        ``{"keys": {...}, "inputs": {...}}``.

    Example:
        >>> sorted(experiment_reads("malicious", load_preset("smoke"), Path("runs/smoke"))["keys"])  # doctest: +SKIP
        ['malicious', 'seed', 'task', 'version']
    """
    section, cls, module = {agent_subspaces.NAME: ("subspaces", agent_subspaces.SubspaceConfig, agent_subspaces),
                            malicious.NAME: ("malicious", malicious.MaliciousConfig, malicious)}[name]
    cfg = preset.section(section, cls)
    layout = RunLayout.of(preset, run_dir)
    inputs = {"base": layout.base}
    for exp in ([cfg.experiment] if name == agent_subspaces.NAME else list(cfg.traits)):
        inputs.update({f"debates/{exp}": layout.debates(exp), f"sft/{exp}": layout.sft(exp),
                       f"internalize/{exp}": layout.internalize(exp)})
    return {"keys": {section: cfg, "task": preset.section("task", TaskConfig), "seed": preset.seed,
                     "version": module.VERSION}, "inputs": inputs}


def reproduce(preset: Preset, run_dir: str | Path, *, log: Callable[[str], None] = print) -> Path:
    """Run whatever is missing for ``preset`` in ``run_dir`` and write ``run_dir/report/report.html``.

    Args:
        preset: The loaded preset (an ``hf://`` model is resolved to its cached snapshot).
        run_dir: The run directory.
        log: Where progress lines go.

    Returns:
        The path of ``report.html`` (on a process other than the main one, where the main one writes it).

    Raises:
        PresetError: the preset fails validation, or its ``hf://`` model is not in the local cache.

    Example:
        >>> reproduce(load_preset("smoke"), "runs/smoke")  # doctest: +SKIP
        PosixPath('runs/smoke/report/report.html')
    """
    preset = resolve_model(preset)
    validate_preset(preset)
    run_dir = Path(run_dir)
    start = time.time()
    run = Run(preset, run_dir, log)  # one Run: each finished stage is checked and logged once
    if is_toy(preset) and is_main():
        run.base_dir()
    for stage in STAGES:
        run.stage(stage)
    for name in EXPERIMENTS:
        run_experiment(name, preset, run_dir, log)
    if not is_main():  # the report is the main process's; the others only helped train
        return RunLayout(run_dir).report / "report.html"
    path = write_report(preset, run_dir, log=log)
    log(f"[reproduce] {preset.name} done in {time.time() - start:.0f}s; report: {path}")
    return path
