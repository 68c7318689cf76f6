"""A steering α sweep as ONE batched generate (one α per row, lens.steer with a tensor α) vs a loop of one
generate per α; prints the speed-up and checks both give the same greedy tokens.

usage: .venv/bin/python benchmarks/bench_alpha_sweep.py
"""

from __future__ import annotations

import torch

import lens
from _tiny import best_of, tiny_llama


def main() -> None:
    torch.set_num_threads(1)
    hf, tok = tiny_llama()
    model = lens.load_model(hf, tokenizer=tok)
    direction = torch.randn(1, model.cfg.d_model)
    sub = lens.AgentSubspace(basis=direction / direction.norm(), layer=3, hook_name=lens.hook_name(3),
                             position="end", method="random")
    alphas = torch.linspace(-5, 5, 11)
    prompts = model.to_tokens("Problem: 12+3*4\n\nThe agent says", prepend_bos=True).repeat(4, 1)
    gen = dict(max_new_tokens=32, do_sample=False, verbose=False, stop_at_eos=False)
    out = {}

    def batched():
        with lens.steer(model, sub, alphas.repeat_interleave(len(prompts))):
            out["batched"] = model.generate(prompts.repeat(len(alphas), 1), **gen)

    def looped():
        rows = []
        for a in alphas:
            with lens.steer(model, sub, float(a)):
                rows.append(model.generate(prompts, **gen))
        out["looped"] = torch.cat(rows)

    t_batched, t_looped = best_of(batched, 2), best_of(looped, 2)
    same = torch.equal(out["batched"], out["looped"])
    print(f"{len(alphas)} alphas x {len(prompts)} prompts x {gen['max_new_tokens']} new tokens: "
          f"batched {t_batched:.2f} s, loop {t_looped:.2f} s, speed-up loop/batched = {t_looped / t_batched:.2f}x; "
          f"identical tokens: {same}")


if __name__ == "__main__":
    main()
