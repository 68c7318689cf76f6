"""Saved experiment results: each experiment writes ``results.json`` under ``analyses/<name>/`` of the run dir."""

from __future__ import annotations

import json
from pathlib import Path

from training.layout import RunLayout

RESULTS = "results.json"


def load_results(run_dir: str | Path, experiment: str) -> dict:
    """The saved results of a finished experiment.

    Args:
        run_dir: The run directory.
        experiment: ``agent_subspaces`` or ``malicious``.

    Returns:
        The experiment's ``results.json``.

    Example:
        >>> load_results("runs/toy", "agent_subspaces")["auc"]  # doctest: +SKIP
    """
    path = RunLayout(Path(run_dir)).analysis(experiment) / RESULTS
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist; run `latent-agents reproduce` for this run first")
    return json.loads(path.read_text())
