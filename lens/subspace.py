"""Agent directions and subspaces: where in the residual stream one debate agent differs from the others.

``diff_means`` is the paper's vector (target agent minus the mean of the others in the same question/round slot,
averaged, unit norm); ``pca`` takes the top-k directions of those per-slot differences; ``probe`` the weight of a
target-vs-others logistic regression; or any callable (see `lens.fitting`). Layers are scored by cross-validated
(held-out question) separation. Fit from an `ActivationSet` (`fit_agent_subspace`) to collect once and fit many
times; `find_agent_subspace` is the one-liner that collects and fits.
"""

from __future__ import annotations

import dataclasses
import json
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import torch
from jaxtyping import Bool, Float, Int
from safetensors.torch import load_file
from torch import Tensor

from lens.activations import (ActivationSet, Position, contrast_activations, normalize_position, resolve_transcripts,
                              turn_activations, turn_labels)
from lens.errors import LensInputError
from lens.fitting import FitMethod, Readings, as_groups, fit_method, run_fit, score_direction, slot_diffs
from lens.io import atomic_save_tensors, atomic_write_json
from lens.sites import DEFAULT_SITE, hook_name, site_of

@dataclass
class AgentSubspace:
    """Unit ``basis`` rows (orthonormal for ``pca``; scaled by `raw`) read at ``hook_name``
    (``blocks.{layer}.hook_{site}``) at token rule ``position``, with per-layer ``scores``, the statistics of the
    fit and where the data came from (``provenance``, which also records the site)."""

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
    site: str = DEFAULT_SITE

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
                "provenance": self.provenance, "k": self.k, "d_model": self.d_model, "site": self.site}

    def save(self, path: str | Path) -> Path:
        """``path.safetensors`` (the basis) + ``path.json`` (everything else), both atomic.

        Args:
            path: Where to write; the suffix becomes ``.safetensors`` and the sidecar ``.json``.

        Returns:
            The ``.safetensors`` path (`AgentSubspace.load` reads it back).

        Example:
            >>> subspace.save("runs/vectors/agent2")  # doctest: +SKIP
            PosixPath('runs/vectors/agent2.safetensors')
        """
        path = Path(path).with_suffix(".safetensors")
        atomic_save_tensors(path, {"basis": self.basis}, metadata={"hook_name": self.hook_name})
        atomic_write_json(path.with_suffix(".json"), self._meta())
        return path

    @classmethod
    def load(cls, path: str | Path) -> "AgentSubspace":
        """Read what `save` wrote; vectors saved before sites existed load as read at their hook's site."""
        path = Path(path).with_suffix(".safetensors")
        if not path.exists() or not path.with_suffix(".json").exists():
            raise LensInputError(f"{path}: no saved subspace there (need {path.name} and its .json sidecar)")
        meta = json.loads(path.with_suffix(".json").read_text())
        return cls(basis=load_file(str(path))["basis"], layer=meta["layer"], hook_name=meta["hook_name"],
                   position=meta["position"], method=meta["method"], agent=meta["agent"], persona=meta["persona"],
                   scores={int(k): v for k, v in meta["scores"].items()}, normalization=meta["normalization"],
                   stats=meta["stats"], provenance=meta["provenance"],
                   site=meta.get("site") or site_of(meta["hook_name"]))


def _resolve_agent(agent: int | str, labels: list[dict]) -> tuple[Bool[Tensor, "n"], int | None, str | None]:
    """Which readings belong to ``agent`` (1-based index or persona name); clear errors otherwise."""
    column = lambda key: [lab.get(key) for lab in labels]  # noqa: E731
    if any(a is None for a in column("agent")):
        raise LensInputError("some readings have no 'agent' label; label every span with its agent "
                             "(e.g. labels=[{'agent': 1}, ...]) to fit agent directions")
    agents = sorted(set(column("agent")), key=lambda a: (str(type(a)), a))
    personas = sorted({p for p in column("persona") if p is not None})
    if isinstance(agent, bool) or not isinstance(agent, (int, str)):
        raise LensInputError(f"agent {agent!r} must be an agent number {agents} or a persona name {personas}")
    if isinstance(agent, int) or agent in agents:
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
    """Readings in (transcript, round) slots where every agent of that transcript is present and the target is
    one of them: (reading indices, slot of each, group = transcript of each)."""
    by_slot = defaultdict(list)
    for i, lab in enumerate(acts.labels):
        by_slot[(lab["transcript"], lab.get("round"))].append(i)
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
    return torch.tensor(keep, dtype=torch.long), torch.tensor(slot), as_groups(group)


