"""Batched steered generation (three agent arms × an α grid, one `lens.generate`) on a toy-shaped tiny Llama
(d_model 128, 4 layers, d_mlp 512): tokens per second through TransformerLens vs through the HF twin with
forward hooks at the same ``resid_post`` site; checks both give the same greedy tokens.

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
    return {"steered generation tok/s HF hooks / TL": t_tl / t_hf,
            "steered generation same tokens (1 = yes)": float(same)}


if __name__ == "__main__":
    main()
