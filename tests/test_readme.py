"""The README's "lens on your own model and texts" block runs as written on a tiny local model."""

from __future__ import annotations

import re
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def test_readme_lens_block_runs(tiny_model_dirs, capsys):
    section = README.read_text().split("## lens on your own model and texts", 1)[1]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    scope = {"MODEL_DIR": tiny_model_dirs["llama"]}
    exec(compile(code, str(README), "exec"), scope)
    assert scope["bob"].persona is None and scope["bob"].agent == "bob" and scope["bob"].layer in (0, 2)
    assert scope["cruel"].method == "contrastive_diff_means" and len(scope["out"].texts) == 6
    assert len(scope["probe"].accuracy) == 2
    assert capsys.readouterr().out.splitlines()[-1] == repr(scope["out"].select(arm="bob", alpha=4.0))
