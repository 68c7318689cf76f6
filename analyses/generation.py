"""Batched, optionally steered generation on a TransformerLens model, and the prompt each model natively reads.

One batched ``model.generate`` per chunk sweeps α across rows (`lens.steer` takes one α per row), so a whole
α grid costs a few forward passes per token. Continuations stop at the model's end-of-turn tokens.
"""

from __future__ import annotations

from typing import Sequence

import torch

import lens
from lens.debate_format import DEBATE_TAGS, prompt_text
from training.backends import STOP_TOKENS
from training.prompts import ARITHMETIC, round1_messages


def stop_ids(model, *, at_tags: bool) -> list[int]:
    """Token ids that end a continuation: eos first (TransformerLens pads finished rows with the first), then
    end-of-turn markers and ``<|endofdebate|>``, plus every debate tag if ``at_tags``."""
    vocab = model.tokenizer.get_vocab()
    texts = [*STOP_TOKENS, *(DEBATE_TAGS if at_tags else ())]
    eos = model.tokenizer.eos_token_id
    return [eos, *sorted({vocab[t] for t in texts if t in vocab} - {eos})]


@torch.no_grad()
def generate(model, prompts: Sequence[str], *, max_new_tokens: int, subspace=None,
             alphas: Sequence[float] | None = None, temperature: float = 0.0, top_p: float = 1.0, seed: int = 0,
             at_tags: bool = False, batch_size: int = 32) -> list[str]:
    """Continuations of ``prompts`` (special tokens kept, cut at the first stop token). With ``subspace``, row i is
    steered with ``alphas[i]`` on generated tokens only, at the hook the subspace was read from."""
    if subspace is not None and (alphas is None or len(alphas) != len(prompts)):
        raise ValueError("steered generation needs one alpha per prompt")
    stops = stop_ids(model, at_tags=at_tags)
    pad = model.tokenizer.pad_token_id
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))  # similar lengths share a batch
    out: dict[int, str] = {}
    torch.manual_seed(seed)
    for start in range(0, len(order), batch_size):
        rows = order[start:start + batch_size]
        chunk = [prompts[i] for i in rows]
        tokens = model.to_tokens(chunk, padding_side="left") if len(chunk) > 1 else model.to_tokens(chunk)
        room = model.cfg.n_ctx - tokens.shape[1]
        if room < 1:
            raise ValueError(f"a prompt of {tokens.shape[1]} tokens leaves no room in the model's context of "
                             f"{model.cfg.n_ctx}; use shorter prompts (e.g. round-1 turns only)")
        kwargs = dict(max_new_tokens=min(max_new_tokens, room), stop_at_eos=True, eos_token_id=stops, verbose=False,
                      do_sample=temperature > 0, temperature=temperature or 1.0,
                      top_p=top_p if temperature > 0 else None, return_type="tokens")
        gen_input = chunk if len(chunk) > 1 else tokens
        if subspace is None:
            full = model.generate(gen_input, **kwargs)
        else:
            with lens.steer(model, subspace, torch.tensor([float(alphas[i]) for i in rows]), positions="generated"):
                full = model.generate(gen_input, **kwargs)
        for i, row in zip(rows, full[:, tokens.shape[1]:].tolist()):
            cut = next((k for k, t in enumerate(row) if t in stops), len(row))
            out[i] = model.tokenizer.decode([t for t in row[:cut] if t != pad], skip_special_tokens=False)
    return [out[i] for i in range(len(prompts))]


def fits_context(model, prompts: Sequence[str], margin: int) -> list[bool]:
    """Whether each prompt leaves at least ``margin`` tokens of the model's context for the continuation."""
    return [len(model.to_tokens(p)[0]) + margin <= model.cfg.n_ctx for p in prompts]


def native_prompt(model_kind: str, question: str, tokenizer, domain: str = ARITHMETIC) -> str:
    """What each model reads: fine-tuned models continue ``Problem: {q}\\n\\n`` (as they were trained); the base
    model answers the round-1 question in its chat template with the neutral persona (Table 1's Single)."""
    if model_kind == "base":
        return tokenizer.apply_chat_template(round1_messages("neutral", question, domain), tokenize=False,
                                             add_generation_prompt=True)
    return prompt_text(question)
