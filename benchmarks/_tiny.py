"""A few-M-parameter tiny Llama built in-process for the benchmarks (random weights; speed only)."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402

from training.tiny_models import TinyModelSpec, make_tiny_model  # noqa: E402
from training.tokenizer import train_tokenizer  # noqa: E402

CORPUS = [f"Problem: {a}+{b}*{c}\n\nThe agent says {a * b + c} because step {a} then step {b}." for a in range(30)
          for b in range(10) for c in range(3)]


def tiny_llama(n_layers: int = 8, d_model: int = 256, n_heads: int = 8, n_kv_heads: int = 4):
    """(HF model, tokenizer): d_model 256, 8 layers, about 4M parameters by default."""
    torch.manual_seed(0)
    tok = train_tokenizer(CORPUS, vocab_size=512)
    spec = TinyModelSpec(arch="llama", d_model=d_model, n_layers=n_layers, n_heads=n_heads, n_kv_heads=n_kv_heads,
                         d_mlp=4 * d_model, n_ctx=512)
    return make_tiny_model(spec, tok), tok


def best_of(fn, repeats: int = 3) -> float:
    import time

    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)
