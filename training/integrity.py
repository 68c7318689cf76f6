"""Integrity of stage artifacts: size, modification time and SHA-256 of each file, recorded once at build time.

Reading a finished stage checks every file's size and mtime (a stat, cheap at any scale); the full hash is
recomputed only on request (`verify` / ``--verify``) or when a file's mtime moved, so a model of tens of GB is
hashed once, when it is written, and never on every read.
"""

from __future__ import annotations

import hashlib
import math
import os
from pathlib import Path

from training.errors import UserError

CHUNK = 1 << 22


class IntegrityError(UserError, ValueError):
    """A stage artifact that is missing, truncated or changed since the stage that wrote it finished."""


def hash_file(path: str | Path) -> str:
    """SHA-256 of a file, read in chunks.

    Args:
        path: the file.

    Returns:
        The hex digest.

    Example:
        >>> hash_file("runs/smoke/sft/main/model.safetensors")[:8]  # doctest: +SKIP
        '3f1c9a0b'
    """
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            h.update(chunk)
    return h.hexdigest()


def file_record(path: str | Path, previous: dict | None = None) -> dict:
    """``{"size", "mtime_ns", "sha256"}`` of ``path``; the hash is taken from ``previous`` (an earlier record
    of the same file) when size and mtime are unchanged, so unchanged files are not re-read.

    Args:
        path: the file.
        previous: an earlier record of this file, or None.

    Returns:
        The record.

    Example:
        >>> file_record("runs/smoke/debates/main/transcripts.jsonl")["size"]  # doctest: +SKIP
        81234
    """
    st = os.stat(path)
    if previous and previous.get("size") == st.st_size and previous.get("mtime_ns") == st.st_mtime_ns:
        return {"size": st.st_size, "mtime_ns": st.st_mtime_ns, "sha256": previous["sha256"]}
    return {"size": st.st_size, "mtime_ns": st.st_mtime_ns, "sha256": hash_file(path)}


def tree_records(root: str | Path, *, exclude: tuple[str, ...] = (), previous: dict | None = None) -> dict:
    """A `file_record` for every regular file under ``root``, keyed by its path relative to ``root`` (POSIX).

    Args:
        root: the directory.
        exclude: relative paths to leave out (the manifest itself).
        previous: earlier records keyed the same way, whose hashes are reused for unchanged files.

    Returns:
        ``{relative_path: record}``, sorted by path.

    Example:
        >>> sorted(tree_records("runs/smoke/base"))[:2]  # doctest: +SKIP
        ['base_eval.json', 'config.json']
    """
    root, previous = Path(root), previous or {}
    out = {}
    for path in sorted(p for p in root.rglob("*") if p.is_file() and not p.is_symlink()):
        rel = path.relative_to(root).as_posix()
        if rel not in exclude:
            out[rel] = file_record(path, previous.get(rel))
    return out


def digest(records: dict) -> str:
    """One hash for a set of files: their relative paths, sizes and SHA-256s (not their mtimes).

    Args:
        records: ``{relative_path: record}`` as `tree_records` gives.

    Returns:
        The hex digest.

    Example:
        >>> digest({"a.txt": {"size": 1, "sha256": "00"}})[:8]  # doctest: +SKIP
        '9c1a2d44'
    """
    h = hashlib.sha256()
    for rel in sorted(records):
        h.update(f"{rel}\0{records[rel]['size']}\0{records[rel]['sha256']}\n".encode())
    return h.hexdigest()


def check_records(root: str | Path, records: dict, *, writer: str, full: bool = False) -> list[str]:
    """Problems with the files under ``root`` against the ``records`` that stage ``writer`` made of them.

    Every file's size and mtime are compared; its SHA-256 is recomputed when ``full`` is set or its mtime
    moved (a touched but unchanged file passes).

    Args:
        root: the stage directory.
        records: ``{relative_path: record}`` from the stage's manifest.
        writer: the stage's name, for the messages.
        full: recompute every hash.

    Returns:
        One sentence per damaged file (empty when all is well).

    Example:
        >>> check_records("runs/smoke/sft/main", manifest["outputs"], writer="sft/main")  # doctest: +SKIP
        []
    """
    root, problems = Path(root), []
    for rel, rec in records.items():
        path = root / rel
        if not path.is_file():
            problems.append(f"{path} is missing; stage {writer} wrote it ({_size(rec['size'])})")
            continue
        st = path.stat()
        if st.st_size != rec["size"]:
            how = "truncated" if st.st_size < rec["size"] else "changed"
            problems.append(f"{path} is {_size(st.st_size)} but stage {writer} wrote {_size(rec['size'])}: "
                            f"it was {how} after the stage finished")
        elif (full or st.st_mtime_ns != rec.get("mtime_ns")) and hash_file(path) != rec["sha256"]:
            problems.append(f"{path} has the size stage {writer} wrote but different contents (SHA-256 differs): "
                            "it was corrupted or overwritten after the stage finished")
    return problems


def first_non_finite(obj, where: str = "") -> str | None:
    """The JSON path of the first non-finite number (NaN, ±inf) in ``obj``, or None when every number is finite.

    Args:
        obj: a JSON-like value (dicts, lists, numbers, strings).
        where: the path of ``obj`` itself, for the answer.

    Returns:
        A path like ``curves[2].alpha = nan``, or None.

    Example:
        >>> first_non_finite({"curves": [{"alpha": float("nan")}]})
        'curves[0].alpha = nan'
    """
    if isinstance(obj, float) and not math.isfinite(obj):
        return f"{where or 'value'} = {obj}"
    if isinstance(obj, dict):
        items = ((f"{where}.{k}" if where else str(k), v) for k, v in obj.items())
    elif isinstance(obj, (list, tuple)):
        items = ((f"{where}[{i}]", v) for i, v in enumerate(obj))
    else:
        return None
    for path, value in items:
        found = first_non_finite(value, path)
        if found:
            return found
    return None


def _size(n: int) -> str:
    return f"{n:,} bytes"
