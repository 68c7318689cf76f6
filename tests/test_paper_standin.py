"""The whole paper path on CPU with stand-ins (configs/paper-standin.toml): SFT in two processes (gloo) against one
process, then `reproduce` from that run dir in bf16, every model load in the configured dtype, and the report."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM

from analyses.reproduce import reproduce
from training.endpoints import preset_endpoints
from training.presets import load_preset

ROOT = Path(__file__).resolve().parents[1]
STANDIN = ROOT / "configs" / "paper-standin.toml"
BF16 = ['model.dtype="bfloat16"']


def _cli(*args: str, procs: int = 1, cwd: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    launcher = ([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(procs), "--master_port",
                 "29561"] if procs > 1 else [sys.executable])
    out = subprocess.run([*launcher, "-m", "analyses.cli", *args], cwd=cwd, env=env, capture_output=True, text=True,
                         timeout=1800)
    assert out.returncode == 0, out.stderr[-3000:]


def _sft_args(run: Path, per_device: int) -> list[str]:
    sets = [*BF16, f"sft.per_device_train_batch_size={per_device}"]
    return ["sft", "--preset", str(STANDIN), "--run-dir", str(run), *(a for s in sets for a in ("--set", s))]


@pytest.mark.slow
def test_paper_standin_end_to_end(tmp_path, monkeypatch):
    two, one = tmp_path / "two", tmp_path / "one"
    # the toy base is built by one process (several refuse, naming this command), then shared by both runs
    _cli("toy", "base", "--preset", str(STANDIN), "--run-dir", str(two), "--set", BF16[0], cwd=tmp_path)
    one.mkdir()
    shutil.copytree(two / "base", one / "base")
    # global batch 4 either way: 2 processes x 2, or 1 x 4
    _cli(*_sft_args(two, 2), procs=2, cwd=tmp_path)
    _cli("debate", "--preset", str(STANDIN), "--run-dir", str(one), "--set", BF16[0], cwd=tmp_path)
    _cli(*_sft_args(one, 4), cwd=tmp_path)
    for exp in ("main", "evil", "hallucination"):
        m2 = json.loads((two / "sft" / exp / "metrics.json").read_text())
        m1 = json.loads((one / "sft" / exp / "metrics.json").read_text())
        assert m2["processes"] == 2 and m1["processes"] == 1 and m2["dtype"] == "bfloat16"
        assert len(m2["loss_curve"]) == len(m1["loss_curve"]) == 4
        assert max(abs(a - b) for a, b in zip(m2["loss_curve"], m1["loss_curve"])) < 0.1, (m2, m1)
    # one set of artifacts: one merged model, no scratch dir, no checkpoints left behind
    assert sorted(p.name for p in (two / "sft").iterdir()) == ["evil", "hallucination", "main"]
    assert len(list((two / "sft" / "main").glob("*.safetensors"))) == 1
    assert not list(two.rglob("*.partial")) and not list(two.rglob("checkpoint-*"))

    loaded = []
    real = AutoModelForCausalLM.from_pretrained.__func__

    def spy(cls, *args, **kwargs):
        model = real(cls, *args, **kwargs)
        loaded.append((str(args[0]), model.dtype))
        return model

    monkeypatch.setattr(AutoModelForCausalLM, "from_pretrained", classmethod(spy))
    monkeypatch.chdir(tmp_path)
    preset = load_preset(STANDIN, [*BF16, "sft.per_device_train_batch_size=2"])  # the preset SFT ran with
    with preset_endpoints(preset):
        report = reproduce(preset, two)
    assert report.is_file()
    assert len(loaded) > 10 and {d for _, d in loaded} == {torch.bfloat16}, loaded
    assert {Path(p).name for p, _ in loaded} >= {"base", "main", "evil", "hallucination"}

    writers = {e: json.loads((two / "debates" / e / "provenance.json").read_text()) for e in ("main", "evil",
                                                                                             "hallucination")}
    assert writers["main"]["writer"] == "file" and writers["main"]["file"].endswith("arithmetic_3_2.json")
    assert writers["evil"]["writer"] == "file" and writers["evil"]["file"].endswith("evil_debate.json")
    assert writers["hallucination"]["writer"] == "model" and writers["hallucination"]["base_url"] == ""
    bench = json.loads((two / "eval" / "benchmarks" / "benchmarks.json").read_text())
    assert bench["benchmarks"] == ["gsm8k", "mmlu_pro", "bbh"]
    assert [r["method"] for r in bench["rows"]] == ["Single", "Debate", "DebateGPT", "SFT", "Single + RL", "IMAD"]
    assert all("transfer" not in r for r in json.loads((two / "eval" / "table1.json").read_text())["rows"])
    phases = list((two / "internalize" / "main" / "phases").glob("phase*"))
    assert phases and all((p / "adapter" / "adapter_config.json").is_file() for p in phases)
    assert not list((two / "internalize" / "main" / "phases").glob("phase*/model*.safetensors"))
    judged = json.loads((two / "analyses" / "malicious" / "results.json").read_text())
    assert set(judged["traits"]) == {"evil", "hallucination"}
