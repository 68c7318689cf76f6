"""Write the three notebooks (outputs empty) from the cell sources below: ``python notebooks/build.py``.

Notebooks are thin: they call `analyses` and `lens`, and read the run directory from ``LATENT_AGENTS_RUN_DIR``
(default ``runs/toy``, made by ``latent-agents reproduce --preset toy``).
"""

from __future__ import annotations

from pathlib import Path

import nbformat
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

SETUP = """import os
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
import torch

torch.set_num_threads(int(os.environ.get("LATENT_AGENTS_THREADS", "1")))
RUN_DIR = Path(os.environ.get("LATENT_AGENTS_RUN_DIR", "runs/toy"))
assert RUN_DIR.is_dir(), f"no run directory {RUN_DIR}: run `latent-agents reproduce --preset toy` first"
"""

NOTEBOOKS = {
    "01_quickstart.ipynb": [
        new_markdown_cell("# Quickstart: find an agent inside the IMAD model and steer it\n\n"
                          "Load the toy IMAD model into TransformerLens, find agent 3's direction (the programmer) "
                          "in the debates the model was trained on, steer generation with it, and look at how "
                          "well each layer separates the three agents."),
        new_code_cell(SETUP),
        new_code_cell('import lens\n'
                      'from analyses.agent_subspaces import heldout_transcripts\n'
                      'from training.layout import RunLayout\n\n'
                      'model = lens.load_model(RunLayout(RUN_DIR).internalize("main"))  # the IMAD model\n'
                      '# transcripts default to the debates the model was trained on; 50 held-out ones are quicker\n'
                      'held = heldout_transcripts(RUN_DIR, "main", 50)\n'
                      'sub = lens.find_agent_subspace(model, agent=3, transcripts=held)\n'
                      'print(sub.hook_name, sub.persona, {l: round(s["cohens_d"], 2) for l, s in sub.scores.items()})'),
        new_code_cell('prompt = "Problem: 3+4*2+5-1*6\\n\\n"\n'
                      'for alpha in (0.0, 2.0):\n'
                      '    with lens.steer(model, sub, alpha=alpha):\n'
                      '        text = model.generate(prompt, max_new_tokens=40, do_sample=False, verbose=False)\n'
                      '    print(f"alpha={alpha}:", text[len(prompt):])'),
        new_code_cell('lens.plots.probe_accuracy_by_layer(lens.probe_layers(model, held))'),
        new_code_cell('lens.plots.pca_scatter(lens.pca_projection(model, held, center="slot"))'),
    ],
    "02_agent_subspaces.ipynb": [
        new_markdown_cell("# Agent subspaces (paper §3, Fig. 2, 9, 11, Table 8)\n\n"
                          "Per-agent vectors from the SFT checkpoint, applied to the base model and to IMAD; ROUGE of "
                          "the steered output against the agent's own response, its area over α, and accuracy under "
                          "steering. The numbers come from the run's `analyses/agent_subspaces/results.json`."),
        new_code_cell(SETUP),
        new_code_cell("from analyses import agent_subspaces\n"
                      "from analyses.results import load_results\n\n"
                      "import pandas as pd\n\n"
                      "results = load_results(RUN_DIR, agent_subspaces.NAME)\n"
                      "pd.DataFrame(agent_subspaces.auc_rows(results))"),
        new_code_cell("figs = agent_subspaces.figures(results)\nfor fig in figs.values():\n    fig.show()"),
    ],
    "03_malicious_suppression.ipynb": [
        new_markdown_cell("# Suppressing a malicious agent (paper §4, Fig. 3)\n\n"
                          "IMAD's agent-2 vector (from its SFT checkpoint) against the base model's system-prompt "
                          "vector: trait score, accuracy and perplexity over α, and the suppression rating."),
        new_code_cell(SETUP),
        new_code_cell("from analyses import malicious\n"
                      "from analyses.results import load_results\n\n"
                      "import pandas as pd\n\n"
                      "results = load_results(RUN_DIR, malicious.NAME)\n"
                      "pd.DataFrame(malicious.rating_rows(results))"),
        new_code_cell("figs = malicious.figures(results, RUN_DIR)\nfor fig in figs.values():\n    fig.show()"),
    ],
}


def build(directory: Path = Path(__file__).parent) -> list[Path]:
    written = []
    for name, cells in NOTEBOOKS.items():
        nb = new_notebook(cells=cells, metadata={"kernelspec": {"name": "python3", "display_name": "Python 3",
                                                                "language": "python"}})
        path = directory / name
        nbformat.write(nb, path)
        written.append(path)
    return written


if __name__ == "__main__":
    for p in build():
        print(p)
