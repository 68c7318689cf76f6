"""Stages keyed by what built them, integrity of their files, and crash-safe promotion (synthetic stages)."""

from __future__ import annotations

import errno
import json
import os
from dataclasses import dataclass
from pathlib import Path

import pytest

from training import integrity
from training.checkpoints import DiskFullError
from training.integrity import IntegrityError
from training.stages import (MANIFEST, StageError, fingerprint, read_manifest, run_stage, stage_status, stale_stages,
                             verify_run, verify_stage)


@dataclass(frozen=True)
class Cfg:
    max_steps: int = 4
    lr: float = 1e-3
    modules: tuple[str, ...] = ("q", "v")


class Builder:
    """A stage build that writes ``payload`` to ``out.bin`` and a results.json, counting its calls."""

    def __init__(self, payload: bytes = b"weights", results: dict | None = None, info: dict | None = None):
        self.payload, self.results, self.info, self.calls = payload, results or {"acc": 0.5}, info or {}, 0

    def __call__(self, scratch: Path) -> dict:
        self.calls += 1
        (scratch / "out.bin").write_bytes(self.payload)
        (scratch / "results.json").write_text(json.dumps(self.results))
        return dict(self.info)


def _run(path, build, lines, **kw):
    kw.setdefault("keys", {"sft": Cfg(), "seed": 0})
    return run_stage(path, build, name="sft/main", log=lines.append, **kw)


def test_cached_rerun_skips_and_records_outputs(tmp_path):
    b, lines = Builder(), []
    m1 = _run(tmp_path / "s", b, lines)
    m2 = _run(tmp_path / "s", b, lines)
    assert b.calls == 1 and m1 == m2
    assert lines[-1] == f"[sft/main] cached at {tmp_path / 's'}, skipping"
    assert m1["outputs"]["out.bin"]["size"] == 7
    assert m1["outputs"]["out.bin"]["sha256"] == integrity.hash_file(tmp_path / "s" / "out.bin")
    assert m1["built_from"]["keys"]["[sft] max_steps"] == 4 and m1["built_from"]["keys"]["seed"] == 0
    assert not (tmp_path / "s.partial").exists()


def test_changed_key_rebuilds_saying_which(tmp_path):
    b, lines = Builder(), []
    _run(tmp_path / "s", b, lines)
    _run(tmp_path / "s", b, lines, keys={"sft": Cfg(max_steps=3), "seed": 0})
    assert b.calls == 2
    assert "[sft/main] stale: [sft] max_steps 4 -> 3; rebuilding" in lines
    _run(tmp_path / "s", b, lines, keys={"sft": Cfg(max_steps=3, modules=("q",)), "seed": 1})
    assert '[sft/main] stale: [sft] modules ["q", "v"] -> ["q"], seed 0 -> 1; rebuilding' in lines


def test_keep_stale_keeps_and_marks_until_the_preset_matches_again(tmp_path):
    b, lines = Builder(), []
    _run(tmp_path / "s", b, lines)
    m = _run(tmp_path / "s", b, lines, keys={"sft": Cfg(max_steps=3), "seed": 0}, keep_stale=True)
    assert b.calls == 1
    assert lines[-1] == ("[sft/main] stale: [sft] max_steps 4 -> 3; kept because of --keep-stale: its results do "
                         "not match the preset")
    assert m["kept_stale"] == "[sft] max_steps 4 -> 3"
    assert stale_stages(tmp_path) == [("sft/main", "[sft] max_steps 4 -> 3")]
    _run(tmp_path / "s", b, lines)
    assert stale_stages(tmp_path) == [] and b.calls == 1


def test_keep_stale_from_the_environment(tmp_path, monkeypatch):
    b, lines = Builder(), []
    _run(tmp_path / "s", b, lines)
    monkeypatch.setenv("LATENT_AGENTS_KEEP_STALE", "1")
    _run(tmp_path / "s", b, lines, keys={"sft": Cfg(lr=2e-3), "seed": 0})
    assert b.calls == 1 and "kept because of --keep-stale" in lines[-1]


