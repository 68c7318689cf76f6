"""Forward passes of the agent-subspace analysis (three agents' vectors from the training debates, a probe and
a PCA on the held-out debates) with one collection per text set vs the earlier one collection per fit.

usage: .venv/bin/python benchmarks/bench_collect_once.py
"""

from __future__ import annotations

import time

import torch

import lens
from _tiny import tiny_llama
from lens.debate_format import Transcript, Turn, consensus_line

MARKERS = {1: "so it is", 2: "but wait", 3: "in code"}


def debates(n: int, offset: int) -> list[Transcript]:
    out = []
    for q in range(offset, offset + n):
        a, b = q % 9 + 1, q % 7 + 2
        turns = [Turn(r, agent, f"{a}*{b}={a * b} {MARKERS[agent]}") for r in (1, 2) for agent in (1, 2, 3)]
        out.append(Transcript(f"{a}*{b}", turns, consensus_line([str(a * b)] * 3), gold=str(a * b), id=f"q{q}"))
    return out


def counted(model, fn):
    calls = []
    handle = model.hook_dict["hook_embed"].register_forward_hook(lambda *a: calls.append(1))
    start = time.perf_counter()
    try:
        fn()
    finally:
        handle.remove()
    return len(calls), time.perf_counter() - start


def main() -> dict[str, float]:
    """Print the counts; return forward calls and wall time, one collection per fit over one per text set."""
    torch.set_num_threads(1)
    hf, tok = tiny_llama()
    model = lens.load_model(hf, tokenizer=tok)
    train, heldout = debates(64, 0), debates(24, 1000)
    layer = model.cfg.n_layers // 2

    def per_fit():  # what analyses/agent_subspaces.py did before: every fitter collects again
        for a in (1, 2, 3):
            lens.find_agent_subspace(model, a, transcripts=train, layers=[layer])
        lens.probe_layers(model, heldout)
        lens.pca_projection(model, heldout, layer=layer, center="slot")

    def once():  # collect once per text set, fit many
        acts = lens.turn_activations(model, train, layers=[layer])
        for a in (1, 2, 3):
            lens.fit_agent_subspace(acts, a)
        held = lens.turn_activations(model, heldout)
        lens.probe_layers(held)
        lens.pca_projection(held, layer=layer, center="slot")

    (n_before, t_before), (n_after, t_after) = counted(model, per_fit), counted(model, once)
    print(f"3 agents on {len(train)} training debates + probe and PCA on {len(heldout)} held-out debates "
          f"(batch 8): forward calls {n_before} -> {n_after} ({n_before / n_after:.1f}x fewer); "
          f"wall {t_before:.1f} s -> {t_after:.1f} s")
    return {"forward calls, collect per fit / once": n_before / n_after,
            "wall, collect per fit / once": t_before / t_after}


if __name__ == "__main__":
    main()
