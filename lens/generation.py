"""Batched generation under interventions: a whole α grid, and several arms (e.g. one per agent vector), in
batched ``model.generate`` calls with the KV cache.

Rows are (arm, α, prompt); they are sorted by prompt length, left-padded into chunks of ``batch_size``, and each
chunk is one cached generate in which every row carries its own arm and α (an `Add` of another arm adds 0 to a
row; an `Ablate` or `Cap` touches only its arm's rows). A chunk ends when every row has produced a stop token;
each row's response is cut at its first one. Greedy rows equal what a single unpadded generate gives.

Two backends run the same rows: ``"hooked"`` (TransformerLens' ``model.generate`` with its hooks) and ``"hf"``
(the HF model the TransformerLens model was converted from, kept by ``lens.load_model(..., keep_hf=True)``, with
PyTorch forward hooks on the decoder blocks). For an RMSNorm model (Llama, Qwen2, Mistral) TransformerLens' weight
processing leaves ``resid_post`` as HF computes it, so both steer the same stream; greedy tokens are identical
(tested) and HF's generate, with SDPA attention, is about twice as fast on CPU (``benchmarks/bench_generation.py``).
Sampled rows draw the same distribution through another random stream.
"""

from __future__ import annotations

import math
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from typing import Any, Iterator, Mapping, Sequence

import torch

from lens.activations import hf_reader, resolve_prepend_bos
from lens.errors import LensInputError
from lens.interventions import Add, _applied, _applied_hf, as_interventions, strength_matrix

_ANY = object()


@dataclass
class Generation:
    """One entry per row (arm, α, prompt), in the order arms × α × prompts.

    Attributes:
        texts: Decoded responses, cut before the first stop token.
        tokens: Response token ids, cut likewise.
        prompt_tokens: The prompt's token ids (BOS included when prepended).
        prompt: Index into the ``prompts`` passed.
        arm: Arm name (``None`` for the single unnamed arm).
        alpha: The α of the row (``None`` without an α grid, or for an arm without an `Add`).
        stopped: Whether the row ended at a stop token (else it ran out of ``max_new_tokens``).
        settings: How it was generated.
    """

    texts: list[str]
    tokens: list[list[int]]
    prompt_tokens: list[list[int]]
    prompt: list[int]
    arm: list[str | None]
    alpha: list[float | None]
    stopped: list[bool]
    settings: dict[str, Any] = field(default_factory=dict)

    def select(self, *, arm: Any = _ANY, alpha: Any = _ANY) -> list[str]:
        """Texts of the rows with this arm and α (either may be left out), in prompt order.

        Args:
            arm: The arm's name (``None`` is the single unnamed arm); left out, every arm.
            alpha: The strength; left out, every α.

        Returns:
            The decoded responses of those rows.

        Example:
            >>> gen.select(arm="agent2", alpha=-1.0)[:1]  # doctest: +SKIP
            ['I would talk it through openly ...']
        """
        return [t for t, a, x in zip(self.texts, self.arm, self.alpha)
                if (arm is _ANY or a == arm) and (alpha is _ANY or x == alpha)]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _arms(interventions) -> dict[str | None, list]:
    if interventions is None:
        return {None: []}
    if isinstance(interventions, Mapping):
        if not interventions:
            raise LensInputError("interventions is an empty dict; give at least one arm")
        return {str(name): as_interventions(arm) for name, arm in interventions.items()}
    return {None: as_interventions(interventions)}


def _stop_ids(model, stop) -> list[int]:
    tok = model.tokenizer
    if stop is None:
        return [] if tok.eos_token_id is None else [tok.eos_token_id]
    vocab = tok.get_vocab()
    out = []
    for s in ([stop] if isinstance(stop, (int, str)) else stop):
        if isinstance(s, str):
            if s not in vocab:
                raise LensInputError(f"stop token {s!r} is not in the tokenizer's vocabulary; give token ids or "
                                     f"single tokens it has")
            s = vocab[s]
        out.append(int(s))
    return out


