"""The README's "lens on your own model and texts" walk-through runs as written against a tiny local model."""

from __future__ import annotations

import re
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"
SECTION = "## lens on your own model and texts"


def walkthrough_code() -> str:
    text = README.read_text()
    assert SECTION in text, f"README.md lost its {SECTION!r} section"
    section = text.split(SECTION, 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```python\n(.*?)```", section, flags=re.S)
    assert blocks, "the section has no python code block"
    return "\n".join(blocks)


def test_readme_walkthrough_runs(tiny_model_dirs, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("MODEL_DIR", tiny_model_dirs["llama"])
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    exec(compile(walkthrough_code(), str(README), "exec"), namespace)
    printed = capsys.readouterr().out
    assert re.search(r"agent 2 detected with AUROC (0|1)\.\d\d", printed)
    assert (tmp_path / "evil.gguf").stat().st_size > 0 and (tmp_path / "evil.safetensors").stat().st_size > 0
    same, evil = namespace["same"], namespace["evil"]
    assert same.layer == evil.layer == 1
    assert (same.direction - 4.0 * evil.direction).abs().max() < 1e-5
    assert namespace["held_out"].auroc > 0.9  # agent 2's turns differ in words from agent 1's
