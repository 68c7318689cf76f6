"""Batched steered generation (three agent arms × an α grid, one `lens.generate`) on a toy-shaped tiny Llama
(d_model 128, 4 layers, d_mlp 512): tokens per second through TransformerLens vs through the HF twin with
forward hooks at the same ``resid_post`` site; checks both give the same greedy tokens. Then the static KV cache
the eval backend uses (HF ``cache_implementation="static"``) against HF's default growing cache, at the shape of a
Debate round-2 turn (64 prompts of 300 tokens, 80 new): time and whether the greedy tokens agree. (On the toy
base's real round-1 and IMAD generations, ~100-token prompts that stop early, the two caches took the same time.)
Last, tokens per second at 256 rows per call against 64, at round-1 and round-2 prompt lengths.

usage: .venv/bin/python benchmarks/bench_generation.py
"""

from __future__ import annotations

import torch

import lens
from _tiny import best_of, tiny_llama


def main() -> dict[str, float]:
    """Print the timings; return the HF/TransformerLens tokens-per-second ratio and whether the tokens agree."""
    torch.set_num_threads(1)
    hf, tok = tiny_llama(n_layers=4, d_model=128)
    model = lens.load_model(hf, tokenizer=tok, keep_hf=True)
    g = torch.Generator().manual_seed(1)
    arms = {f"agent{a}": lens.AgentSubspace(basis=torch.randn(1, 128, generator=g), layer=2,
                                            hook_name=lens.hook_name(2), position="end", method="random")
            for a in range(3)}
    prompts = [f"Problem: {a}+{b}*3\n\nThe agent says" for a in range(4) for b in range(2)]
    gen = dict(interventions=arms, alphas=[0.0, 1.0, 2.0, 4.0], max_new_tokens=48, stop=[], batch_size=32)
    out = {}

    def run(backend):
        def go():
            out[backend] = lens.generate(model, prompts, backend=backend, **gen)
        return go

    t_tl, t_hf = best_of(run("hooked"), 2), best_of(run("hf"), 2)
    n = sum(map(len, out["hf"].tokens))
    same = out["hooked"].tokens == out["hf"].tokens
    print(f"{len(out['hf'].tokens)} rows x {gen['max_new_tokens']} new tokens: TransformerLens {n / t_tl:.0f} tok/s, "
          f"HF hooks {n / t_hf:.0f} tok/s, HF/TL = {t_tl / t_hf:.2f}x; identical greedy tokens: {same}")
    ratios = {"steered generation tok/s HF hooks / TL": t_tl / t_hf,
              "steered generation same tokens (1 = yes)": float(same)}
    torch.set_num_threads(2)
    toy = tiny_llama(n_layers=4, d_model=128, n_heads=4, n_kv_heads=4)  # the toy base's exact shape, no grouped KV
    return ratios | kv_cache(*toy) | batch_scaling(*toy)


def greedy(hf, tok, ids, cache: str) -> torch.Tensor:
    """80 new greedy tokens for every row of ``ids`` (no early stop) with KV cache ``cache``."""
    with torch.no_grad():
        return hf.generate(ids, attention_mask=torch.ones_like(ids), do_sample=False, max_new_tokens=80,
                           min_new_tokens=80, pad_token_id=tok.pad_token_id, cache_implementation=cache)


def kv_cache(hf, tok) -> dict[str, float]:
    """Greedy generation with a static KV cache vs HF's default dynamic one (which re-copies itself each step)."""
    ids = torch.randint(10, len(tok), (64, 300), generator=torch.Generator().manual_seed(2))
    out = {}

    def run(cache):
        def go():
            out[cache] = greedy(hf, tok, ids, cache)
        return go

    t_dyn, t_static = best_of(run("dynamic"), 2), best_of(run("static"), 2)
    same = torch.equal(out["dynamic"], out["static"])
    print(f"64 prompts x 300 tokens, 80 new (2 threads): dynamic cache {t_dyn:.1f} s, static {t_static:.1f} s, "
          f"{t_dyn / t_static:.2f}x; identical greedy tokens: {same}")
    return {"generation static / dynamic KV cache speed-up": t_dyn / t_static,
            "generation static cache same tokens (1 = yes)": float(same)}


def batch_scaling(hf, tok) -> dict[str, float]:
    """Tokens per second with 256 rows per ``generate`` call against 64 (the toy's eval batch), at a round-1 prompt
    length (100 tokens) and a round-2 one (300): whether the toy's generating stages would gain from larger batches,
    i.e. whether they are bound by per-step overhead or by compute."""
    out = {}
    for prompt in (100, 300):
        speed = {}
        for rows in (64, 256):
            ids = torch.randint(10, len(tok), (rows, prompt), generator=torch.Generator().manual_seed(3))
            speed[rows] = rows * 80 / best_of(lambda: greedy(hf, tok, ids, "static"), 2)
        print(f"{prompt}-token prompts, 80 new (2 threads): 64 rows {speed[64]:.0f} tok/s, 256 rows "
              f"{speed[256]:.0f} tok/s, {speed[256] / speed[64]:.2f}x")
        out[f"generation tok/s 256 / 64 rows ({prompt}-token prompts)"] = speed[256] / speed[64]
    return out

if __name__ == "__main__":
    main()