@torch.no_grad()
def generate(model, prompts: Sequence[str], *, interventions=None, alphas: Sequence[float] | None = None,
             max_new_tokens: int = 64, stop: Sequence[int | str] | int | str | None = None,
             temperature: float = 0.0, top_p: float | None = None, top_k: int | None = None, seed: int = 0,
             batch_size: int = 32, prepend_bos: bool | None = None, skip_special_tokens: bool = False,
             arm_prompts: Mapping[Any, Sequence[int]] | None = None, backend: str = "auto") -> Generation:
    """Generate from ``prompts`` under each arm of ``interventions`` and each α, batched, with the KV cache.

    Args:
        model: A TransformerLens model.
        prompts: Prompt texts, read as they are (apply a chat template yourself, e.g. `lens.chat_prompts`).
        interventions: ``None`` (plain generation); one `Add`/`Ablate`/`Cap`/`AgentSubspace` or a list of them
            (one arm, applied together); or a dict ``{name: intervention or list}`` of arms, e.g. one per agent.
            An `AgentSubspace` counts as ``Add(sub)`` (strength 1, so α is in its units).
        alphas: Optional α grid: each `Add`'s strength is multiplied by α (its strength must then be a number
            for k=1 or ``[k]``); arms without an `Add` run once. α = 0 rows are the unsteered model.
        max_new_tokens: At most this many new tokens (fewer if the model's context is shorter).
        stop: Stop token ids or token strings; default: the tokenizer's eos.
        temperature: 0 for greedy, else sampling temperature.
        top_p: Nucleus sampling (with temperature > 0).
        top_k: Top-k sampling (with temperature > 0).
        seed: ``torch.manual_seed(seed)`` once before the first chunk.
        batch_size: Rows per generate call.
        prepend_bos: Whether to prepend BOS; ``None`` uses the model's default.
        skip_special_tokens: Drop special tokens when decoding.
        arm_prompts: Optional ``{arm name: prompt indices}``: that arm runs on those prompts only (e.g. each agent
            on its own turns, all in one call); arms not named run on every prompt.
        backend: ``"hooked"`` (TransformerLens), ``"hf"`` (the HF twin kept by ``load_model(keep_hf=True)``,
            forward hooks; ``resid_post`` sites of an RMSNorm model only) or ``"auto"`` (``"hf"`` where it
            applies, else ``"hooked"``).

    Returns:
        A `Generation` with one row per (arm, α, prompt).

    Example:
        >>> out = lens.generate(model, ["Problem: 2+3\\n\\n"], interventions={"a1": sub1, "a2": sub2},
        ...                     alphas=[0.0, 4.0], max_new_tokens=8)  # doctest: +SKIP
        >>> out.select(arm="a2", alpha=4.0)  # doctest: +SKIP
        ['...']
    """
    if isinstance(prompts, str):
        raise LensInputError("prompts is a single string; pass a list of prompts (e.g. [prompt])")
    if not prompts:
        raise LensInputError("prompts is empty; pass at least one prompt")
    if not isinstance(max_new_tokens, int) or max_new_tokens < 1:
        raise LensInputError(f"max_new_tokens {max_new_tokens!r} must be a positive integer")
    if not math.isfinite(temperature) or temperature < 0:
        raise LensInputError(f"temperature {temperature!r} must be a finite number >= 0")
    arms = _arms(interventions)
    subsets = _arm_prompts(arms, arm_prompts, len(prompts))
    site = next((it.site for arm in arms.values() for it in arm if it.site != "resid_post"), "resid_post")
    hf = hf_reader(model, site, backend)
    if alphas is not None:
        alphas = [float(a) for a in alphas]
        if not alphas:
            raise LensInputError("alphas is empty; pass None or at least one α")
        if not all(math.isfinite(a) for a in alphas):
            raise LensInputError(f"alphas must be finite numbers; got {alphas} (NaN or inf is never a valid α)")
        if not any(isinstance(it, Add) for arm in arms.values() for it in arm):
            raise LensInputError("alphas scale the strength of Add interventions, but no arm has one")
    tok = model.tokenizer
    bos = [tok.bos_token_id] if resolve_prepend_bos(model, prepend_bos) else []
    prompt_ids = [bos + tok(p, add_special_tokens=False)["input_ids"] for p in prompts]
    rows = [(name, a, j) for name, arm in arms.items()
            for a in (alphas if alphas is not None and any(isinstance(it, Add) for it in arm) else [None])
            for j in subsets.get(name, range(len(prompts)))]
    stops = _stop_ids(model, stop)
    pad = tok.pad_token_id if tok.pad_token_id is not None else (tok.eos_token_id or 0)
    order = sorted(range(len(rows)), key=lambda r: len(prompt_ids[rows[r][2]]))  # similar lengths share a chunk
    response: dict[int, tuple[list[int], bool]] = {}
    torch.manual_seed(seed)
    for start in range(0, len(order), batch_size):
        chunk = order[start:start + batch_size]
        ids = [prompt_ids[rows[r][2]] for r in chunk]
        width = max(map(len, ids))
        room = model.cfg.n_ctx - width
        if room < 1:
            raise LensInputError(f"a prompt of {width} tokens leaves no room in the model's context of "
                                 f"{model.cfg.n_ctx}; use shorter prompts")
        tokens = torch.tensor([[pad] * (width - len(i)) + i for i in ids], device=model.cfg.device)
        items = _chunk_interventions(arms, [rows[r] for r in chunk])
        new = min(max_new_tokens, room)
        if hf is not None:
            mask = torch.tensor([[0] * (width - len(i)) + [1] * len(i) for i in ids], device=tokens.device)
            config = _hf_config(new, stops, pad, temperature, top_p, top_k)
            # HF fills a field left unset (no stop tokens: eos None) from the model's own config: shadow it
            with _applied_hf(model, hf, items, prompt_len=width), _attribute(hf, "generation_config", config):
                out = hf.generate(tokens, attention_mask=mask, generation_config=config)
        else:
            with _applied(model, items, prompt_len=width):
                out = model.generate(tokens, max_new_tokens=new, stop_at_eos=bool(stops),
                                     eos_token_id=stops or None, do_sample=temperature > 0,
                                     temperature=temperature or 1.0, top_p=top_p if temperature > 0 else None,
                                     top_k=top_k if temperature > 0 else None, verbose=False, return_type="tokens",
                                     prepend_bos=bool(bos), padding_side="left")
        for r, row in zip(chunk, out[:, width:].tolist()):
            cut = next((k for k, t in enumerate(row) if t in stops), None)
            response[r] = (row if cut is None else row[:cut], cut is not None)
    tokens_out = [response[r][0] for r in range(len(rows))]
    return Generation(
        texts=[tok.decode([t for t in ids if t != pad], skip_special_tokens=skip_special_tokens)
               for ids in tokens_out],
        tokens=tokens_out, prompt_tokens=[prompt_ids[j] for _, _, j in rows], prompt=[j for _, _, j in rows],
        arm=[name for name, _, _ in rows], alpha=[a for _, a, _ in rows],
        stopped=[response[r][1] for r in range(len(rows))],
        settings={"max_new_tokens": max_new_tokens, "temperature": temperature, "top_p": top_p, "top_k": top_k,
                  "seed": seed, "prepend_bos": bool(bos), "stop": stops, "batch_size": batch_size,
                  "backend": "hooked" if hf is None else "hf",
                  "arms": {str(name): [it.to_dict() | {"basis": f"<{it.k} x {it.basis.shape[1]}>"} for it in arm]
                           for name, arm in arms.items()}})