def test_changed_input_file_rebuilds(tmp_path):
    data = tmp_path / "data.jsonl"
    data.write_text("abc")
    b, lines = Builder(), []
    _run(tmp_path / "s", b, lines, inputs={"data": data})
    data.write_text("abcde")
    _run(tmp_path / "s", b, lines, inputs={"data": data})
    assert b.calls == 2
    assert lines[-2] == f"[sft/main] stale: input data ({data}) changed size 3 -> 5 bytes; rebuilding"


def test_unchanged_external_input_is_not_rehashed(tmp_path, monkeypatch):
    model = tmp_path / "model"
    model.mkdir()
    (model / "w.bin").write_bytes(b"x" * 1000)
    b, lines = Builder(), []
    _run(tmp_path / "s", b, lines, inputs={"base": model})
    hashed = []
    real = integrity.hash_file
    monkeypatch.setattr(integrity, "hash_file", lambda p: hashed.append(Path(p).name) or real(p))
    _run(tmp_path / "s", b, lines, inputs={"base": model})
    assert b.calls == 1 and hashed == []


def test_upstream_rebuilt_with_other_results_makes_downstream_stale(tmp_path):
    up1, down, lines = Builder(b"one"), Builder(), []
    run_stage(tmp_path / "up", up1, name="up", keys={"seed": 0}, log=lines.append)
    run_stage(tmp_path / "down", down, name="down", inputs={"up": tmp_path / "up"}, log=lines.append)
    # rebuilt with the same bytes (a deterministic rerun): downstream stays cached
    run_stage(tmp_path / "up", Builder(b"one"), name="up", keys={"seed": 1}, log=lines.append)
    run_stage(tmp_path / "down", down, name="down", inputs={"up": tmp_path / "up"}, log=lines.append)
    assert down.calls == 1
    run_stage(tmp_path / "up", Builder(b"two"), name="up", keys={"seed": 2}, log=lines.append)
    run_stage(tmp_path / "down", down, name="down", inputs={"up": tmp_path / "up"}, log=lines.append)
    assert down.calls == 2
    assert "[down] stale: input stage up was rebuilt with other results; rebuilding" in lines


def test_run_dir_without_fingerprints_is_rebuilt(tmp_path):
    old = tmp_path / "s"
    old.mkdir()
    (old / "out.bin").write_bytes(b"old")
    (old / MANIFEST).write_text(json.dumps({"stage": "sft/main", "wall_seconds": 1.0}))
    b, lines = Builder(), []
    _run(old, b, lines)
    assert b.calls == 1 and (old / "out.bin").read_bytes() == b"weights"
    assert lines[0] == "[sft/main] stale: it was built before stages recorded what built them; rebuilding"


@pytest.mark.parametrize("results, info, why", [
    ({"curves": [{"alpha": 0.0}, {"alpha": float("nan")}]}, {},
     "results.json holds a non-finite number (curves[1].alpha = nan)"),
    ({"acc": 0.5}, {"loss": float("inf")}, "its summary holds a non-finite number (loss = inf)"),
])
def test_invalid_results_fail_and_keep_the_previous_stage(tmp_path, results, info, why):
    lines = []
    _run(tmp_path / "s", Builder(b"good"), lines)
    with pytest.raises(StageError) as e:
        _run(tmp_path / "s", Builder(results=results, info=info), lines, keys={"sft": Cfg(lr=1.0), "seed": 0})
    assert str(e.value) == (f"stage sft/main produced invalid results, so it was not cached: {why}; fix what "
                            "produced it (often a preset value) and rerun")
    assert (tmp_path / "s" / "out.bin").read_bytes() == b"good"
    # fixing the preset reuses the good stage; the bad one never got a manifest
    assert _run(tmp_path / "s", Builder(), lines)["outputs"]["out.bin"]["size"] == 4


