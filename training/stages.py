"""Cached, resumable stages: each stage builds its artifact in a scratch dir, then renames it into place.

A stage whose directory holds a ``stage.json`` manifest (written last) is done and is skipped on rerun; a
killed stage leaves only its scratch dir, which the next run removes and rebuilds.
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path
from typing import Callable

from lens.io import atomic_write_json

MANIFEST = "stage.json"


def stage_done(path: Path) -> bool:
    return (path / MANIFEST).is_file()


def read_json(path: str | Path) -> dict | None:
    """The JSON object in ``path``, or ``None`` when there is no such file."""
    path = Path(path)
    return json.loads(path.read_text()) if path.is_file() else None


def read_manifest(path: Path) -> dict:
    return read_json(path / MANIFEST)


def run_stage(path: str | Path, build: Callable[[Path], dict], *, name: str | None = None,
              log: Callable[[str], None] = print) -> dict:
    """Run ``build(scratch_dir) -> info`` unless ``path`` is already a finished stage; return its manifest."""
    path = Path(path)
    name = name or path.name
    if stage_done(path):
        log(f"[{name}] cached at {path}, skipping")
        return read_manifest(path)
    scratch = path.with_name(path.name + ".partial")
    keep = scratch / "resume"  # a stage may keep checkpoints here to resume a killed run
    if scratch.exists():
        for child in scratch.iterdir():
            if child != keep:
                shutil.rmtree(child) if child.is_dir() else child.unlink()
    scratch.mkdir(parents=True, exist_ok=True)
    start = time.time()
    info = build(scratch) or {}
    shutil.rmtree(keep, ignore_errors=True)
    manifest = {"stage": name, "wall_seconds": round(time.time() - start, 2), **info}
    atomic_write_json(scratch / MANIFEST, manifest)
    if path.exists():
        shutil.rmtree(path)
    scratch.rename(path)
    log(f"[{name}] done in {manifest['wall_seconds']:.1f}s -> {path}")
    return manifest
