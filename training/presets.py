"""Presets: one TOML file per study scale in ``configs/`` (toy, smoke, and the paper's three models).

A preset may start from another with a top-level ``extends = "<preset name or path>"`` and state only what
differs: tables are merged key by key, anything else (numbers, strings, lists) is replaced. Command-line
overrides (``--set section.key=value``, TOML value syntax) are applied on top, before anything reads the preset.
Each section is a dataclass (the schema, see `training.schema`), and `Preset.validate` checks every section
at once, so a typo, a wrong type or an impossible value is one sentence before any work.

``[meta]`` and ``[model]`` belong to the preset itself and are defined here; every other section belongs to the
module that reads it, and the registry of all of them lives with the command line (``analyses/validate.py``),
the one place that sees both ``training/`` and ``analyses/``.
"""

from __future__ import annotations

import copy
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Mapping, Sequence, TypeVar

from training.errors import PresetError
from training.schema import NON_NEGATIVE, matches, non_finite, parse_section, toml_repr

__all__ = ["CONFIG_DIR", "MetaConfig", "ModelConfig", "Preset", "PresetError", "available_presets",
           "default_run_dir", "load_preset"]

CONFIG_DIR = Path(__file__).resolve().parents[1] / "configs"
EXTENDS = "extends"
T = TypeVar("T")


@dataclass(frozen=True)
class MetaConfig:
    """Preset section ``[meta]``: the preset's name (default: its file name; never inherited through
    ``extends``), a one-line description, and the seed every stage derives its randomness from."""

    name: str = ""
    description: str = ""
    seed: int = field(default=0, metadata=NON_NEGATIVE)


@dataclass(frozen=True)
class ModelConfig:
    """Preset section ``[model]``: the base model and how every stage loads it.

    ``path`` empty means the toy world (the base model is trained from scratch into the run dir); otherwise a
    local HF model dir or ``hf://<repo id>``, looked up in the local Hugging Face cache only. ``device`` ``auto``
    is CUDA when present; ``dtype`` ``auto`` is bfloat16 on CUDA and float32 elsewhere. The defaults (float32 on
    the CPU) are what every stage did before these keys existed. ``keep_hf``: the two experiments keep each model's
    HF twin beside its TransformerLens copy (`lens.load_model(keep_hf=True)`), which generates and reads
    activations about 2x faster on the toy but holds the weights twice; ``false`` for a model whose two copies do
    not fit on the device (the experiments then run on TransformerLens alone, same results up to float rounding).
    """

    path: str = ""
    device: str = field(default="cpu", metadata=matches(r"auto|cpu|cuda(:\d+)?", '"auto", "cpu", "cuda" or "cuda:<n>"'))
    dtype: Literal["float32", "bfloat16", "float16", "auto"] = "float32"
    gradient_checkpointing: bool = False
    keep_hf: bool = True

    def resolved_device(self) -> str:
        """The device stages load onto: ``auto`` becomes ``cuda`` when torch sees a GPU, else ``cpu``.

        Returns:
            ``cpu``, ``cuda`` or ``cuda:<n>``.

        Example:
            >>> from training.presets import ModelConfig
            >>> ModelConfig().resolved_device(), ModelConfig(device="cuda:1").resolved_device()
            ('cpu', 'cuda:1')
        """
        if self.device != "auto":
            return self.device
        import torch

        return "cuda" if torch.cuda.is_available() else "cpu"

    def resolved_dtype(self) -> str:
        """The dtype name stages load in: ``auto`` becomes ``bfloat16`` on CUDA, else ``float32``.

        Returns:
            ``float32``, ``bfloat16`` or ``float16``.

        Example:
            >>> from training.presets import ModelConfig
            >>> ModelConfig().resolved_dtype(), ModelConfig(dtype="bfloat16").resolved_dtype()
            ('float32', 'bfloat16')
        """
        if self.dtype != "auto":
            return self.dtype
        return "bfloat16" if self.resolved_device().startswith("cuda") else "float32"


