"""A byte-level BPE tokenizer trained locally: every digit its own token, the 10 debate tags special.

The toy world cannot download a tokenizer, so it trains one on its own corpus. Digits are split one by one so
that arithmetic is learnable by a tiny model; the tags and the ChatML markers are single special tokens.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterable

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import AutoTokenizer, PreTrainedTokenizerBase, PreTrainedTokenizerFast

from lens.debate_format import DEBATE_TAGS

PAD, BOS, EOS, UNK = "<|pad|>", "<|bos|>", "<|eos|>", "<|unk|>"
IM_START, IM_END = "<|im_start|>", "<|im_end|>"
SPECIAL_TOKENS = (PAD, BOS, EOS, UNK, IM_START, IM_END, *DEBATE_TAGS)

# ChatML; the assistant turn is wrapped in {% generation %} so TRL can train on completions only.
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if message['role'] == 'assistant' %}"
    "{{ '<|im_start|>assistant\n' }}{% generation %}{{ message['content'] + '<|im_end|>' }}{% endgeneration %}"
    "{{ '\n' }}"
    "{% else %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>\n' }}"
    "{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


def train_tokenizer(corpus: Iterable[str], vocab_size: int = 1024) -> PreTrainedTokenizerFast:
    """Train the toy tokenizer on ``corpus`` (in memory; call `save_tokenizer` before TransformerLens sees it).

    Args:
        corpus: The texts the merges are learned from.
        vocab_size: The target vocabulary size, special tokens included.

    Returns:
        A fast tokenizer with `SPECIAL_TOKENS` (ids 0 to 15, in that order) and the ChatML `CHAT_TEMPLATE`.

    Example:
        >>> from training.tokenizer import train_tokenizer
        >>> tok = train_tokenizer(["1+2*3+4-5*6"], vocab_size=300)
        >>> tok.tokenize("123"), tok.convert_tokens_to_ids("<|Consensus|>")
        (['1', '2', '3'], 14)
    """
    tok = Tokenizer(models.BPE(unk_token=UNK))
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Digits(individual_digits=True),
        pre_tokenizers.ByteLevel(add_prefix_space=False),
    ])
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=list(SPECIAL_TOKENS),
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(corpus, trainer)
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    hf = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=BOS, eos_token=EOS, pad_token=PAD,
                                 unk_token=UNK, additional_special_tokens=[IM_START, IM_END, *DEBATE_TAGS])
    hf.chat_template = CHAT_TEMPLATE
    return hf


def save_tokenizer(tok: PreTrainedTokenizerBase, directory: str | Path) -> PreTrainedTokenizerBase:
    """Save and reload from disk, so the tokenizer has a ``name_or_path`` that TransformerLens can reopen.

    Args:
        tok: The tokenizer.
        directory: Where to save it.

    Returns:
        The tokenizer as reloaded from ``directory``.

    Example:
        >>> tok = save_tokenizer(train_tokenizer(corpus), "runs/toy/base")  # doctest: +SKIP
        >>> tok.name_or_path  # doctest: +SKIP
        'runs/toy/base'
    """
    tok.save_pretrained(str(directory))
    return AutoTokenizer.from_pretrained(str(directory))