def test_empty_output_fails(tmp_path):
    with pytest.raises(StageError, match=r"it wrote an empty file out\.bin;"):
        _run(tmp_path / "s", Builder(b""), [])
    assert not (tmp_path / "s").exists()


def test_truncated_output_names_file_and_stage(tmp_path):
    _run(tmp_path / "s", Builder(b"x" * 100), [])
    weights = tmp_path / "s" / "out.bin"
    weights.write_bytes(b"x" * 40)
    with pytest.raises(IntegrityError) as e:
        _run(tmp_path / "s", Builder(), [])
    assert str(e.value) == (f"{weights} is 40 bytes but stage sft/main wrote 100 bytes: it was truncated after the "
                            f"stage finished; delete {tmp_path / 's'} and rerun to rebuild it")
    assert weights.read_bytes() == b"x" * 40  # nothing removed behind the user's back


def test_same_size_corruption_found_by_mtime_or_on_request(tmp_path):
    _run(tmp_path / "s", Builder(b"x" * 100), [])
    weights = tmp_path / "s" / "out.bin"
    st = weights.stat()
    weights.write_bytes(b"y" * 100)
    os.utime(weights, ns=(st.st_atime_ns, st.st_mtime_ns))  # same size and mtime: the cheap check cannot tell
    assert _run(tmp_path / "s", Builder(), [])["stage"] == "sft/main"
    assert verify_stage(tmp_path / "s") == [
        f"{weights} has the size stage sft/main wrote but different contents (SHA-256 differs): it was corrupted "
        "or overwritten after the stage finished"]
    with pytest.raises(IntegrityError, match="SHA-256 differs"):
        _run(tmp_path / "s", Builder(), [], verify=True)
    os.utime(weights)  # the mtime moved: the next plain read rehashes it
    with pytest.raises(IntegrityError, match="SHA-256 differs"):
        _run(tmp_path / "s", Builder(), [])
    assert list(verify_run(tmp_path)) == [str(tmp_path / "s")]


def test_touched_but_unchanged_file_passes(tmp_path):
    _run(tmp_path / "s", Builder(), [])
    os.utime(tmp_path / "s" / "out.bin")
    assert verify_stage(tmp_path / "s", full=False) == []



def test_verifying_a_dir_that_is_no_finished_stage_says_so(tmp_path):
    (tmp_path / "half").mkdir()
    assert verify_stage(tmp_path / "half") == [
        f"{tmp_path / 'half'} is not a finished stage (it has no stage.json); run the stage before verifying it"]

def test_damaged_upstream_named_by_the_reading_stage(tmp_path):
    run_stage(tmp_path / "up", Builder(b"x" * 10), name="sft/main", log=[].append)
    (tmp_path / "up" / "out.bin").write_bytes(b"x")
    with pytest.raises(IntegrityError, match=r"out\.bin is 1 bytes but stage sft/main wrote 10 bytes"):
        run_stage(tmp_path / "down", Builder(), name="imad/main", inputs={"sft": tmp_path / "up"}, log=[].append)


def test_disk_full_names_path_and_keeps_previous(tmp_path):
    _run(tmp_path / "s", Builder(b"good"), [])

    def full(scratch: Path) -> dict:
        (scratch / "out.bin").write_bytes(b"part")
        raise OSError(errno.ENOSPC, "No space left on device")

    with pytest.raises(DiskFullError) as e:
        _run(tmp_path / "s", full, [], keys={"sft": Cfg(lr=5.0), "seed": 0})
    assert str(e.value).startswith(f"no space left on the device while writing stage sft/main to "
                                   f"{tmp_path / 's.partial'} (")
    assert str(e.value).endswith("MiB free); finished stages are intact; free some space and rerun to continue")
    assert (tmp_path / "s" / "out.bin").read_bytes() == b"good"


