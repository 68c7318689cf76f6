"""Cached, resumable stages keyed by what built them.

A stage builds its artifact in a scratch dir (``<name>.partial``), then renames it into place. Its manifest
(``stage.json``, written last) records a fingerprint of the preset values the stage read and of its inputs
(upstream stages by the digest of their outputs, other files and dirs by size and SHA-256), and the size, mtime
and SHA-256 of every file it wrote. A rerun reuses the stage only when the fingerprint still matches; otherwise
it rebuilds and says in one line which value or input changed (or, with ``keep_stale``, keeps it with a warning
that the report repeats). A stage whose summary holds non-finite numbers, or that wrote an empty file, fails
instead of being cached. Reading a finished stage checks its files' sizes and mtimes; ``verify`` rehashes them.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping

from lens.io import atomic_write_json
from training.checkpoints import disk_full_guard
from training.errors import UserError
from training.integrity import (IntegrityError, check_records, digest, file_record, first_non_finite,
                                tree_records)

MANIFEST = "stage.json"
RESUME = "resume"
KEEP_STALE_ENV = "LATENT_AGENTS_KEEP_STALE"
VERIFY_ENV = "LATENT_AGENTS_VERIFY"
_RESERVED = ("stage", "wall_seconds", "fingerprint", "built_from", "outputs", "outputs_digest", "kept_stale")
# a stage's summaries, which must hold finite numbers only (raw per-sample dumps may mark unscorable samples NaN)
SUMMARY_FILES = ("results.json", "metrics.json")


class StageError(UserError, ValueError):
    """A stage that cannot be built or trusted: invalid results, or a stale cache that must not be used."""


@dataclass(frozen=True)
class Fingerprint:
    """What a stage was (or would be) built from: flat preset values, input records, and their one hash.

    ``keys`` maps display names (``[sft] max_steps``, ``seed``) to JSON values; ``inputs`` maps input names to
    records whose ``id`` is what counts (a stage's output digest, a file's size and hash)."""

    keys: dict
    inputs: dict
    digest: str

    def to_json(self) -> dict:
        """Returns:
            ``{"keys": ..., "inputs": ...}``, as a manifest's ``built_from`` records it.

        Example:
            >>> from training.stages import fingerprint
            >>> fingerprint({"seed": 0}).to_json()
            {'keys': {'seed': 0}, 'inputs': {}}
        """
        return {"keys": self.keys, "inputs": self.inputs}


def _jsonable(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return _jsonable(dataclasses.asdict(value))
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, Path):
        return str(value.expanduser().resolve())
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    return repr(value)


def flatten_keys(keys: Mapping[str, Any]) -> dict:
    """Preset values as flat display names: a section (a dataclass or dict) becomes ``[section] key`` entries,
    nested dicts ``[section] key.sub``; a plain value keeps its name.

    Args:
        keys: ``{"sft": Stage1Config(...), "seed": 0}`` and the like.

    Returns:
        ``{"[sft] max_steps": 4, ..., "seed": 0}`` with JSON values (paths resolved, tuples as lists).

    Example:
        >>> flatten_keys({"sft": {"max_steps": 4}, "seed": 0})
        {'[sft] max_steps': 4, 'seed': 0}
    """
    flat = {}

    def walk(prefix: str, value: Any) -> None:
        if isinstance(value, dict) and value:
            for k, v in value.items():
                walk(f"{prefix}.{k}", v)
        else:
            flat[prefix] = value

    for name, value in keys.items():
        value = _jsonable(value)
        if isinstance(value, dict):
            for k, v in value.items():
                walk(f"[{name}] {k}", v)
        else:
            flat[name] = value
    return dict(sorted(flat.items()))


def _stage_root(path: Path) -> Path | None:
    """The finished stage dir that holds ``path`` (itself or an ancestor), if any."""
    for p in (path, *path.parents):
        if (p / MANIFEST).is_file():
            return p
    return None


def _input_record(path: Path, previous: dict | None, *, full: bool) -> dict:
    """The record of one input: a finished stage (or a file in one) by its manifest's hashes, checked against
    size and mtime; any other file or dir by its own size and SHA-256 (reused from ``previous`` when its size
    and mtime did not move)."""
    path = Path(path)
    root = _stage_root(path) if path.exists() else None
    if root is not None:
        manifest = read_manifest(root)
        stage = manifest.get("stage", root.name)
        if "outputs" not in manifest:
            return {"stage": stage, "path": str(path), "id": "unfingerprinted"}
        rel = path.relative_to(root).as_posix()
        records = manifest["outputs"] if rel == "." else {
            k: v for k, v in manifest["outputs"].items() if k == rel or k.startswith(rel + "/")}
        problems = check_records(root, records, writer=stage, full=full)
        if problems:
            raise IntegrityError(problems[0] + f"; delete {root} and rerun to rebuild it")
        ident = manifest["outputs_digest"] if rel == "." else digest(records)
        return {"stage": stage, "path": str(path), "id": ident, **({"kept_stale": True}
                                                                   if manifest.get("kept_stale") else {})}
    if path.is_file():
        rec = file_record(path, previous if previous and "sha256" in previous else None)
        return {"file": str(path), **rec, "id": f"{rec['size']}:{rec['sha256']}"}
    if path.is_dir():
        files = tree_records(path, previous=(previous or {}).get("files"))
        return {"dir": str(path), "files": files, "id": digest(files)}
    return {"missing": str(path), "id": "missing"}


def fingerprint(keys: Mapping[str, Any] | None = None, inputs: Mapping[str, str | Path] | None = None, *,
                previous: dict | None = None, full: bool = False) -> Fingerprint:
    """The fingerprint of a stage that reads preset values ``keys`` and the files, dirs or stages ``inputs``.

    Args:
        keys: the preset values the stage reads (section dataclasses after ``extends``/``--set``, the seed...).
        inputs: named paths the stage reads: an upstream stage dir, a file in one, or any other file or dir.
        previous: the ``built_from`` of an earlier manifest, whose file hashes are reused for inputs whose size
            and mtime did not change (so a 16 GB base model is hashed once).
        full: rehash upstream stages' outputs instead of trusting size and mtime.

    Returns:
        The `Fingerprint`.

    Raises:
        IntegrityError: an upstream stage's file was truncated or changed after that stage finished.

    Example:
        >>> fp = fingerprint({"sft": cfg, "seed": 0}, {"debates": run_dir / "debates" / "main"})  # doctest: +SKIP
        >>> stage_status(run_dir / "sft" / "main", fp)  # doctest: +SKIP
        ('stale', '[sft] max_steps 4 -> 3')
    """
    flat = flatten_keys(keys or {})
    prev_inputs = (previous or {}).get("inputs", {})
    recs = {name: _input_record(Path(p), prev_inputs.get(name), full=full) for name, p in sorted((inputs or {}).items())}
    body = json.dumps({"keys": flat, "inputs": {k: v["id"] for k, v in recs.items()}}, sort_keys=True, default=str)
    return Fingerprint(flat, recs, hashlib.sha256(body.encode()).hexdigest())


def _show(value: Any) -> str:
    return json.dumps(value, default=str)


def stale_reasons(old: dict | None, new: Fingerprint) -> list[str]:
    """What differs between a manifest's ``built_from`` and ``new``, one phrase per key or input.

    Args:
        old: the manifest's ``built_from`` (None for a manifest written before stages were fingerprinted).
        new: the fingerprint now.

    Returns:
        Phrases like ``[sft] max_steps 4 -> 3`` or ``input debates (debates/main) was rebuilt``; empty when equal.

    Example:
        >>> stale_reasons({"keys": {"seed": 0}, "inputs": {}}, fingerprint({"seed": 1}))
        ['seed 0 -> 1']
    """
    if old is None:
        return ["it was built before stages recorded what built them"]
    out = []
    for k in sorted(set(old.get("keys", {})) | set(new.keys)):
        a, b = old.get("keys", {}).get(k, "<unset>"), new.keys.get(k, "<unset>")
        if a != b:
            out.append(f"{k} {_show(a)} -> {_show(b)}")
    old_in = old.get("inputs", {})
    for name in sorted(set(old_in) | set(new.inputs)):
        a, b = old_in.get(name), new.inputs.get(name)
        if a is None or b is None:
            out.append(f"input {name} was {'added' if a is None else 'removed'}")
        elif a["id"] != b["id"]:
            out.append(_input_change(name, a, b))
    return out


def _input_change(name: str, a: dict, b: dict) -> str:
    if b.get("id") == "missing":
        return f"input {name} ({b['missing']}) is not built yet"
    if "stage" in b:
        which = f"stage {name}" if name == b["stage"] else f"{name} (stage {b['stage']})"
        return f"input {which} was rebuilt with other results"
    if "file" in b and a.get("size") != b.get("size"):
        return f"input {name} ({b['file']}) changed size {a.get('size')} -> {b['size']} bytes"
    return f"input {name} ({b.get('file') or b.get('dir')}) changed contents"


def _summary(reasons: list[str], limit: int = 3) -> str:
    more = len(reasons) - limit
    return ", ".join(reasons[:limit]) + (f" and {more} more" if more > 0 else "")


def stage_done(path: str | Path) -> bool:
    """Whether the stage at ``path`` finished: its manifest (``stage.json``) exists.

    Args:
        path: The stage dir.

    Returns:
        True when the manifest is there (whatever it records).

    Example:
        >>> stage_done("runs/smoke/sft/main")  # doctest: +SKIP
        True
    """
    return (Path(path) / MANIFEST).is_file()


def read_json(path: str | Path) -> dict | None:
    """The JSON object in ``path``, or ``None`` when there is no such file.

    Args:
        path: The JSON file.

    Returns:
        The parsed JSON, or ``None``.

    Example:
        >>> read_json("runs/smoke/sft/main/metrics.json")["steps"]  # doctest: +SKIP
        4
    """
    path = Path(path)
    return json.loads(path.read_text()) if path.is_file() else None


def read_manifest(path: str | Path) -> dict | None:
    """The manifest (``stage.json``) of the stage at ``path``.

    Args:
        path: The stage dir.

    Returns:
        The manifest, or ``None`` when the stage has none.

    Example:
        >>> read_manifest("runs/smoke/sft/main")["stage"]  # doctest: +SKIP
        'sft/main'
    """
    return read_json(Path(path) / MANIFEST)


def verify_stage(path: str | Path, *, full: bool = True) -> list[str]:
    """Problems with a finished stage's files against its manifest (sizes and mtimes; every hash when ``full``).

    Args:
        path: the stage dir.
        full: rehash every file (the default: this is the on-request check).

    Returns:
        One sentence per damaged file (or one saying the dir is not a finished stage); empty when intact.

    Example:
        >>> verify_stage("runs/smoke/sft/main")  # doctest: +SKIP
        []
    """
    manifest = read_manifest(path)
    if manifest is None:
        return [f"{path} is not a finished stage (it has no {MANIFEST}); run the stage before verifying it"]
    if "outputs" not in manifest:
        return [f"{path} has no record of its files (built before stages recorded them); it will be rebuilt"]
    return check_records(path, manifest["outputs"], writer=manifest.get("stage", Path(path).name), full=full)


def verify_run(run_dir: str | Path, *, full: bool = True) -> dict[str, list[str]]:
    """`verify_stage` for every finished stage under ``run_dir``.

    Args:
        run_dir: the run directory.
        full: rehash every file.

    Returns:
        ``{stage dir: problems}`` for the damaged stages only.

    Example:
        >>> verify_run("runs/smoke")  # doctest: +SKIP
        {}
    """
    out = {}
    for manifest in sorted(Path(run_dir).rglob(MANIFEST)):
        problems = verify_stage(manifest.parent, full=full)
        if problems:
            out[str(manifest.parent)] = problems
    return out


def stage_status(path: str | Path, fp: Fingerprint) -> tuple[str, str]:
    """Where a stage stands against the fingerprint it would be built with now, without building anything.

    Args:
        path: the stage dir.
        fp: `fingerprint` of the keys and inputs the stage would read now.

    Returns:
        ``(state, why)``: ``("cached", "")``; ``("stale", "[sft] max_steps 4 -> 3")``; ``("damaged", sentence)``;
        ``("resumable", ...)`` when a killed run left checkpoints for this fingerprint; ``("missing", "not built
        yet")``.

    Example:
        >>> stage_status("runs/smoke/sft/main", fingerprint({"sft": cfg, "seed": 0}, inputs))  # doctest: +SKIP
        ('cached', '')
    """
    path = Path(path)
    if stage_done(path):
        manifest = read_manifest(path)
        if manifest.get("fingerprint") != fp.digest:
            return "stale", _summary(stale_reasons(manifest.get("built_from"), fp))
        problems = verify_stage(path, full=False)
        return ("damaged", problems[0]) if problems else ("cached", "")
    resume = _scratch(path) / RESUME
    if _resume_matches(resume, fp) and any(resume.iterdir()):
        return "resumable", "a killed run left checkpoints for these settings; it resumes from them"
    return "missing", "not built yet"


def status_now(path: str | Path, keys: Mapping[str, Any] | None = None,
               inputs: Mapping[str, str | Path] | None = None) -> tuple[str, str]:
    """`stage_status` against the ``keys`` and ``inputs`` the stage would read now, reusing the manifest's file
    hashes for unchanged inputs (so a large base model is not rehashed); a damaged input is ``damaged`` too.

    Args:
        path: the stage dir.
        keys: as for `run_stage`.
        inputs: as for `run_stage`.

    Returns:
        ``(state, why)`` as `stage_status` gives.

    Example:
        >>> status_now("runs/smoke/sft/main", {"sft": cfg, "seed": 0}, inputs)  # doctest: +SKIP
        ('cached', '')
    """
    old = read_manifest(path) if stage_done(path) else None
    try:
        fp = fingerprint(keys, inputs, previous=(old or {}).get("built_from"))
    except IntegrityError as e:
        return "damaged", str(e)
    return stage_status(path, fp)


def stale_stages(run_dir: str | Path) -> list[tuple[str, str]]:
    """The stages under ``run_dir`` kept although stale (``keep_stale``), with why, for the report to repeat.

    Args:
        run_dir: the run directory.

    Returns:
        ``[(stage name, why)]``.

    Example:
        >>> stale_stages("runs/smoke")  # doctest: +SKIP
        [('sft/main', '[sft] max_steps 4 -> 3')]
    """
    out = []
    for manifest in sorted(Path(run_dir).rglob(MANIFEST)):
        m = json.loads(manifest.read_text())
        if m.get("kept_stale"):
            out.append((m.get("stage", manifest.parent.name), m["kept_stale"]))
    return out


def _scratch(path: Path) -> Path:
    return path.with_name(path.name + ".partial")


def _resume_matches(resume: Path, fp: Fingerprint) -> bool:
    stamp = resume / "fingerprint.json"
    try:
        return json.loads(stamp.read_text())["digest"] == fp.digest
    except (OSError, ValueError, KeyError):
        return False


def _env_flag(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() not in ("", "0", "false", "no")


def invalid_results(scratch: Path, info: dict) -> str | None:
    """Why a stage's results must not be cached: a non-finite number in ``info`` or in a summary file
    (`SUMMARY_FILES`, anywhere in the stage dir), an empty file, or no files at all; None when they are fine.

    Args:
        scratch: the built stage dir.
        info: the summary ``build`` returned.

    Returns:
        One phrase, or None.

    Example:
        >>> invalid_results(Path("runs/smoke/analyses/malicious.partial"), {})  # doctest: +SKIP
        'results.json holds a non-finite number (traits.evil.best_alpha = nan)'
    """
    bad = first_non_finite(info)
    if bad:
        return f"its summary holds a non-finite number ({bad})"
    files = [p for p in sorted(scratch.rglob("*")) if p.is_file()]
    if not files:
        return "it wrote no files"
    for p in files:
        rel = p.relative_to(scratch).as_posix()
        size = p.stat().st_size
        if size == 0:
            return f"it wrote an empty file {rel}"
        if p.name in SUMMARY_FILES:
            bad = first_non_finite(json.loads(p.read_text()))
            if bad:
                return f"{rel} holds a non-finite number ({bad})"
    return None


def run_stage(path: str | Path, build: Callable[[Path], dict], *, name: str | None = None,
              keys: Mapping[str, Any] | None = None, inputs: Mapping[str, str | Path] | None = None,
              log: Callable[[str], None] = print, keep_stale: bool | None = None,
              verify: bool | None = None) -> dict:
    """Run ``build(scratch_dir) -> info`` unless ``path`` holds a finished stage built from the same ``keys``
    and ``inputs``; return its manifest.

    A stale stage (preset values or inputs changed, or no fingerprint at all) is rebuilt, with one line saying
    what changed; with ``keep_stale`` it is kept and marked, so the report can repeat the warning. The old
    stage stays in place until the new one is complete. Checkpoints a build keeps in ``scratch/resume`` survive a
    kill and are reused by the next run with the same fingerprint (discarded, with a line, otherwise).

    Args:
        path: the stage dir.
        build: writes the artifact into the scratch dir it is given; returns a JSON summary for the manifest.
        name: the stage's name in logs (default: the dir name).
        keys: the preset values the stage reads (see `fingerprint`).
        inputs: the paths the stage reads (see `fingerprint`).
        log: where the status lines go.
        keep_stale: keep a stale stage (default: the ``LATENT_AGENTS_KEEP_STALE`` environment variable).
        verify: rehash the files of the stage and of its input stages (default: ``LATENT_AGENTS_VERIFY``).

    Returns:
        The manifest.

    Raises:
        StageError: a preset value in ``keys`` is NaN or infinite, or the build's summary holds non-finite numbers
            or it wrote an empty file (nothing is cached).
        IntegrityError: a file of this stage or of an input stage was truncated or changed since it was written.
        DiskFullError: the disk filled up while building (the previous state is intact).

    Example:
        >>> run_stage(run_dir / "sft" / "main", build, keys={"sft": cfg, "seed": 0},
        ...           inputs={"base": run_dir / "base", "debates": run_dir / "debates" / "main"})  # doctest: +SKIP
        [sft/main] stale: [sft] max_steps 4 -> 3; rebuilding
    """
    path = Path(path)
    name = name or path.name
    keep_stale = _env_flag(KEEP_STALE_ENV) if keep_stale is None else keep_stale
    verify = _env_flag(VERIFY_ENV) if verify is None else verify
    bad = first_non_finite(flatten_keys(keys or {}))
    if bad:
        raise StageError(f"stage {name} would read a non-finite preset value ({bad}); "
                         "use finite numbers")
    old = read_manifest(path) if stage_done(path) else None
    fp = fingerprint(keys, inputs, previous=(old or {}).get("built_from"), full=verify)
    scratch = _scratch(path)
    if old is None and _promote_finished(path, scratch, fp):
        old = read_manifest(path)
    if old is not None:
        manifest = _reuse(path, old, fp, name, log, keep_stale=keep_stale, verify=verify)
        if manifest is not None:
            return manifest
    return _build(path, scratch, build, fp, name, log)


def _reuse(path: Path, old: dict, fp: Fingerprint, name: str, log: Callable[[str], None], *, keep_stale: bool,
           verify: bool) -> dict | None:
    """The cached manifest when the stage can be used as it is (None to rebuild)."""
    if old.get("fingerprint") == fp.digest:
        problems = verify_stage(path, full=verify)
        if problems:
            raise IntegrityError(problems[0] + f"; delete {path} and rerun to rebuild it")
        if old.get("kept_stale"):
            old = {k: v for k, v in old.items() if k != "kept_stale"}
            atomic_write_json(path / MANIFEST, old)
        log(f"[{name}] cached at {path}, skipping")
        return old
    why = _summary(stale_reasons(old.get("built_from"), fp))
    if not keep_stale:
        log(f"[{name}] stale: {why}; rebuilding")
        return None
    log(f"[{name}] stale: {why}; kept because of --keep-stale: its results do not match the preset")
    if old.get("kept_stale") != why:
        old = {**old, "kept_stale": why}
        atomic_write_json(path / MANIFEST, old)
    return old


def _share(root: Path) -> None:
    """Every artifact readable by all, whatever wrote it (merged weights come out 0600 otherwise)."""
    for p in root.rglob("*"):
        if not p.is_symlink():
            os.chmod(p, 0o755 if p.is_dir() else 0o644)


def _promote_finished(path: Path, scratch: Path, fp: Fingerprint) -> bool:
    """A run killed between moving the old stage aside and renaming the new one left a finished scratch dir:
    put it in place when it matches ``fp`` and its files are intact."""
    if path.exists() or not stage_done(scratch):
        return False
    manifest = read_manifest(scratch)
    if manifest.get("fingerprint") != fp.digest or check_records(scratch, manifest.get("outputs", {}),
                                                                   writer=manifest.get("stage", path.name)):
        return False
    scratch.rename(path)
    shutil.rmtree(path.with_name(path.name + ".old"), ignore_errors=True)
    return True


def _build(path: Path, scratch: Path, build: Callable[[Path], dict], fp: Fingerprint, name: str,
           log: Callable[[str], None]) -> dict:
    keep = scratch / RESUME
    try:
        scratch.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise StageError(f"cannot write stage {name} under {path.parent}: {e.strerror.lower()}; choose a writable "
                         "run directory (--run-dir)") from None
    if scratch.exists():
        for child in scratch.iterdir():
            if child != keep:
                shutil.rmtree(child) if child.is_dir() else child.unlink()
    if keep.exists() and not _resume_matches(keep, fp):
        log(f"[{name}] discarding checkpoints of a killed run with other settings")
        shutil.rmtree(keep)
    keep.mkdir(parents=True, exist_ok=True)
    atomic_write_json(keep / "fingerprint.json", {"digest": fp.digest})
    start = time.time()
    with disk_full_guard(scratch, f"stage {name}", intact="finished stages are intact"):
        info = build(scratch) or {}
        shutil.rmtree(keep, ignore_errors=True)
        clash = sorted(set(info) & set(_RESERVED))
        if clash:
            raise ValueError(f"stage {name}'s summary uses reserved manifest key(s) {clash}")
        why = invalid_results(scratch, info)
        if why:
            raise StageError(f"stage {name} produced invalid results, so it was not cached: {why}; fix what "
                             f"produced it (often a preset value) and rerun")
        _share(scratch)
        outputs = tree_records(scratch, exclude=(MANIFEST,))
        manifest = {"stage": name, "wall_seconds": round(time.time() - start, 2), **info,
                    "fingerprint": fp.digest, "built_from": fp.to_json(), "outputs": outputs,
                    "outputs_digest": digest(outputs)}
        atomic_write_json(scratch / MANIFEST, manifest)
    old = path.with_name(path.name + ".old")
    shutil.rmtree(old, ignore_errors=True)
    if path.exists():
        path.rename(old)
    scratch.rename(path)
    shutil.rmtree(old, ignore_errors=True)
    log(f"[{name}] done in {manifest['wall_seconds']:.1f}s -> {path}")
    return manifest