@dataclass(frozen=True)
class Preset:
    """A loaded preset: ``data`` is the merged TOML (after ``extends`` and ``--set``), ``files`` the files it was
    merged from (the named one last) and ``overrides`` the ``--set`` items applied."""

    name: str
    path: Path
    data: dict
    files: tuple[Path, ...] = ()
    overrides: tuple[str, ...] = ()

    @property
    def seed(self) -> int:
        return self.meta.seed

    @property
    def meta(self) -> MetaConfig:
        return self.section("meta", MetaConfig)

    @property
    def model(self) -> ModelConfig:
        return self.section("model", ModelConfig)

    def section(self, key: str, cls: type[T]) -> T:
        """Section ``key`` as dataclass ``cls``, every value checked; missing keys take the dataclass defaults.

        Args:
            key: The section's name (``sft``, ``eval``, ...); a section the preset lacks takes every default.
            cls: The section's dataclass (its schema).

        Returns:
            The ``cls`` instance.

        Raises:
            PresetError: an unknown key, a wrong type or an impossible value, as one sentence.

        Example:
            >>> from training.presets import load_preset
            >>> from training.sft import Stage1Config
            >>> load_preset("smoke").section("sft", Stage1Config).max_steps
            4
        """
        return parse_section(cls, self.data.get(key, {}), f"preset {self.name!r} [{key}]")

    def validate(self, sections: Mapping[str, type]) -> dict[str, object]:
        """Every section of ``sections`` (plus ``[meta]`` and ``[model]``) parsed and checked at once.

        Args:
            sections: Section name → dataclass, for every section a preset may hold besides meta and model.

        Returns:
            Section name → its dataclass instance.

        Raises:
            PresetError: an unknown section, or the first bad key, as one sentence.

        Example:
            >>> from training.sft import Stage1Config
            >>> mine = Preset("mine", Path("mine.toml"), {"meta": {"seed": 1}, "sft": {"max_steps": 4}})
            >>> mine.validate({"sft": Stage1Config})["sft"].max_steps
            4
            >>> mine.validate({})
            Traceback (most recent call last):
            ...
            training.errors.PresetError: preset 'mine': unknown section [sft]; valid: meta, model
        """
        known = {"meta": MetaConfig, "model": ModelConfig, **sections}
        unknown = sorted(set(self.data) - set(known))
        if unknown:
            raise PresetError(f"preset {self.name!r}: unknown section{'s' if len(unknown) > 1 else ''} "
                              f"{', '.join(f'[{s}]' for s in unknown)}; valid: {', '.join(sorted(known))}")
        for key, value in self.data.items():
            if not isinstance(value, Mapping):
                raise PresetError(f"preset {self.name!r}: {key} = {toml_repr(value)} must be a section [{key}] "
                                  f"(a table), not a bare value")
        parsed = {key: self.section(key, cls) for key, cls in known.items()}
        bad = non_finite(self.data)
        if bad is not None:  # a float inside an untyped table or list, e.g. a schedule entry
            raise PresetError(f"preset {self.name!r}: {bad} is not a finite number; NaN and inf are never valid")
        return parsed


def available_presets(directory: Path = CONFIG_DIR) -> list[str]:
    """The preset names in ``directory``: the stems of its ``*.toml`` files, sorted.

    Args:
        directory: Where to look (default: ``configs/``).

    Returns:
        The names.

    Example:
        >>> from training.presets import available_presets
        >>> "smoke" in available_presets()
        True
    """
    return sorted(p.stem for p in directory.glob("*.toml"))


def _find(name_or_path: str | Path, near: Path | None = None) -> Path | None:
    """A preset file: a ``.toml`` path (relative to ``near``, else the working dir), or a name looked up
    beside ``near`` first, then in ``configs/``."""
    text = str(name_or_path)
    if text.endswith(".toml"):
        path = Path(text).expanduser()
        if not path.is_absolute() and near is not None:
            path = near / path
        return path if path.is_file() else None
    for directory in ([near] if near is not None else []) + [CONFIG_DIR]:
        if (directory / f"{text}.toml").is_file():
            return directory / f"{text}.toml"
    return None


