"""Agent directions and subspaces: where in the residual stream one debate agent differs from the others.

``diff_means`` is the paper's vector (target agent minus the mean of the others in the same question/round slot,
averaged, unit norm); ``pca`` takes the top-k directions of those per-slot differences; ``probe`` the weight of a
target-vs-others logistic regression. Layers are scored by cross-validated (held-out question) separation.
"""

from __future__ import annotations

import json
from collections import defaultdict
import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
from jaxtyping import Bool, Float, Int
from safetensors.torch import load_file
from torch import Tensor

from lens.activations import (ActivationSet, Position, collect_activations, hook_name, normalize_position,
                              resolve_layers, resolve_transcripts, turn_activations, turn_labels)
from lens.errors import LensInputError
from lens.io import atomic_save_tensors, atomic_write_json

METHODS = ("diff_means", "pca", "probe")


@dataclass
class AgentSubspace:
    """Orthonormal ``basis`` rows read at ``hook_name`` (``blocks.{layer}.hook_resid_post``) at token rule
    ``position``, with per-layer ``scores``, the statistics of the fit and where the data came from."""

    basis: Float[Tensor, "k d_model"]
    layer: int
    hook_name: str
    position: Position
    method: str
    agent: int | None = None
    persona: str | None = None
    scores: dict[int, dict[str, float]] = field(default_factory=dict)
    normalization: str = "unit"
    stats: dict[str, float] = field(default_factory=dict)
    provenance: dict = field(default_factory=dict)

    @property
    def k(self) -> int:
        return self.basis.shape[0]

    @property
    def d_model(self) -> int:
        return self.basis.shape[1]

    @property
    def direction(self) -> Float[Tensor, "d_model"]:
        """The leading direction (what `lens.steer` adds)."""
        return self.basis[0]

    def raw(self) -> "AgentSubspace":
        """This direction scaled to the norm of the raw mean difference it was fitted from, so that α = 1 shifts a
        reading by one full mean difference (the paper's code with ``--no_normalize``). Unit α is in absolute
        residual units, which means little on a model whose residual norm is far from a large model's."""
        fitted_by_diff = self.method in ("diff_means", "contrastive_diff_means") and "raw_diff_norm" in self.stats
        if self.k != 1 or not fitted_by_diff:
            raise LensInputError(f"raw() needs a single direction fitted by diff of means (this one: k={self.k}, "
                                 f"method {self.method!r})")
        return dataclasses.replace(self, basis=self.basis * self.stats["raw_diff_norm"],
                                   normalization="raw mean difference")

    def _meta(self) -> dict:
        return {"layer": self.layer, "hook_name": self.hook_name, "position": self.position, "method": self.method,
                "agent": self.agent, "persona": self.persona, "normalization": self.normalization,
                "scores": {str(k): v for k, v in self.scores.items()}, "stats": self.stats,
                "provenance": self.provenance, "k": self.k, "d_model": self.d_model}

    def save(self, path: str | Path) -> Path:
        """``path.safetensors`` (the basis) + ``path.json`` (everything else), both atomic."""
        path = Path(path).with_suffix(".safetensors")
        atomic_save_tensors(path, {"basis": self.basis}, metadata={"hook_name": self.hook_name})
        atomic_write_json(path.with_suffix(".json"), self._meta())
        return path

    @classmethod
    def load(cls, path: str | Path) -> "AgentSubspace":
        path = Path(path).with_suffix(".safetensors")
        if not path.exists():
            raise LensInputError(f"{path}: no saved subspace there")
        meta = json.loads(path.with_suffix(".json").read_text())
        return cls(basis=load_file(str(path))["basis"], layer=meta["layer"], hook_name=meta["hook_name"],
                   position=meta["position"], method=meta["method"], agent=meta["agent"], persona=meta["persona"],
                   scores={int(k): v for k, v in meta["scores"].items()}, normalization=meta["normalization"],
                   stats=meta["stats"], provenance=meta["provenance"])


def _model_provenance(model) -> dict:
    prov = getattr(model, "lens_provenance", None)
    return {} if prov is None else {"model_path": prov.path, "adapter": prov.adapter,
                                    "model_fingerprint": prov.fingerprint}