def _fit_best_layer(acts: ActivationSet, layers: list[int], r_at, groups, fn: FitMethod, k: int, cv: int):
    """Cross-validated scores per layer, the best layer by Cohen's d, its readings and its fitted basis."""
    scores, readings = {}, {}
    for layer in layers:
        r = r_at(layer)
        scores[layer] = score_direction(r.x, r.is_target, groups, lambda idx, r=r: run_fit(fn, r.subset(idx), k), cv)
        readings[layer] = r
    best = max(layers, key=lambda l: scores[l]["cohens_d"])
    return scores, best, readings[best], run_fit(fn, readings[best], k)


def fit_agent_subspace(acts: ActivationSet, agent: int | str, *, method: str | FitMethod = "diff_means",
                       k: int = 1, layers: int | Sequence[int] | None = None, cv: int = 5) -> AgentSubspace:
    """The direction (k=1) or subspace of ``agent`` fitted from collected activations; no forward pass.

    Readings are compared within slots (same ``"transcript"`` and ``"round"`` label): a slot counts when every
    agent of its transcript took a turn in it and the target is one of them. With several layers, the one whose
    direction best separates the target on held-out transcripts (cross-validated Cohen's d) is chosen.

    Args:
        acts: From `lens.turn_activations` or `lens.collect_activations` (labels need ``"agent"``; ``"persona"``
            lets you name agents; ``"round"`` is optional).
        agent: A 1-based agent number (or any ``"agent"`` label value) or a persona name.
        method: ``"diff_means"`` (the paper's), ``"pca"``, ``"probe"``, or a callable
            ``(Readings, k) -> Tensor[k, d_model]`` (see `lens.fitting`).
        k: Number of directions (k>1 needs ``"pca"`` or your own method).
        layers: Collected layers to consider (negatives count from the model's end); ``None``: all collected.
        cv: Cross-validation folds (by transcript) for the layer scores.

    Returns:
        An `AgentSubspace` read and (by default) written at the collected site, with per-layer scores.

    Example:
        >>> acts = lens.turn_activations(model, transcripts, layers=[1, 2])  # doctest: +SKIP
        >>> subs = {a: lens.fit_agent_subspace(acts, a) for a in (1, 2, 3)}  # doctest: +SKIP
        >>> subs[2].basis.shape  # doctest: +SKIP
        torch.Size([1, 64])
    """
    if not isinstance(acts, ActivationSet):
        raise LensInputError(f"acts must be an ActivationSet (from lens.turn_activations or "
                             f"lens.collect_activations), not {type(acts).__name__}")
    fn, name = fit_method(method, k)
    layer_list = acts.select_layers(layers)
    is_target, number, persona = _resolve_agent(agent, acts.labels)
    keep, slot, group = _complete_slots(acts, is_target)
    if len(keep) == 0:
        raise LensInputError(f"agent {agent!r} never shares a complete (question, round) slot with other agents; "
                             f"diff-of-means needs slots where all agents took a turn")
    n_slots = len(slot.unique())
    if k > n_slots:
        raise LensInputError(f"k={k} exceeds the {n_slots} slot differences available; use k <= {n_slots}")
    scores, best, r, basis = _fit_best_layer(
        acts, layer_list, lambda l: Readings(acts.at(l)[keep], is_target[keep], slot), group, fn, k, cv)
    raw = slot_diffs(r).mean(0)
    return AgentSubspace(
        basis=basis.contiguous(), layer=best, hook_name=hook_name(best, acts.site), position=acts.position,
        method=name, agent=number, persona=persona, scores=scores,
        normalization="unit" if k == 1 else "orthonormal rows",
        stats={"n_slots": n_slots, "n_readings": len(keep), "raw_diff_norm": float(raw.norm()),
               "resid_norm": float(r.x.norm(dim=-1).mean())},
        provenance={**acts.provenance, "n_slots": n_slots, "prepend_bos": acts.prepend_bos, "site": acts.site,
                    "selected_by": "cross-validated cohens_d"},
        site=acts.site)


