"""Presets: one TOML file per study scale in ``configs/`` (toy, smoke, and the paper's three models).

Each module owns one section and reads it into its own dataclass with `Preset.section`, which rejects unknown
keys by name, so a typo in a preset is one clear error rather than a silently ignored knob.
"""

from __future__ import annotations

import dataclasses
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

CONFIG_DIR = Path(__file__).resolve().parents[1] / "configs"
T = TypeVar("T")


class PresetError(ValueError):
    """A preset that cannot be found or does not validate."""


@dataclass(frozen=True)
class Preset:
    name: str
    path: Path
    data: dict

    @property
    def seed(self) -> int:
        return int(self.data.get("meta", {}).get("seed", 0))

    def section(self, key: str, cls: type[T]) -> T:
        """Section ``key`` as dataclass ``cls``; missing keys take the dataclass defaults."""
        raw = self.data.get(key, {})
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(raw) - names)
        if unknown:
            raise PresetError(f"preset {self.name!r} section [{key}]: unknown key(s) {unknown}; valid: {sorted(names)}")
        try:
            return cls(**raw)
        except (TypeError, ValueError) as e:
            raise PresetError(f"preset {self.name!r} section [{key}]: {e}") from None


def available_presets() -> list[str]:
    return sorted(p.stem for p in CONFIG_DIR.glob("*.toml"))


def load_preset(name_or_path: str | Path) -> Preset:
    """A preset by name (``toy``, ``smoke``, ``llama3.1-8b``, ...) or by path to a TOML file."""
    path = Path(name_or_path)
    if path.suffix != ".toml":
        path = CONFIG_DIR / f"{name_or_path}.toml"
    if not path.is_file():
        raise PresetError(f"unknown preset {str(name_or_path)!r}; valid: {available_presets()} or a path to a .toml file")
    try:
        data = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as e:
        raise PresetError(f"preset file {path} is not valid TOML: {e}") from None
    return Preset(name=data.get("meta", {}).get("name", path.stem), path=path, data=data)


def default_run_dir(preset: Preset, run_dir: str | Path | None = None) -> Path:
    """``runs/<preset>/`` under the current directory unless ``run_dir`` says otherwise."""
    return Path(run_dir) if run_dir is not None else Path("runs") / preset.name
