"""Check a whole preset up front: every section it may use parses into its dataclass, so a typo or a bad value
fails in a second with one message instead of hours into a run."""

from __future__ import annotations

from analyses.agent_subspaces import SubspaceConfig
from analyses.malicious import MaliciousConfig
from analyses.study_report import ReportConfig
from training.evaluate import EvalConfig
from training.internalize import Stage2Config
from training.pipeline import ExperimentsConfig
from training.presets import Preset, PresetError
from training.runner import DebateConfig
from training.sft import Stage1Config
from training.tasks import TaskConfig
from training.teacher import TeacherConfig
from training.toy_base import BaseConfig, TokenizerConfig

SECTIONS = {
    "task": TaskConfig, "teacher": TeacherConfig, "tokenizer": TokenizerConfig, "base": BaseConfig,
    "debate": DebateConfig, "eval": EvalConfig, "sft": Stage1Config, "debategpt": Stage1Config,
    "internalize": Stage2Config,
    "experiments": ExperimentsConfig, "subspaces": SubspaceConfig, "malicious": MaliciousConfig,
    "report": ReportConfig,
}
OTHER_SECTIONS = ("meta", "model")


def validate_preset(preset: Preset) -> dict[str, object]:
    """Every known section of ``preset`` as its dataclass; raises `PresetError` on an unknown section or key."""
    unknown = sorted(set(preset.data) - set(SECTIONS) - set(OTHER_SECTIONS))
    if unknown:
        raise PresetError(f"preset {preset.name!r}: unknown section(s) {unknown}; "
                          f"valid: {sorted([*SECTIONS, *OTHER_SECTIONS])}")
    return {key: preset.section(key, cls) for key, cls in SECTIONS.items()}
