"""Session-wide fixtures: a locally trained tokenizer and tiny Llama / Qwen2 / Mistral models saved to disk."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "disabled")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest
import torch

from lens.debate_format import DEBATE_TAGS
from training.prompts import ROUND1, ROUND2, SYSTEM_PROMPTS
from training.tiny_models import TinyModelSpec, make_tiny_model
from training.tokenizer import save_tokenizer, train_tokenizer

ARCHS = ("llama", "qwen2", "mistral")


def _corpus() -> list[str]:
    words = [*SYSTEM_PROMPTS.values(), *ROUND1.values(), *ROUND2.values()]
    sums = [f"Problem: {a}+{b}*{c}+{a}-{b}*{c}\n\n{b}*{c}={b * c}; \\boxed{{{a + b * c}}}"
            for a in range(10) for b in range(10) for c in range(3)]
    return words * 5 + sums + list(DEBATE_TAGS)


@pytest.fixture(scope="session")
def tiny_tokenizer(tmp_path_factory):
    """A byte-level BPE tokenizer with digits split and the debate tags special, saved and reloaded."""
    return save_tokenizer(train_tokenizer(_corpus(), vocab_size=400), tmp_path_factory.mktemp("tokenizer"))


@pytest.fixture(scope="session")
def tiny_model_dirs(tmp_path_factory, tiny_tokenizer) -> dict[str, str]:
    """Saved tiny models of each architecture (GQA; Qwen2 with tied embeddings), weights perturbed so that
    conversion bugs show up as log-prob differences."""
    dirs = {}
    for i, arch in enumerate(ARCHS):
        spec = TinyModelSpec(arch=arch, d_model=64, n_layers=3, n_heads=4, n_kv_heads=2, d_mlp=128, n_ctx=256,
                             tie_embeddings=arch == "qwen2")
        model = make_tiny_model(spec, tiny_tokenizer, seed=i)
        g = torch.Generator().manual_seed(100 + i)
        with torch.no_grad():
            for p in model.parameters():
                p.add_(torch.randn(p.shape, generator=g) * 0.05)
        d = tmp_path_factory.mktemp(f"tiny_{arch}")
        model.save_pretrained(d)
        tiny_tokenizer.save_pretrained(d)
        dirs[arch] = str(d)
    return dirs


@pytest.fixture(scope="session")
def smoke_run_dir(tmp_path_factory):
    """A run directory holding the smoke preset's toy base model, built once per session by `build_base`."""
    from training.presets import load_preset
    from training.toy_base import build_base

    run_dir = tmp_path_factory.mktemp("smoke_run")
    build_base(load_preset("smoke"), run_dir)
    SMOKE_RUNS.append(run_dir)
    return run_dir


SMOKE_RUNS: list = []


def pytest_terminal_summary(terminalreporter):
    """Print the smoke preset's end-to-end stage wall times (issue 12 asks CI to show them)."""
    import json

    for run_dir in SMOKE_RUNS:
        times = {}
        for manifest in sorted(run_dir.rglob("stage.json")):
            wall = json.loads(manifest.read_text()).get("wall_seconds")
            if isinstance(wall, (int, float)):
                times[str(manifest.parent.relative_to(run_dir))] = wall
        if times:
            top = ", ".join(f"{k} {v:.0f} s" for k, v in sorted(times.items(), key=lambda kv: -kv[1])[:5])
            terminalreporter.write_line(f"smoke preset end to end: {sum(times.values()):.0f} s of stage wall time "
                                        f"over {len(times)} stages (longest: {top})")


@pytest.fixture(scope="session")
def smoke_base_dir(smoke_run_dir):
    """The smoke toy base model dir (HF weights + tokenizer + provenance.json + base_eval.json)."""
    return smoke_run_dir / "base"


@pytest.fixture(scope="module")
def model(tiny_model_dirs):
    """The tiny Llama in lens (one per test module)."""
    import lens

    return lens.load_model(tiny_model_dirs["llama"])


@pytest.fixture(scope="module")
def transcripts():
    """Synthetic debates whose agents end their turns with their own markers (`synthetic.synth`)."""
    from synthetic import synth

    return synth()
