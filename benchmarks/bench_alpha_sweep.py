"""A steering α sweep as ONE batched `lens.generate` (the whole grid, one α per row) vs a loop of one
`lens.generate` per α; prints the speed-up and checks both give the same greedy tokens.

usage: .venv/bin/python benchmarks/bench_alpha_sweep.py
"""

from __future__ import annotations

import torch

import lens
from _tiny import best_of, tiny_llama


def main() -> dict[str, float]:
    """Print the timings; return the loop/batched speed-up and whether both gave the same tokens (1 or 0)."""
    torch.set_num_threads(1)
    hf, tok = tiny_llama()
    model = lens.load_model(hf, tokenizer=tok)
    direction = torch.randn(1, model.cfg.d_model)
    sub = lens.AgentSubspace(basis=direction / direction.norm(), layer=3, hook_name=lens.hook_name(3),
                             position="end", method="random")
    alphas = torch.linspace(-5, 5, 11).tolist()
    prompts = ["Problem: 12+3*4\n\nThe agent says", "Problem: 7+1*2\n\nThe agent", "Problem: 29+9*2\n\n",
               "Problem: 3+3*3\n\nThe agent says step"]
    gen = dict(max_new_tokens=32, stop=[], interventions=sub)  # no stop token: every row runs all 32 tokens
    out = {}

    def batched():
        out["batched"] = lens.generate(model, prompts, alphas=alphas, batch_size=len(alphas) * len(prompts), **gen)

    def looped():
        out["looped"] = [lens.generate(model, prompts, alphas=[a], **gen) for a in alphas]

    t_batched, t_looped = best_of(batched, 2), best_of(looped, 2)
    same = out["batched"].tokens == [t for g in out["looped"] for t in g.tokens]
    print(f"{len(alphas)} alphas x {len(prompts)} prompts x {gen['max_new_tokens']} new tokens: "
          f"batched {t_batched:.2f} s, loop {t_looped:.2f} s, speed-up loop/batched = {t_looped / t_batched:.2f}x; "
          f"identical tokens: {same}")
    return {"alpha sweep loop / batched (keep >= 3)": t_looped / t_batched,
            "alpha sweep same tokens (1 = yes)": float(same)}


if __name__ == "__main__":
    main()