def test_artifacts_are_shared_readable(tmp_path):
    def private(scratch: Path) -> dict:
        (scratch / "model.safetensors").write_bytes(b"w")
        os.chmod(scratch / "model.safetensors", 0o600)
        return {}

    run_stage(tmp_path / "s", private, log=[].append)
    assert (tmp_path / "s" / "model.safetensors").stat().st_mode & 0o777 == 0o644


def test_resume_checkpoints_kept_only_for_the_same_fingerprint(tmp_path):
    seen, lines = [], []

    def killed(scratch: Path) -> dict:
        (scratch / "resume" / "checkpoint-2").mkdir()
        raise KeyboardInterrupt

    def build(scratch: Path) -> dict:
        seen.append(sorted(p.name for p in (scratch / "resume").iterdir()))
        return Builder()(scratch)

    with pytest.raises(KeyboardInterrupt):
        _run(tmp_path / "s", killed, lines)
    _run(tmp_path / "s", build, lines)
    assert seen == [["checkpoint-2", "fingerprint.json"]]
    with pytest.raises(KeyboardInterrupt):
        _run(tmp_path / "t", killed, lines)
    _run(tmp_path / "t", build, lines, keys={"sft": Cfg(max_steps=9), "seed": 0})
    assert seen[-1] == ["fingerprint.json"]
    assert "[sft/main] discarding checkpoints of a killed run with other settings" in lines


def test_killed_between_renames_promotes_the_finished_build(tmp_path):
    _run(tmp_path / "s", Builder(b"v1"), [])
    _run(tmp_path / "s", Builder(b"v2"), [], keys={"sft": Cfg(max_steps=3), "seed": 0})
    # what a kill right after moving the old stage aside leaves: the finished new build in the scratch dir
    (tmp_path / "s").rename(tmp_path / "s.partial")
    b = Builder(b"v3")
    m = _run(tmp_path / "s", b, [], keys={"sft": Cfg(max_steps=3), "seed": 0})
    assert b.calls == 0 and (tmp_path / "s" / "out.bin").read_bytes() == b"v2" and m["stage"] == "sft/main"


def test_stage_status(tmp_path):
    keys = {"sft": Cfg(), "seed": 0}
    assert stage_status(tmp_path / "s", fingerprint(keys)) == ("missing", "not built yet")
    _run(tmp_path / "s", Builder(), [], keys=keys)
    assert stage_status(tmp_path / "s", fingerprint(keys)) == ("cached", "")
    assert stage_status(tmp_path / "s", fingerprint({"sft": Cfg(max_steps=3), "seed": 0})) == (
        "stale", "[sft] max_steps 4 -> 3")
    assert stage_status(tmp_path / "s", fingerprint(keys, {"up": tmp_path / "nope"})) == (
        "stale", "input up was added")
    (tmp_path / "s" / "out.bin").write_bytes(b"")
    state, why = stage_status(tmp_path / "s", fingerprint(keys))
    assert state == "damaged" and why.startswith(f"{tmp_path / 's' / 'out.bin'} is 0 bytes but stage sft/main wrote")
    assert read_manifest(tmp_path / "s")["stage"] == "sft/main"


def test_unwritable_run_dir_is_one_sentence(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a dir")
    with pytest.raises(StageError) as e:
        run_stage(blocker / "sft" / "main", Builder(), name="sft/main", log=[].append)
    assert str(e.value) == (f"cannot write stage sft/main under {blocker / 'sft'}: not a directory; choose a "
                            "writable run directory (--run-dir)")


def test_non_finite_preset_value_is_refused_before_building(tmp_path):
    b = Builder()
    with pytest.raises(StageError) as e:
        run_stage(tmp_path / "m", b, name="analyses/malicious", keys={"malicious": {"alphas": [-5.0, float("nan")]}},
                  log=[].append)
    assert str(e.value) == ("stage analyses/malicious would read a non-finite preset value "
                            "([malicious] alphas[1] = nan); use finite numbers")
    assert b.calls == 0 and not (tmp_path / "m").exists()
