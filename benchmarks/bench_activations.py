"""Activation collection at layer ℓ (lens.collect_activations, stopping after ℓ) vs a plain HF forward on the same
batch; reading layer ℓ should cost about (ℓ+1)/L of a full forward. Both backends: TransformerLens (``hooked``)
and the HF twin with forward hooks (``hf``, what ``auto`` picks for a model loaded with ``keep_hf=True``).

usage: .venv/bin/python benchmarks/bench_activations.py
"""

from __future__ import annotations

import torch

import lens
from _tiny import best_of, tiny_llama


def main() -> dict[str, float]:
    """Print the table; return reading each layer over the HF SDPA forward, and the (l+1)/L target."""
    torch.set_num_threads(1)
    hf, tok = tiny_llama()
    model = lens.load_model(hf, tokenizer=tok, keep_hf=True)
    n_params = sum(p.numel() for p in hf.parameters()) / 1e6
    texts = [f"Problem: {i}+{i % 7}*3\n\n" + " ".join(f"step {j} gives {i * j}" for j in range(30)) for i in range(16)]
    enc = tok(texts, add_special_tokens=False, padding=True, return_tensors="pt")
    n_tok = int(enc["attention_mask"].sum())
    with torch.no_grad():
        hf_time = best_of(lambda: hf(**enc))
        hf.config._attn_implementation = "eager"
        eager_time = best_of(lambda: hf(**enc))
        hf.config._attn_implementation = "sdpa"
        tokens = enc["input_ids"]
        tl_time = best_of(lambda: model(tokens, attention_mask=enc["attention_mask"]))
    L = model.cfg.n_layers
    print(f"tiny Llama {n_params:.1f}M params, {L} layers; batch 16 texts, {n_tok} tokens; HF forward "
          f"{hf_time * 1e3:.0f} ms (sdpa), {eager_time * 1e3:.0f} ms (eager); TL full forward {tl_time * 1e3:.0f} ms")
    print("backend  layer  /HF-sdpa  /HF-eager  /TL-full  expected (l+1)/L")
    ratios = {}
    for backend in ("hooked", "hf"):
        for layer in (0, L // 2 - 1, L - 1):
            t = best_of(lambda: lens.collect_activations(model, texts, layers=[layer], batch_size=16, backend=backend))
            print(f"{backend:>7}  {layer:5d}  {t / hf_time:8.2f}  {t / eager_time:9.2f}  {t / tl_time:8.2f}  "
                  f"{(layer + 1) / L:8.2f}")
            ratios[f"collect ({backend}) layer {layer}/{L} / HF sdpa forward (target {(layer + 1) / L + 0.1:.2f})"] \
                = t / hf_time
    return ratios


if __name__ == "__main__":
    main()
