"""The spine: tokenizer keeps digits and tags whole; tiny models reload offline with identical logits."""

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from lens.debate_format import DEBATE_TAGS
from training.presets import PresetError, load_preset


def test_digits_and_tags_are_single_tokens(tiny_tokenizer):
    toks = tiny_tokenizer.tokenize("12+345*6")
    assert toks == ["1", "2", "+", "3", "4", "5", "*", "6"]
    for tag in DEBATE_TAGS:
        assert tiny_tokenizer.tokenize(tag) == [tag]


@pytest.mark.parametrize("arch", ["llama", "qwen2", "mistral"])
def test_tiny_models_reload_offline_with_identical_logits(tiny_model_dirs, arch):
    d = tiny_model_dirs[arch]
    a = AutoModelForCausalLM.from_pretrained(d).eval()
    b = AutoModelForCausalLM.from_pretrained(d).eval()
    tok = AutoTokenizer.from_pretrained(d)
    ids = torch.tensor([tok("Problem: 1+2*3")["input_ids"]])
    assert a.config.model_type == arch
    assert torch.equal(a(ids).logits, b(ids).logits)


def test_unknown_preset_names_the_valid_ones():
    with pytest.raises(PresetError, match=r"unknown preset 'nope'; valid: .*smoke.*toy"):
        load_preset("nope")
