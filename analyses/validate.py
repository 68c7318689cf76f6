"""Check a whole preset up front: every section parses into its dataclass with the right types and ranges, so a
typo or a bad value fails in a second with one sentence instead of hours into a run.

The registry of sections lives here because this is the one package that sees the config classes of both
``training/`` and ``analyses/`` (``training/`` never imports ``analyses/``); the checking itself is
`training.presets.Preset.validate`.
"""

from __future__ import annotations

from analyses.agent_subspaces import SubspaceConfig
from analyses.malicious import MaliciousConfig
from analyses.study_report import ReportConfig
from training.evaluate import EvalConfig
from training.internalize import Stage2Config
from training.llm_judge import JudgeConfig
from training.pipeline import ExperimentsConfig
from training.presets import Preset
from training.runner import DebateConfig
from training.schema import parse_section
from training.sft import Stage1Config
from training.tasks import TaskConfig
from training.teacher import TeacherConfig
from training.toy_base import BaseConfig, TokenizerConfig

SECTIONS: dict[str, type] = {
    "task": TaskConfig, "teacher": TeacherConfig, "tokenizer": TokenizerConfig, "base": BaseConfig,
    "debate": DebateConfig, "eval": EvalConfig, "sft": Stage1Config, "debategpt": Stage1Config,
    "internalize": Stage2Config, "judge": JudgeConfig,
    "experiments": ExperimentsConfig, "subspaces": SubspaceConfig, "malicious": MaliciousConfig,
    "report": ReportConfig,
}


def validate_preset(preset: Preset) -> dict[str, object]:
    """Every section of ``preset`` as its dataclass, and each experiment's overridden sections checked too.

    Args:
        preset: The loaded preset (after ``extends`` and ``--set``).

    Returns:
        Section name → its dataclass instance (``meta`` and ``model`` included).

    Raises:
        PresetError: an unknown section or key, a wrong type or an impossible value, as one sentence.

    Example:
        >>> from training.presets import load_preset
        >>> validate_preset(load_preset("smoke", ["sft.max_steps=2"]))["sft"].max_steps
        2
    """
    parsed = preset.validate(SECTIONS)
    experiments: ExperimentsConfig = parsed["experiments"]
    for exp, sections in experiments.overrides.items():
        for key, values in sections.items():
            merged = {**preset.data.get(key, {}), **values}  # as training.pipeline.experiment_section merges
            parse_section(SECTIONS[key], merged, f"preset {preset.name!r} [experiments] overrides.{exp}.{key}")
    return parsed