def _arm_prompts(arms: dict, arm_prompts, n: int) -> dict:
    if arm_prompts is None:
        return {}
    subsets = {str(name) if name is not None else None: [int(j) for j in idx] for name, idx in arm_prompts.items()}
    unknown = sorted(str(k) for k in set(subsets) - set(arms))
    if unknown:
        raise LensInputError(f"arm_prompts names arms {unknown} that interventions does not have; valid: "
                             f"{sorted(map(str, arms))}")
    for name, idx in subsets.items():
        if not idx or not all(0 <= j < n for j in idx):
            raise LensInputError(f"arm_prompts[{name!r}] must be a non-empty list of prompt indices in [0, {n}), "
                                 f"got {idx}")
    return subsets


@contextmanager
def _attribute(obj, name: str, value) -> Iterator[None]:
    """Set ``obj.name`` for the duration of the block, then restore it."""
    prev = getattr(obj, name)
    setattr(obj, name, value)
    try:
        yield
    finally:
        setattr(obj, name, prev)


def _hf_config(new: int, stops: list[int], pad: int, temperature: float, top_p, top_k):
    """An explicit generation config (nothing from the model's own defaults, such as HF's top-k of 50)."""
    from transformers import GenerationConfig

    sample = temperature > 0
    return GenerationConfig(max_new_tokens=new, min_new_tokens=0, do_sample=sample,
                            temperature=temperature if sample else 1.0, top_p=top_p if sample and top_p else 1.0,
                            top_k=top_k if sample and top_k else 0, eos_token_id=stops or None, pad_token_id=pad,
                            repetition_penalty=1.0, num_beams=1)


def _chunk_interventions(arms: dict, chunk_rows: list[tuple]) -> list[tuple]:
    """(intervention, value override, row mask) for one chunk: each arm acts on its own rows only."""
    items = []
    for name, arm in arms.items():
        mine = torch.tensor([row[0] == name for row in chunk_rows])
        if not mine.any():
            continue
        for it in arm:
            if isinstance(it, Add):
                base = strength_matrix(it.strength, it.k)
                if base.shape[0] != 1:
                    raise LensInputError("lens.generate sets each row's strength itself: give an Add a number "
                                         f"(k=1) or one value per direction ([{it.k}]), not per-row strengths")
                scale = torch.tensor([(row[1] if row[1] is not None else 1.0) if m else 0.0
                                      for row, m in zip(chunk_rows, mine.tolist())], dtype=torch.float64)
                items.append((it, scale[:, None] * base, None))
            else:
                items.append((it, None, mine))
    return items