def _unit(v: Float[Tensor, "d_model"]) -> Float[Tensor, "d_model"]:
    norm = v.norm()
    if norm == 0:
        raise LensInputError("the direction is zero: the two groups have identical mean activations")
    return v / norm


def cohens_d(a: Float[Tensor, "n"], b: Float[Tensor, "m"]) -> float:
    """Standardised mean difference with pooled standard deviation."""
    pooled = ((a.var(unbiased=True) * (len(a) - 1) + b.var(unbiased=True) * (len(b) - 1)) /
              max(len(a) + len(b) - 2, 1)).sqrt()
    return float((a.mean() - b.mean()) / pooled.clamp_min(1e-12))


@dataclass
class _Slots:
    """Readings in complete (transcript, round) slots: which is the target, and the slot of each."""

    x: Float[Tensor, "n d_model"]
    is_target: Bool[Tensor, "n"]
    slot: Int[Tensor, "n"]
    group: Int[Tensor, "n"]


def _slot_diffs(s: _Slots, idx: Int[Tensor, "m"]) -> Float[Tensor, "slots d_model"]:
    """Per slot: target reading minus the mean of the other agents' readings in that slot."""
    diffs = []
    for slot in s.slot[idx].unique():
        members = idx[s.slot[idx] == slot]
        tgt = members[s.is_target[members]]
        diffs.append(s.x[tgt].mean(0) - s.x[members[~s.is_target[members]]].mean(0))
    return torch.stack(diffs)


def _fit(method: str, k: int, s: _Slots, idx: Int[Tensor, "m"]) -> Float[Tensor, "k d_model"]:
    if method == "diff_means":
        return _unit(_slot_diffs(s, idx).mean(0))[None]
    if method == "pca":
        diffs = _slot_diffs(s, idx)
        _, _, vh = torch.linalg.svd(diffs.double(), full_matrices=False)
        basis = vh[:k].float()
        signs = torch.sign(basis @ diffs.mean(0))
        return basis * torch.where(signs == 0, 1.0, signs)[:, None]
    return _probe_direction(s.x[idx], s.is_target[idx])[None]


def small_fits():
    """sklearn fits here are small: one BLAS thread avoids oversubscription (3x faster on a shared CPU)."""
    from threadpoolctl import threadpool_limits

    return threadpool_limits(limits=1)


def _probe_direction(x: Float[Tensor, "n d_model"], y: Bool[Tensor, "n"]) -> Float[Tensor, "d_model"]:
    """Unit weight of a logistic regression of ``y`` on ``x`` (in activation space, oriented toward y=True)."""
    from sklearn.linear_model import LogisticRegression

    scale = x.double().std(0).clamp_min(1e-8)
    with small_fits():
        clf = LogisticRegression(max_iter=2000, class_weight="balanced").fit((x.double() / scale).numpy(), y.numpy())
    return _unit((torch.tensor(clf.coef_[0]) / scale).float())  # back to raw activation coordinates


def group_folds(groups: Int[Tensor, "n"], cv: int) -> list[tuple[Tensor, Tensor]]:
    """Train/test index pairs that never split a group (a question) across the two."""
    from sklearn.model_selection import GroupKFold

    n_groups = len(groups.unique())
    if n_groups < 2:
        return []
    splitter = GroupKFold(n_splits=min(cv, n_groups))
    return [(torch.tensor(tr), torch.tensor(te)) for tr, te in splitter.split(np.zeros(len(groups)), groups=groups)]


def _balanced_accuracy(pred: np.ndarray, y: np.ndarray) -> float:
    return float(np.mean([np.mean(pred[y == c] == c) for c in np.unique(y)]))


