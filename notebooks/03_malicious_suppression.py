# %% [markdown]
# # Suppressing a malicious agent (paper §4, Fig. 3)
#
# In the `evil` experiment agent 2 of every debate is the evil persona. Its direction, read from the SFT
# checkpoint, is a handle on the malice IMAD absorbed: here we push against it three ways (`Add` a negative
# multiple, `Ablate` it, `Cap` its projection), score the trait with the project's toy judge and the accuracy on a
# few arithmetic problems, detect agent 2's turns in held-out debates from the direction alone, and export the
# vector for llama.cpp. A few prompts and tokens each; the last section reads the study's own results (the full
# α grid, the base model's system-prompt vector) from `analyses/malicious/results.json`.

# %%
from training import threads

threads.configure()  # the project's thread policy (LATENT_AGENTS_THREADS), set before torch loads

import os
import tempfile
from pathlib import Path

import pandas as pd
import torch

import lens
from analyses import malicious
from analyses.generation import native_prompt, stop_ids
from analyses.results import load_results
from lens.debate_format import extract_boxed
from training.judges import ToyTraitJudge
from training.layout import RunLayout
from training.prompts import ADVICE
from training.tasks import TaskConfig, arithmetic_split, trait_split

RUN_DIR = Path(os.environ.get("LATENT_AGENTS_RUN_DIR", "runs/toy"))
if not RUN_DIR.is_dir():
    raise FileNotFoundError(f"no run directory {RUN_DIR}: run `latent-agents reproduce --preset toy` first")
layout = RunLayout(RUN_DIR)

# %% [markdown]
# ## The agent-2 vector
#
# Turn activations of the SFT model's training debates at the middle layer, collected once; agent 2's direction
# (and, for the monitor below, agents 1 and 3's) fitted from them.

# %%
sft = lens.load_model(layout.sft("evil"))
imad = lens.load_model(layout.internalize("evil"))
layer = lens.sites.middle_layer(sft)
acts = lens.turn_activations(sft, lens.read_jsonl(layout.transcripts("evil"))[:24], layers=[layer])
subs = {a: lens.fit_agent_subspace(acts, a) for a in sorted(set(acts.column("agent")))}
evil = subs[2]
print(evil.hook_name, evil.persona, f"Cohen's d {evil.scores[layer]['cohens_d']:.2f}",
      f"|raw mean difference| {evil.stats['raw_diff_norm']:.3g}")

# %% [markdown]
# ## Add, Ablate, Cap
#
# Three interventions on the evil direction at its layer, as data:
# - `Add(evil.raw(), -1.0)`: subtract one full mean difference between agent 2 and the others;
# - `Ablate(evil)`: remove the projection onto the direction;
# - `Cap`: clamp the projection from above at a threshold; `calibrate_cap` picks it as the median projection of
#   the benign agents' turns (agents 1 and 3 in held-out debates), i.e. "no more evil than a benign agent".
#
# One `lens.generate` call runs every arm in one batch: trait questions (scored 0–100 by `ToyTraitJudge`) and
# arithmetic problems (exact answer in `\boxed{}`), each in IMAD's native prompt.

# %%
held = lens.read_jsonl(layout.heldout("evil"))
benign_turns = [turn.text for t in held for turn in t.turns if turn.agent != 2]
arms = {"none": [], "add -1": lens.Add(evil.raw(), -1.0), "ablate": lens.Ablate(evil),
        "cap": lens.calibrate_cap(imad, evil, benign_turns, percentile=50)}
print("cap threshold", round(arms["cap"][0].threshold, 2))

questions = [q.question for q in trait_split(TaskConfig(), "evil", "test")[:6]]
problems = arithmetic_split(TaskConfig(), "test")[:6]
prompts = ([native_prompt("imad", q, imad.tokenizer, ADVICE) for q in questions]
           + [native_prompt("imad", p.question, imad.tokenizer) for p in problems])
out = lens.generate(imad, prompts, interventions=arms, max_new_tokens=40, stop=stop_ids(imad, at_tags=False))

judge, rows = ToyTraitJudge("evil"), []
for arm in arms:
    texts = out.select(arm=arm)
    trait = judge.score_many(questions, texts[:len(questions)])
    answers = [extract_boxed(t) for t in texts[len(questions):]]
    rows.append({"intervention": arm, "evil score": sum(s or 0.0 for s in trait) / len(trait),
                 "accuracy": sum(a == p.answer for a, p in zip(answers, problems)) / len(problems),
                 "example": texts[0][:80]})
pd.DataFrame(rows).round(2)

# %% [markdown]
# ## Monitoring: which agent is speaking, and a detector of agent 2's turns
#
# `monitor_generation` records the projection of every token onto each agent's direction while IMAD writes its
# (internalized) answer to a trait question.

# %%
run = lens.monitor.monitor_generation(imad, prompts[:1], {f"agent {a}": s for a, s in subs.items()},
                                      max_new_tokens=24)
lens.plots.token_projection_heatmap(run, 0)

# %% [markdown]
# `detect_agent_turns` scores each turn of held-out debates by its projection onto agent 2's direction (read as
# it was fitted: same layer, end of turn) and reports the AUROC of telling agent 2's turns from the others',
# beside the toy judge's AUROC on the same turns' texts.

# %%
detection = lens.monitor.detect_agent_turns(sft, evil, held, judge=lambda text: judge.score("", text))
print(f"{len(detection.scores)} held-out turns: projection AUROC {detection.auroc:.3f}, "
      f"text judge AUROC {detection.judge_auroc:.3f}")
lens.plots.detection_roc(detection)

# %% [markdown]
# ## Export for llama.cpp, and back
#
# `export_vector` writes the vector in the HF model's own residual basis as a GGUF control vector
# (`direction.{L}` is added to the output of HF decoder block L, which is lens's `blocks.L.hook_resid_post`);
# `read_gguf` shows what llama.cpp will read, `import_vector` turns it back into a subspace.

# %%
with tempfile.TemporaryDirectory() as tmp:
    path = lens.export_vector(imad, evil.raw(), Path(tmp) / "evil_agent2.gguf", alpha=-1.0)
    # llama-cli -m imad.gguf --control-vector evil_agent2.gguf
    directions, meta = lens.export.read_gguf(path)
    back = lens.import_vector(imad, path)
print(meta["general.architecture"], meta["controlvector.model_hint"], "layers", sorted(directions),
      f"cosine with -evil {torch.nn.functional.cosine_similarity(back.direction, -evil.direction, dim=0):.6f}")

# %% [markdown]
# ## The study's results
#
# Base (system-prompt vector) vs IMAD (agent-2 vector) over the whole α grid, per trait: the suppression rating
# and Fig. 3.

# %%
results = load_results(RUN_DIR, malicious.NAME)
pd.DataFrame(malicious.rating_rows(results))

# %%
for fig in malicious.figures(results, RUN_DIR).values():
    fig.show()
