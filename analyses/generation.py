"""What the study's models read and where their continuations stop; generation itself is `lens.generate`.

`lens.generate` runs a whole α grid (one α per row) in batched, cached ``model.generate`` calls; the helpers here
give it the stop tokens of our models and each model's native prompt.
"""

from __future__ import annotations

from typing import Sequence

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