def score_direction(x: Float[Tensor, "n d_model"], y: Bool[Tensor, "n"], groups: Int[Tensor, "n"],
                    fit: Callable[[Tensor], Tensor], cv: int = 5) -> dict[str, float]:
    """Held-out Cohen's d of projections on the fitted direction and held-out balanced probe accuracy
    (folds by group, e.g. question); in-sample values when there is only one group."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    folds = group_folds(groups, cv) or [(torch.arange(len(y)), torch.arange(len(y)))]
    proj, truth, pred = [], [], []
    with small_fits():
        for train, test in folds:
            proj.append(x[test] @ fit(train)[0])
            truth.append(y[test])
            if len(y[train].unique()) == 2:
                clf = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000, class_weight="balanced"))
                pred.append(clf.fit(x[train].double().numpy(), y[train].numpy()).predict(x[test].double().numpy()))
            else:
                pred.append(np.full(len(test), bool(y[train][0])))
    proj, truth = torch.cat(proj), torch.cat(truth)
    return {"cohens_d": cohens_d(proj[truth], proj[~truth]),
            "probe_accuracy": _balanced_accuracy(np.concatenate(pred), truth.numpy())}


def _resolve_agent(agent: int | str, labels: list[dict]) -> tuple[Bool[Tensor, "n"], int | None, str | None]:
    """Which turns belong to ``agent`` (1-based index or persona name); clear errors otherwise."""
    column = lambda key: [lab[key] for lab in labels]  # noqa: E731
    agents = sorted(set(column("agent")))
    personas = sorted({p for p in column("persona") if p is not None})
    if isinstance(agent, bool) or not isinstance(agent, (int, str)):
        raise LensInputError(f"agent {agent!r} must be an agent number {agents} or a persona name {personas}")
    if isinstance(agent, int):
        if agent not in agents:
            raise LensInputError(f"agent {agent} does not appear in these transcripts; agents present: {agents}"
                                 + (f" (personas: {personas})" if personas else ""))
        mask = torch.tensor([a == agent for a in column("agent")])
        names = {p for a, p in zip(column("agent"), column("persona")) if a == agent and p}
        return mask, agent, names.pop() if len(names) == 1 else None
    if agent not in personas:
        raise LensInputError(f"unknown agent {agent!r}; valid: agent numbers {agents} or personas {personas}")
    mask = torch.tensor([p == agent for p in column("persona")])
    numbers = {a for a, p in zip(column("agent"), column("persona")) if p == agent}
    return mask, numbers.pop() if len(numbers) == 1 else None, agent


def _complete_slots(acts: ActivationSet, is_target: Bool[Tensor, "n"]) -> tuple[Int[Tensor, "m"], Tensor, Tensor]:
    """Readings in slots where every agent of that transcript is present and the target is one of them."""
    by_slot = defaultdict(list)
    for i, lab in enumerate(acts.labels):
        by_slot[(lab["transcript"], lab["round"])].append(i)
    agents_of = defaultdict(set)
    for lab in acts.labels:
        agents_of[lab["transcript"]].add(lab["agent"])
    keep, slot, group = [], [], []
    for n, ((t, _), members) in enumerate(by_slot.items()):
        present = {acts.labels[i]["agent"] for i in members}
        n_target = int(is_target[members].sum())
        if present == agents_of[t] and n_target == 1 and len(members) > 1:
            keep += members
            slot += [n] * len(members)
            group += [t] * len(members)
    return torch.tensor(keep, dtype=torch.long), torch.tensor(slot), torch.tensor(group)


def find_agent_subspace(model, agent: int | str, *, transcripts=None, layers: int | Sequence[int] | None = None,
                        method: str = "diff_means", k: int = 1, position: Position = "turn_end", cv: int = 5,
                        batch_size: int = 8, prepend_bos: bool | None = None,
                        progress: bool = False) -> AgentSubspace:
    """The direction (k=1) or subspace of ``agent`` (1-based number or persona) in the debates ``transcripts``
    (default: those the model was trained on); with several layers, the best-separating one is chosen."""
    if method not in METHODS:
        raise LensInputError(f"method {method!r} is unknown; valid: {', '.join(METHODS)}")
    if k < 1 or (k > 1 and method != "pca"):
        raise LensInputError(f"k={k} is invalid for method {method!r}: k>1 needs method='pca'; k must be >= 1")
    position = normalize_position(position)
    transcripts, sources = resolve_transcripts(model, transcripts)
    layer_list = resolve_layers(model, layers)
    is_target, number, persona = _resolve_agent(agent, turn_labels(transcripts))
    acts = turn_activations(model, transcripts, layers=layer_list, position=position, batch_size=batch_size,
                            prepend_bos=prepend_bos, progress=progress)
    keep, slot, group = _complete_slots(acts, is_target)
    if len(keep) == 0:
        raise LensInputError(f"agent {agent!r} never shares a complete (question, round) slot with other agents; "
                             f"diff-of-means needs slots where all agents took a turn")
    n_slots = len(slot.unique())
    if method == "pca" and k > n_slots:
        raise LensInputError(f"k={k} exceeds the {n_slots} slot differences available; use k <= {n_slots}")
    scores, fits = {}, {}
    for layer in layer_list:
        s = _Slots(acts.at(layer)[keep], is_target[keep], slot, group)
        scores[layer] = score_direction(s.x, s.is_target, s.group, lambda idx, s=s: _fit(method, k, s, idx), cv)
        fits[layer] = s
    best = max(layer_list, key=lambda l: scores[l]["cohens_d"])
    s = fits[best]
    basis = _fit(method, k, s, torch.arange(len(s.x)))
    raw = _slot_diffs(s, torch.arange(len(s.x))).mean(0)
    return AgentSubspace(
        basis=basis.contiguous(), layer=best, hook_name=hook_name(best), position=position, method=method,
        agent=number, persona=persona, scores=scores,
        normalization="unit" if k == 1 else "orthonormal rows",
        stats={"n_slots": n_slots, "n_readings": len(keep), "raw_diff_norm": float(raw.norm()),
               "resid_norm": float(s.x.norm(dim=-1).mean())},
        provenance={**_model_provenance(model), "transcripts": sources, "n_transcripts": len(transcripts),
                    "n_slots": n_slots, "prepend_bos": acts.prepend_bos, "selected_by": "cross-validated cohens_d"})


def contrastive_direction(model, pos_texts: Sequence[str], neg_texts: Sequence[str],
                          layer: int | Sequence[int] | None = None, position: Position = -2, *, cv: int = 5,
                          batch_size: int = 8, prepend_bos: bool | None = None, label: str = "contrastive",
                          progress: bool = False) -> AgentSubspace:
    """Unit mean(pos) − mean(neg) at ``position`` of each text (paper §7: evil vs helpful system prompt through
    the chat template, token −2); with several layers, the best-separating one is chosen."""
    if not pos_texts or not neg_texts:
        raise LensInputError("contrastive_direction needs at least one positive and one negative text")
    position = normalize_position(position)
    layer_list = resolve_layers(model, layer)
    acts = collect_activations(model, [*pos_texts, *neg_texts], layers=layer_list, position=position,
                               batch_size=batch_size, prepend_bos=prepend_bos, progress=progress)
    y = torch.tensor([True] * len(pos_texts) + [False] * len(neg_texts))
    groups = torch.cat([torch.arange(len(pos_texts)), torch.arange(len(neg_texts))])

    def fit(x, idx):
        return _unit(x[idx][y[idx]].mean(0) - x[idx][~y[idx]].mean(0))[None]

    scores = {l: score_direction(acts.at(l), y, groups, lambda idx, x=acts.at(l): fit(x, idx), cv)
              for l in layer_list}
    best = max(layer_list, key=lambda l: scores[l]["cohens_d"])
    x = acts.at(best)
    raw = x[y].mean(0) - x[~y].mean(0)
    return AgentSubspace(
        basis=fit(x, torch.arange(len(y))).contiguous(), layer=best, hook_name=hook_name(best), position=position,
        method="contrastive_diff_means", persona=label, scores=scores, normalization="unit",
        stats={"n_pos": len(pos_texts), "n_neg": len(neg_texts), "raw_diff_norm": float(raw.norm()),
               "resid_norm": float(x.norm(dim=-1).mean())},
        provenance={**_model_provenance(model), "transcripts": [], "n_pos": len(pos_texts), "n_neg": len(neg_texts),
                    "prepend_bos": acts.prepend_bos, "selected_by": "cross-validated cohens_d"})


def chat_prompts(model, system: str, questions: Sequence[str]) -> list[str]:
    """``questions`` under system prompt ``system`` through the tokenizer's chat template, with the generation
    prompt (the texts `contrastive_direction` reads at token −2)."""
    tok = model.tokenizer
    if not tok.chat_template:
        raise LensInputError("the tokenizer has no chat template; build the prompt texts yourself")
    return [tok.apply_chat_template([{"role": "system", "content": system}, {"role": "user", "content": q}],
                                    tokenize=False, add_generation_prompt=True) for q in questions]