def find_agent_subspace(source, agent: int | str, *, transcripts=None, layers: int | Sequence[int] | None = None,
                        method: str | FitMethod = "diff_means", k: int = 1, position: Position = "turn_end",
                        site: str = DEFAULT_SITE, cv: int = 5, batch_size: int = 8, prepend_bos: bool | None = None,
                        progress: bool = False) -> AgentSubspace:
    """The direction (k=1) or subspace of ``agent`` in debates: collect turn activations, then fit.

    Args:
        source: A TransformerLens model (activations are collected from ``transcripts``), or an `ActivationSet`
            collected before (then nothing runs; ``transcripts``/``position``/``site`` must be left unset).
        agent: A 1-based agent number or a persona name.
        transcripts: `Transcript` objects, JSONL path(s), or ``None`` for the debates the model was trained on.
        layers: Layers to consider (negatives count from the end); ``None``: all; the best-separating is chosen.
        method: ``"diff_means"``, ``"pca"``, ``"probe"`` or your own callable (see `lens.fitting`).
        k: Number of directions (k>1 needs ``"pca"`` or your own method).
        position: Where in each turn to read: ``"turn_end"``, ``"turn_mean"`` or a token index.
        site: Where to read: ``"resid_pre"``, ``"resid_mid"``, ``"resid_post"``, ``"attn_out"``, ``"mlp_out"``.
        cv: Cross-validation folds (by question) for the layer scores.
        batch_size: Debates per forward pass.
        prepend_bos: Whether to prepend BOS; ``None`` uses the model's default.
        progress: Show a progress bar.

    Returns:
        An `AgentSubspace`.

    Example:
        >>> sub = lens.find_agent_subspace(model, 2, transcripts="debates.jsonl", layers=[-1])  # doctest: +SKIP
        >>> with lens.steer(model, sub, 4.0):  # doctest: +SKIP
        ...     model.generate("Problem: 2+2", max_new_tokens=8)
    """
    if isinstance(source, ActivationSet):
        if transcripts is not None or position != "turn_end" or site != DEFAULT_SITE:
            raise LensInputError("an ActivationSet was already collected: pass either it or transcripts/position/"
                                 "site, not both")
        return fit_agent_subspace(source, agent, method=method, k=k, layers=layers, cv=cv)
    fit_method(method, k)
    normalize_position(position)
    transcripts, _ = resolve_transcripts(source, transcripts)
    _resolve_agent(agent, turn_labels(transcripts))  # an unknown agent fails before any forward pass
    acts = turn_activations(source, transcripts, layers=layers, position=position, site=site,
                            batch_size=batch_size, prepend_bos=prepend_bos, progress=progress)
    return fit_agent_subspace(acts, agent, method=method, k=k, cv=cv)


