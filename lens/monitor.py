"""Monitoring with agent directions: which agent is speaking, token by token, and a detector of one agent's turns.

`token_projections` reads every token of given texts; `monitor_generation` records the residual stream while the
model generates (inside any `lens.steer` context, so it sees the steered stream). Each subspace is read at the
hook where it was found, and projections are onto its leading direction divided by its norm, so a unit and a
`raw()` direction give the same reading. `detect_agent_turns` scores each turn of held-out debates by its projection and reports the AUROC of telling the
target agent's turns from the others', beside the AUROC of a text judge on the same turns.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable, Mapping, Sequence

import numpy as np
import torch
from jaxtyping import Float
from torch import Tensor

from lens.activations import ActivationSet, resolve_prepend_bos, turn_activations
from lens.debate_format import Transcript, turn_spans
from lens.errors import LensInputError
from lens.subspace import AgentSubspace


@dataclass
class TokenProjections:
    """Per text, the projection of every token's residual onto each named direction.

    ``projections[i][p, j]`` is token ``p`` of text ``i`` on direction ``names[j]``; ``tokens[i]`` are the token
    strings and ``token_ids[i]`` their ids; ``prompt_lens[i]`` is where generated tokens start (the text length
    for plain texts)."""

    names: list[str]
    hook_names: list[str]
    tokens: list[list[str]]
    token_ids: list[list[int]]
    projections: list[Float[Tensor, "pos n_directions"]]
    prompt_lens: list[int] = field(default_factory=list)

    def speaker(self, i: int, *, centre: bool = True) -> list[str]:
        """The name whose direction reads highest at each token of text ``i``; with ``centre``, each direction's
        readings are first shifted by their mean over all tokens of all texts (directions have different
        offsets, and "highest" should mean "higher than usual")."""
        if not 0 <= i < len(self.projections):
            raise LensInputError(f"text index {i} is out of range: there are {len(self.projections)} texts")
        x = self.projections[i]
        if centre:
            x = x - torch.cat(self.projections).mean(0)
        return [self.names[j] for j in x.argmax(-1).tolist()]

    def to_dict(self) -> dict:
        return {"names": self.names, "hook_names": self.hook_names, "tokens": self.tokens,
                "token_ids": self.token_ids,
                "projections": [p.tolist() for p in self.projections], "prompt_lens": self.prompt_lens}


def _unit_directions(model, subspaces: Mapping[str, AgentSubspace]) -> tuple[list[str], list[str], Tensor]:
    if not subspaces:
        raise LensInputError("subspaces is empty; pass {name: AgentSubspace} with at least one entry")
    names = list(subspaces)
    for name, s in subspaces.items():
        if not isinstance(s, AgentSubspace):
            raise LensInputError(f"{name!r}: expected an AgentSubspace, got {type(s).__name__}")
        if s.d_model != model.cfg.d_model:
            raise LensInputError(f"{name!r} has width {s.d_model} but this model's d_model is {model.cfg.d_model}; "
                                 f"it was found on another model")
    dirs = torch.stack([s.direction.float() / s.direction.float().norm() for s in subspaces.values()])
    return names, [subspaces[n].hook_name for n in names], dirs


def _token_ids(model, text: str, prepend_bos: bool) -> list[int]:
    tok = model.tokenizer
    ids = ([tok.bos_token_id] if prepend_bos else []) + tok(text, add_special_tokens=False)["input_ids"]
    if not ids:
        raise LensInputError(f"text {text!r} has no tokens")
    return ids


def _project(readings: dict[str, Tensor], hooks: list[str], dirs: Tensor) -> Float[Tensor, "pos n_directions"]:
    return torch.stack([readings[h] @ dirs[j] for j, h in enumerate(hooks)], dim=-1)


@torch.no_grad()
def token_projections(model, texts: Sequence[str], subspaces: Mapping[str, AgentSubspace], *,
                      prepend_bos: bool | None = None) -> TokenProjections:
    """Project every token of ``texts`` onto each subspace's direction, at the hook where it was read.

    Args:
        model: A lens model.
        texts: Texts to read (e.g. a whole debate).
        subspaces: ``{name: AgentSubspace}``, e.g. ``{"agent 1": s1, "agent 2": s2, "agent 3": s3}``.
        prepend_bos: Put BOS first (default: the model's recorded default).

    Returns:
        A `TokenProjections` with one ``[tokens, len(subspaces)]`` tensor per text.

    Example:
        >>> proj = lens.monitor.token_projections(model, [debate_text], {"a1": s1, "a2": s2})  # doctest: +SKIP
        >>> lens.plots.token_projection_heatmap(proj, 0).show()  # doctest: +SKIP
    """
    if isinstance(texts, str) or not texts:
        raise LensInputError("texts must be a non-empty list of strings")
    names, hooks, dirs = _unit_directions(model, subspaces)
    prepend_bos = resolve_prepend_bos(model, prepend_bos)
    stop = max(subspaces[n].layer for n in names) + 1
    tokens, token_ids, projections = [], [], []
    for text in texts:
        ids = _token_ids(model, text, prepend_bos)
        _, cache = model.run_with_cache(torch.tensor([ids], device=model.cfg.device), names_filter=sorted(set(hooks)),
                                        stop_at_layer=stop)
        projections.append(_project({h: cache[h][0].float().cpu() for h in set(hooks)}, hooks, dirs))
        tokens.append([model.tokenizer.decode([i]) for i in ids])
        token_ids.append(ids)
    return TokenProjections(names=names, hook_names=hooks, tokens=tokens, token_ids=token_ids,
                            projections=projections, prompt_lens=[len(t) for t in tokens])


@torch.no_grad()
def monitor_generation(model, prompts: Sequence[str], subspaces: Mapping[str, AgentSubspace], *,
                       max_new_tokens: int = 32, prepend_bos: bool | None = None,
                       **generate_kwargs) -> TokenProjections:
    """Generate from each prompt (greedy unless told otherwise, KV cache on) and record every token's projection
    onto each direction as the model computes it.

    Inside ``with lens.steer(...)`` the recording sees the steered residual stream. The last generated token is
    never fed back to the model, so it has no reading and is left out of ``tokens``.

    Args:
        model: A lens model.
        prompts: One generation per prompt.
        subspaces: ``{name: AgentSubspace}``.
        max_new_tokens: Tokens to generate per prompt.
        prepend_bos: Put BOS first (default: the model's recorded default).
        **generate_kwargs: Passed to ``model.generate`` (e.g. ``do_sample=True, temperature=0.7``).

    Returns:
        A `TokenProjections` whose ``prompt_lens`` mark where generated tokens start.

    Example:
        >>> with lens.steer(model, s2, 4.0):  # doctest: +SKIP
        ...     run = lens.monitor.monitor_generation(model, ["<|Agent 2 Solution|>:"], {"a2": s2})
        >>> run.projections[0][run.prompt_lens[0]:]  # the generated tokens' readings  # doctest: +SKIP
    """
    if isinstance(prompts, str) or not prompts:
        raise LensInputError("prompts must be a non-empty list of strings")
    if max_new_tokens < 1:
        raise LensInputError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
    names, hooks, dirs = _unit_directions(model, subspaces)
    prepend_bos = resolve_prepend_bos(model, prepend_bos)
    generate_kwargs = {"do_sample": False, "use_past_kv_cache": True, **generate_kwargs, "verbose": False}
    tokens, token_ids, projections, prompt_lens = [], [], [], []
    for prompt in prompts:
        ids = _token_ids(model, prompt, prepend_bos)
        chunks: dict[str, list[Tensor]] = {h: [] for h in set(hooks)}

        def record(resid: Float[Tensor, "batch pos d_model"], hook):
            chunks[hook.name].append(resid[0].detach().float().cpu())

        with model.hooks(fwd_hooks=[(h, record) for h in chunks]):
            out = model.generate(torch.tensor([ids], device=model.cfg.device), max_new_tokens=max_new_tokens,
                                 **generate_kwargs)
        readings = {h: torch.cat(c) for h, c in chunks.items()}
        n = next(iter(readings.values())).shape[0]
        projections.append(_project(readings, hooks, dirs))
        token_ids.append(out[0, :n].tolist())
        tokens.append([model.tokenizer.decode([i]) for i in token_ids[-1]])
        prompt_lens.append(len(ids))
    return TokenProjections(names=names, hook_names=hooks, tokens=tokens, token_ids=token_ids,
                            projections=projections, prompt_lens=prompt_lens)


@dataclass
class TurnDetection:
    """Projection scores of held-out turns for telling ``agent``'s turns from the others', with their AUROC, and
    (when a judge was given) the judge's scores of the same turns and its AUROC."""

    agent: int | str
    hook_name: str
    scores: list[float]
    is_agent: list[bool]
    auroc: float
    labels: list[dict] = field(default_factory=list)
    judge_scores: list[float] | None = None
    judge_auroc: float | None = None

    def to_dict(self) -> dict:
        return {"agent": self.agent, "hook_name": self.hook_name, "scores": self.scores, "is_agent": self.is_agent,
                "auroc": self.auroc, "labels": self.labels, "judge_scores": self.judge_scores,
                "judge_auroc": self.judge_auroc}


def _auroc(is_agent: list[bool], scores: list[float]) -> float:
    from sklearn.metrics import roc_auc_score

    return float(roc_auc_score(np.array(is_agent), np.array(scores, dtype=float)))


def detect_agent_turns(model, subspace: AgentSubspace, transcripts: Sequence[Transcript], *,
                       agent: int | str | None = None, judge: Callable[[str], float | None] | None = None,
                       acts: ActivationSet | None = None, batch_size: int = 8) -> TurnDetection:
    """Score every turn of held-out debates by its projection onto ``subspace``'s direction (read as the subspace
    was: same layer, site and token rule) and measure by AUROC how well that tells ``agent``'s turns from the others'.

    Args:
        model: A lens model.
        subspace: The agent's direction, fitted on *other* transcripts.
        transcripts: Held-out debates whose turns are scored.
        agent: The agent to detect, by number or persona (default: the subspace's own agent).
        judge: Optional ``text -> score`` (higher = more like the agent, e.g. a trait judge); scored on the same
            turns' texts. A ``None`` from the judge counts as its lowest score.
        acts: These transcripts' turn activations if already collected (`lens.turn_activations` at the
            subspace's layer and token rule); then no forward pass is run.
        batch_size: Forward-pass batch size.

    Returns:
        A `TurnDetection` with both AUROCs (0.5 = chance, 1 = perfect).

    Example:
        >>> det = lens.monitor.detect_agent_turns(model, s2, held_out,  # doctest: +SKIP
        ...                                       judge=lambda text: judge.score("", text))
        >>> det.auroc, det.judge_auroc  # doctest: +SKIP
    """
    agent = agent if agent is not None else (subspace.agent if subspace.agent is not None else subspace.persona)
    if agent is None:
        raise LensInputError("the subspace names no agent; pass agent=<number or persona>")
    if acts is None:
        acts = turn_activations(model, transcripts, layers=[subspace.layer], position=subspace.position,
                                site=subspace.site, batch_size=batch_size)
    n_turns = sum(len(turn_spans(t)) for t in transcripts)
    if (len(acts.labels) != n_turns or acts.position != subspace.position or subspace.layer not in acts.layers
            or acts.site != subspace.site):
        raise LensInputError(f"acts do not belong to these transcripts read as the subspace was: they hold "
                             f"{len(acts.labels)} readings at layers {acts.layers}, site {acts.site}, position "
                             f"{acts.position!r}; needed {n_turns} turns at layer {subspace.layer}, site "
                             f"{subspace.site}, position {subspace.position!r}")
    key = "agent" if agent in {lab.get("agent") for lab in acts.labels} else "persona"
    is_agent = [lab[key] == agent for lab in acts.labels]
    if all(is_agent) or not any(is_agent):
        present = sorted({str(lab[key]) for lab in acts.labels})
        raise LensInputError(f"AUROC needs turns of {agent!r} and of others; these transcripts have {key}s {present}")
    direction = subspace.direction.float().cpu()
    scores = (acts.at(subspace.layer) @ (direction / direction.norm())).tolist()
    result = TurnDetection(agent=agent, hook_name=subspace.hook_name, scores=scores, is_agent=is_agent,
                           auroc=_auroc(is_agent, scores), labels=acts.labels)
    if judge is not None:
        raw = [judge(s.turn.text) for t in transcripts for s in turn_spans(t)]
        bad = [r for r in raw if r is not None and not (isinstance(r, (int, float)) and math.isfinite(r))]
        if bad:
            raise LensInputError(f"the judge returned {bad[0]!r}; it must return a finite number or None")
        floor = min((r for r in raw if r is not None), default=0.0) - 1.0
        result.judge_scores = [floor if r is None else float(r) for r in raw]
        result.judge_auroc = _auroc(is_agent, result.judge_scores)
    return result