def _read(path: Path) -> dict:
    try:
        return tomllib.loads(path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as e:
        raise PresetError(f"preset file {path} is not valid TOML: {e}") from None
    except UnicodeDecodeError as e:
        raise PresetError(f"preset file {path} is not UTF-8 text ({e.reason} at byte {e.start})") from None


def merge(base: dict, top: Mapping) -> dict:
    """``top`` over ``base``: tables merged key by key (recursively), every other value replaced.

    Args:
        base: The data merged onto (left unchanged).
        top: The data that wins.

    Returns:
        A new dict (``top``'s values deep-copied into it, ``base``'s shared).

    Example:
        >>> merge({"sft": {"lora_r": 64, "max_steps": 4}}, {"sft": {"max_steps": 2}})
        {'sft': {'lora_r': 64, 'max_steps': 2}}
    """
    out = dict(base)
    for key, value in top.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def _load_chain(path: Path, seen: tuple[Path, ...]) -> tuple[dict, tuple[Path, ...]]:
    """The merged data of ``path`` and everything it extends, and the files involved (base first)."""
    path = path.resolve()
    if path in seen:
        loop = " extends ".join(p.stem for p in (*seen[seen.index(path):], path))
        raise PresetError(f"preset {seen[0].stem!r} extends itself through {loop}; remove one of these extends")
    data = _read(path)
    if isinstance(data.setdefault("meta", {}), dict):
        data["meta"].setdefault("name", path.stem)  # a name is never inherited
    parent = data.pop(EXTENDS, None)
    if parent is None:
        return data, (path,)
    if not isinstance(parent, str) or not parent:
        raise PresetError(f"preset {path.stem!r}: extends = {toml_repr(parent)}: expected a preset name or a "
                          f"path to a .toml file")
    found = _find(parent, near=path.parent)
    if found is None:
        raise PresetError(f"preset {path.stem!r} extends {parent!r}, which is not found beside {path.parent} or "
                          f"in configs/; valid: {', '.join(available_presets())} or a path to a .toml file")
    base, files = _load_chain(found, (*seen, path))
    return merge(base, data), (*files, path)


def apply_set(data: dict, item: str) -> dict:
    """``data`` with one ``section.key=value`` override applied (the value in TOML syntax; ``a.b.c`` reaches
    into nested tables). Raises `PresetError` naming the item when it is malformed.

    Args:
        data: The preset data (left unchanged).
        item: ``section.key=value``, the value in TOML syntax.

    Returns:
        A deep copy of ``data`` with the value set (missing tables created).

    Raises:
        PresetError: no ``=`` or no section, a value over several lines or not valid TOML, or a path through a
            value that is not a table.

    Example:
        >>> apply_set({"sft": {"max_steps": 4}}, "sft.max_steps=2")
        {'sft': {'max_steps': 2}}
    """
    key, sep, text = item.partition("=")
    parts = key.strip().split(".")
    if not sep or len(parts) < 2 or not all(p.strip() for p in parts):
        raise PresetError(f"--set {item!r} is not section.key=value; for example --set sft.max_steps=2")
    if "\n" in text:
        raise PresetError(f"--set {item!r}: the value must be on one line")
    try:
        value = tomllib.loads(f"v = {text.strip()}")["v"]
    except tomllib.TOMLDecodeError:
        raise PresetError(f"--set {item!r}: {text.strip()!r} is not a TOML value; write numbers as 2 or 1e-4, "
                          f'booleans as true, strings in double quotes ({key.strip()}="..."), lists as [1, 2]') from None
    out = copy.deepcopy(data)
    table = out
    for i, part in enumerate(parts[:-1]):
        table = table.setdefault(part.strip(), {})
        if not isinstance(table, dict):
            raise PresetError(f"--set {item!r}: {'.'.join(parts[:i + 1])} is a value, not a table")
    table[parts[-1].strip()] = value
    return out


def load_preset(name_or_path: str | Path, overrides: Sequence[str] = ()) -> Preset:
    """A preset by name (``toy``, ``smoke``, ``llama3.1-8b``, ...) or by path to a TOML file.

    Args:
        name_or_path: A name in ``configs/`` or a path to a ``.toml`` file.
        overrides: ``section.key=value`` items (TOML values), applied in order after ``extends``.

    Returns:
        The `Preset`. Sections are checked when read; `Preset.validate` checks all of them at once.

    Raises:
        PresetError: a missing file, bad TOML, an ``extends`` cycle or missing parent, a malformed override.

    Example:
        >>> load_preset("smoke", ["sft.max_steps=2"]).data["sft"]["max_steps"]
        2
    """
    path = _find(name_or_path)
    if path is None:
        raise PresetError(f"unknown preset {str(name_or_path)!r}; valid: {', '.join(available_presets())} "
                          f"or a path to a .toml file")
    data, files = _load_chain(path, ())
    for item in overrides:
        data = apply_set(data, item)
    name = data["meta"].get("name") if isinstance(data.get("meta"), dict) else None
    return Preset(name=str(name or path.stem), path=path, data=data, files=files, overrides=tuple(overrides))


def default_run_dir(preset: Preset, run_dir: str | Path | None = None) -> Path:
    """``runs/<preset>/`` under the current directory unless ``run_dir`` says otherwise.

    Args:
        preset: The preset (its name).
        run_dir: The run directory the user gave, if any.

    Returns:
        ``Path(run_dir)``, else ``runs/<preset name>``.

    Example:
        >>> from training.presets import default_run_dir, load_preset
        >>> default_run_dir(load_preset("smoke"))
        PosixPath('runs/smoke')
    """
    return Path(run_dir) if run_dir is not None else Path("runs") / preset.name