def contrastive_direction(source, pos_texts: Sequence[str] | None = None, neg_texts: Sequence[str] | None = None,
                          layers: int | Sequence[int] | None = None, position: Position = -2, *,
                          method: str | FitMethod = "diff_means", k: int = 1, site: str = DEFAULT_SITE,
                          cv: int = 5, batch_size: int = 8, prepend_bos: bool | None = None,
                          label: str = "contrastive", progress: bool = False) -> AgentSubspace:
    """The direction separating contrast pairs: by default unit mean(pos) − mean(neg) (paper §7: evil vs helpful
    system prompt through the chat template, token −2); with several layers, the best-separating one is chosen.

    Args:
        source: A TransformerLens model (then give ``pos_texts`` and ``neg_texts``), or an `ActivationSet` from
            `lens.contrast_activations` (labels ``"contrast"`` pos/neg and ``"transcript"`` = pair index).
        pos_texts: Texts with the behaviour.
        neg_texts: As many texts without it; ``neg_texts[i]`` pairs with ``pos_texts[i]``.
        layers: Layers to consider (negatives count from the end); ``None``: all.
        position: Token index (or ``"end"``/``"mean"``) read in each text.
        method: ``"diff_means"`` (the mean of pair differences), ``"pca"``, ``"probe"`` or your own callable.
        k: Number of directions.
        site: Where to read (see `lens.sites`).
        cv: Cross-validation folds (by pair) for the layer scores.
        batch_size: Texts per forward pass.
        prepend_bos: Whether to prepend BOS; ``None`` uses the model's default.
        label: Recorded as the vector's ``persona``.
        progress: Show a progress bar.

    Returns:
        An `AgentSubspace` with method ``"contrastive_<method>"``.

    Example:
        >>> d = lens.contrastive_direction(model, ["Be cruel. Hi"], ["Be kind. Hi"], layers=-1)  # doctest: +SKIP
        >>> d.method  # doctest: +SKIP
        'contrastive_diff_means'
    """
    fn, name = fit_method(method, k)
    if isinstance(source, ActivationSet):
        if pos_texts is not None or neg_texts is not None:
            raise LensInputError("an ActivationSet was already collected: pass either it or pos_texts/neg_texts")
        acts = source
    else:
        acts = contrast_activations(source, pos_texts or [], neg_texts or [], layers=layers, position=position,
                                    site=site, batch_size=batch_size, prepend_bos=prepend_bos, progress=progress)
        layers = None
    sides = acts.column("contrast")
    if any(s not in ("pos", "neg") for s in sides):
        raise LensInputError("these activations are not contrast pairs: every reading needs a 'contrast' label "
                             "'pos' or 'neg' (use lens.contrast_activations)")
    y = torch.tensor([s == "pos" for s in sides])
    pairs = as_groups(acts.column("transcript"))
    layer_list = acts.select_layers(layers)
    scores, best, r, basis = _fit_best_layer(acts, layer_list, lambda l: Readings(acts.at(l), y, pairs), pairs,
                                             fn, k, cv)
    raw = r.x[y].mean(0) - r.x[~y].mean(0)
    return AgentSubspace(
        basis=basis.contiguous(), layer=best, hook_name=hook_name(best, acts.site), position=acts.position,
        method=f"contrastive_{name}", persona=label, scores=scores,
        normalization="unit" if k == 1 else "orthonormal rows",
        stats={"n_pos": int(y.sum()), "n_neg": int((~y).sum()), "raw_diff_norm": float(raw.norm()),
               "resid_norm": float(r.x.norm(dim=-1).mean())},
        provenance={**acts.provenance, "transcripts": [], "n_pos": int(y.sum()), "n_neg": int((~y).sum()),
                    "prepend_bos": acts.prepend_bos, "site": acts.site, "selected_by": "cross-validated cohens_d"},
        site=acts.site)


def chat_prompts(model, system: str, questions: Sequence[str]) -> list[str]:
    """``questions`` under system prompt ``system`` through the tokenizer's chat template, with the generation
    prompt (the texts `contrastive_direction` reads at token −2).

    Args:
        model: A TransformerLens model whose tokenizer has a chat template.
        system: The system prompt.
        questions: User messages.

    Returns:
        One prompt text per question.

    Example:
        >>> lens.chat_prompts(model, "Be brief.", ["2+2?"])[0].endswith("assistant\\n")  # doctest: +SKIP
        True
    """
    tok = model.tokenizer
    if not tok.chat_template:
        raise LensInputError("the tokenizer has no chat template; build the prompt texts yourself")
    return [tok.apply_chat_template([{"role": "system", "content": system}, {"role": "user", "content": q}],
                                    tokenize=False, add_generation_prompt=True) for q in questions]
