# %% [markdown]
# # Agent subspaces (paper §3, Fig. 2, 9, 11, Table 8)
#
# Each agent's direction is read from the SFT checkpoint (which saw the debates written out) and added to the base
# model and to IMAD: does the agent IMAD learned to keep silent still answer to it? Here, on a few debates and
# tokens, every number is made by the `lens` calls shown: collect once, fit per agent, compare the directions
# across agents and models, steer with an α grid. The last section reads the study's own results (all debates,
# the preset's grid) from `analyses/agent_subspaces/results.json`.

# %%
from training import threads

threads.configure()  # the project's thread policy (LATENT_AGENTS_THREADS), set before torch loads

import os
from pathlib import Path

import pandas as pd
import lens
from analyses import agent_subspaces
from analyses.generation import stop_ids
from analyses.metrics import rouge
from analyses.results import load_results
from lens.rating import mean_se
from training.layout import RunLayout

RUN_DIR = Path(os.environ.get("LATENT_AGENTS_RUN_DIR", "runs/toy"))
if not RUN_DIR.is_dir():
    raise FileNotFoundError(f"no run directory {RUN_DIR}: run `latent-agents reproduce --preset toy` first")
layout = RunLayout(RUN_DIR)

# %% [markdown]
# ## Collect once, fit per agent
#
# The debates the SFT model was trained on, read at the end of every turn at the middle layer (the study's
# default) in one pass; then one fit per agent from the same readings, no further forward pass.

# %%
models = {"SFT": lens.load_model(layout.sft("main")), "IMAD": lens.load_model(layout.internalize("main")),
          "base": lens.load_model(layout.base)}
layer = lens.sites.middle_layer(models["SFT"])
train = lens.read_jsonl(layout.transcripts("main"))[:24]
acts = lens.turn_activations(models["SFT"], train, layers=[layer])
agents = sorted(set(acts.column("agent")))
subs = {a: lens.fit_agent_subspace(acts, a) for a in agents}
pd.DataFrame([{"agent": a, "persona": s.persona, "hook": s.hook_name, "Cohen's d": s.scores[s.layer]["cohens_d"],
               "|raw mean difference|": s.stats["raw_diff_norm"], "mean |residual|": s.stats["resid_norm"]}
              for a, s in subs.items()])

# %% [markdown]
# ## Geometry
#
# The same texts read by each model, one direction per agent and model. Fine-tunes of one base share its residual
# basis, so their directions compare directly: how far apart are the agents, and how far did each agent's
# direction move from the base model through SFT to IMAD?

# %%
vectors = {f"SFT a{a}": s for a, s in subs.items()}
model_acts = {"SFT": acts}
for name in ("IMAD", "base"):
    model_acts[name] = lens.turn_activations(models[name], train, layers=[layer])
    vectors.update({f"{name} a{a}": lens.fit_agent_subspace(model_acts[name], a) for a in agents})
sims = lens.geometry.cosine_similarities(vectors)
print({a: round(sims.angle_deg(f"SFT a{a}", f"IMAD a{a}"), 1) for a in agents}, "degrees, SFT vs IMAD per agent")
lens.plots.cosine_heatmap(sims)

# %% [markdown]
# Two-dimensional subspaces (`method="pca", k=2`: the top two directions of the per-slot differences) and the
# principal angles between each agent's SFT and IMAD subspaces: 0° is a shared direction, 90° an orthogonal one.

# %%
angles = [lens.geometry.principal_angles(lens.fit_agent_subspace(model_acts["SFT"], a, method="pca", k=2),
                                         lens.fit_agent_subspace(model_acts["IMAD"], a, method="pca", k=2),
                                         names=(f"SFT a{a}", f"IMAD a{a}")) for a in agents]
print({p.a: [round(x, 1) for x in p.angles_deg] for p in angles})
lens.plots.principal_angle_bars(angles)

# %% [markdown]
# ## Steering base and IMAD with the SFT vectors
#
# From a held-out debate's context up to an agent's round-1 tag, generate under that agent's vector over an α
# grid (`sub.raw()`: α = 1 adds one full mean difference; α = 0 is the unsteered model) and score ROUGE-L against
# what the agent actually said. One `lens.generate` call per model and agent runs the whole grid.

# %%
ALPHAS = [0.0, 1.0, 2.0]
held = lens.read_jsonl(layout.heldout("main"))[:4]
curves = {}
for name in ("base", "IMAD"):
    model = models[name]
    for a, sub in subs.items():
        prompts, refs = agent_subspaces.turn_prompts(held, a, rounds=(1,))
        out = lens.generate(model, prompts, interventions=sub.raw(), alphas=ALPHAS, max_new_tokens=24,
                            stop=stop_ids(model, at_tags=True))
        scores = [[rouge(text.strip(), ref)["rougeL"] for text, ref in zip(out.select(alpha=x), refs)]
                  for x in ALPHAS]
        curves[f"{name} a{a}"] = (ALPHAS, *zip(*[mean_se(s) for s in scores]))
pd.DataFrame({name: mean for name, (_, mean, _) in curves.items()}, index=[f"α={x:g}" for x in ALPHAS]).round(3)

# %%
lens.plots.steering_curves(curves, metric="ROUGE-L vs the agent's own turn")

# %% [markdown]
# ## The study's results
#
# Table 8 (area under ROUGE vs α, base vs IMAD) and the figures, from the run's saved results.

# %%
results = load_results(RUN_DIR, agent_subspaces.NAME)
pd.DataFrame(agent_subspaces.auc_rows(results))

# %%
for fig in agent_subspaces.figures(results).values():
    fig.show()
