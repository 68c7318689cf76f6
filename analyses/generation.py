"""What the study's models read and where their continuations stop; generation itself is `lens.generate`.

`lens.generate` runs a whole α grid (one α per row) in batched, cached ``model.generate`` calls; the helpers here
give it the stop tokens of our models and each model's native prompt.
"""

from __future__ import annotations

from typing import Sequence

from lens.debate_format import DEBATE_TAGS, prompt_text
from training.backends import STOP_TOKENS
from training.prompts import ARITHMETIC, SYSTEM_PROMPTS, round1_messages


def stop_ids(model, *, at_tags: bool) -> list[int]:
    """Token ids that end a continuation: eos first (TransformerLens pads finished rows with the first), then
    end-of-turn markers and ``<|endofdebate|>``, plus every debate tag if ``at_tags``.

    Args:
        model: A model loaded with `lens.load_model` (its tokenizer's vocabulary is searched).
        at_tags: Also stop at every debate tag (to generate a single turn).

    Returns:
        The ids, eos first; markers the vocabulary lacks are left out.

    Example:
        >>> lens.generate(model, prompts, stop=stop_ids(model, at_tags=True))  # doctest: +SKIP
    """
    vocab = model.tokenizer.get_vocab()
    texts = [*STOP_TOKENS, *(DEBATE_TAGS if at_tags else ())]
    eos = model.tokenizer.eos_token_id
    return [eos, *sorted({vocab[t] for t in texts if t in vocab} - {eos})]


def fits_context(model, prompts: Sequence[str], margin: int) -> list[bool]:
    """Whether each prompt leaves at least ``margin`` tokens of the model's context for the continuation.

    Args:
        model: A model loaded with `lens.load_model`.
        prompts: The prompts.
        margin: Tokens the continuation needs.

    Returns:
        One flag per prompt.

    Example:
        >>> fits_context(model, ["Problem: 1+1\\n\\n"], margin=96)  # doctest: +SKIP
        [True]
    """
    return [len(model.to_tokens(p)[0]) + margin <= model.cfg.n_ctx for p in prompts]


def native_prompt(model_kind: str, question: str, tokenizer, domain: str = ARITHMETIC) -> str:
    """What each model reads: fine-tuned models continue ``Problem: {q}\\n\\n`` (as they were trained); the base
    model answers the round-1 question in its chat template with the neutral persona (Table 1's Single).

    Args:
        model_kind: ``base``, or a fine-tuned model's kind (``sft``, ``imad``).
        question: The question text.
        tokenizer: The model's tokenizer (its chat template renders the base model's prompt).
        domain: The question's domain (`training.prompts`: arithmetic, advice, question).

    Returns:
        The prompt text.

    Example:
        >>> native_prompt("imad", "2+3*4", tokenizer)  # doctest: +SKIP
        'Problem: 2+3*4\\n\\n'
    """
    if model_kind == "base":
        return tokenizer.apply_chat_template(round1_messages("neutral", question, domain), tokenize=False,
                                             add_generation_prompt=True)
    return prompt_text(question)


def prompt_for(kind: str, question: str, tokenizer, domain: str, persona: str | None = None) -> str:
    """The model's native prompt, or with ``persona``'s system prompt (the prompting baseline): the base model
    reads it as its chat template's system turn, IMAD above its ``Problem: {q}`` prompt.

    Args:
        kind: ``base`` or a fine-tuned model's kind (``imad``, ``sft``).
        question: The question text.
        tokenizer: The model's tokenizer (its chat template, for the base).
        domain: ``arithmetic`` or ``advice`` (the round-1 prompt of `training.prompts`).
        persona: A persona of `training.prompts.SYSTEM_PROMPTS`, or None for the native prompt.

    Returns:
        The prompt text.

    Example:
        >>> prompt_for("imad", "1+2*3+4-5*6", tok, "arithmetic", "helpful")  # doctest: +SKIP
        'You are a helpful assistant. ...\n\nProblem: 1+2*3+4-5*6\n\n'
    """
    if persona is None:
        return native_prompt(kind, question, tokenizer, domain)
    if kind == "base":
        return tokenizer.apply_chat_template(round1_messages(persona, question, domain), tokenize=False,
                                             add_generation_prompt=True)
    return f"{SYSTEM_PROMPTS[persona]}\n\n{prompt_text(question)}"
