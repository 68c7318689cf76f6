"""Atomic file writes: a reader never sees a half-written artifact, and a crash leaves the old one intact."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any, Callable

import torch
from safetensors.torch import save_file


def _atomic(path: Path, write) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(Path(tmp))
        os.chmod(tmp, 0o644)  # mkstemp creates 0600; artifacts are meant to be shared
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def atomic_write_with(path: str | Path, write: Callable[[Path], Any]) -> Path:
    """Call ``write(tmp)`` with a temporary path beside ``path`` (for writers that want a path, e.g. gguf's), then
    move the finished file into place; on any error nothing is left behind."""
    return _atomic(Path(path), write)


def atomic_write_text(path: str | Path, text: str) -> Path:
    return _atomic(Path(path), lambda p: p.write_text(text))


def atomic_write_bytes(path: str | Path, data: bytes) -> Path:
    return _atomic(Path(path), lambda p: p.write_bytes(data))


def atomic_write_json(path: str | Path, obj: Any) -> Path:
    return atomic_write_text(path, json.dumps(obj, indent=2, default=str) + "\n")


def atomic_save_tensors(path: str | Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str] | None = None) -> Path:
    contiguous = {k: v.detach().cpu().contiguous() for k, v in tensors.items()}
    return _atomic(Path(path), lambda p: save_file(contiguous, str(p), metadata=metadata))
