# %% [markdown]
# # Quickstart: find an agent inside the IMAD model and steer it
#
# Load the toy IMAD model into TransformerLens, read every turn of some held-out debates in one pass, fit agent
# 3's direction (the programmer) from those readings, steer generation with it, and look at how well each layer
# separates the three agents.
#
# The run directory comes from `LATENT_AGENTS_RUN_DIR` (default `runs/toy`, made by
# `latent-agents reproduce --preset toy`); `RunLayout` knows where each stage wrote its model.

# %%
from training import threads

threads.configure()  # the project's thread policy (LATENT_AGENTS_THREADS), set before torch loads

import os
from pathlib import Path

import lens
from analyses.generation import stop_ids
from training.layout import RunLayout

RUN_DIR = Path(os.environ.get("LATENT_AGENTS_RUN_DIR", "runs/toy"))
if not RUN_DIR.is_dir():
    raise FileNotFoundError(f"no run directory {RUN_DIR}: run `latent-agents reproduce --preset toy` first")
layout = RunLayout(RUN_DIR)

# %% [markdown]
# `lens.load_model` converts the saved model (stage 2's output) to a `HookedTransformer` and checks its
# log-probs against the HF model before returning it.

# %%
model = lens.load_model(layout.internalize("main"))
print(f"{model.cfg.n_layers} layers, d_model {model.cfg.d_model}")

# %% [markdown]
# Held-out debates (teacher debates on test questions, never trained on). `turn_activations` runs the model once
# over them and keeps the residual stream at the end of every turn, at every layer; everything below fits from
# these readings without another forward pass.

# %%
held = lens.read_jsonl(layout.heldout("main"))[:16]
acts = lens.turn_activations(model, held)
print(f"{len(acts.labels)} turns from {len(held)} debates, layers {acts.layers}, site {acts.site}")

# %% [markdown]
# Agent 3's direction: its turn-end reading minus the mean of the other agents' in the same (debate, round) slot,
# averaged; the layer whose direction best separates agent 3 on held-out debates (cross-validated Cohen's d) wins.

# %%
sub = lens.fit_agent_subspace(acts, 3)
print(sub.hook_name, sub.persona, {layer: round(s["cohens_d"], 2) for layer, s in sub.scores.items()})

# %% [markdown]
# Steer: `lens.generate` runs a whole α grid in one batched, cached generate. `sub.raw()` scales the unit
# direction to the mean difference it was fitted from, so α = 1 moves a reading by one full agent difference
# (the toy residual stream is far larger than a unit vector). α = 0 is the unsteered model.

# %%
prompt = "Problem: 3+4*2+5-1*6\n\n"
out = lens.generate(model, [prompt], interventions=sub.raw(), alphas=[0.0, 1.0, 2.0], max_new_tokens=32,
                    stop=stop_ids(model, at_tags=False))
for alpha, text in zip(out.alpha, out.texts):
    print(f"α={alpha:g}: {text!r}")

# %% [markdown]
# A logistic-regression probe per layer: how well does the residual stream at the end of a turn tell which agent
# spoke? (Cross-validated by debate; chance is one in three.)

# %%
probe = lens.probe_layers(acts)
print({layer: round(a, 2) for layer, a in zip(probe.layers, probe.accuracy)})
lens.plots.probe_accuracy_by_layer(probe)

# %% [markdown]
# The turns in the first two principal components at the steering layer, each reading centred on its
# (debate, round) slot so that what remains is the difference between agents.

# %%
lens.plots.pca_scatter(lens.pca_projection(acts, layer=sub.layer, center="slot"))
