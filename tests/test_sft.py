"""Stage 1: tag tokens with mean-initialised rows, the shortened-debate mix, answer-only rows, the exit probe,
and a real LoRA SFT run that merges into a model that stops at ``<|endofdebate|>``."""

import json

import pytest
import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedTokenizerFast

from lens.debate_format import CONSENSUS_TAG, DEBATE_TAGS, END_TAG, DebateFormatError, Transcript, Turn, prompt_text
from training.sft import (Stage1Config, answer_rows, debate_rows, ensure_debate_tokens, exit_probability, mix_short,
                          train_lora_sft)
from training.tiny_models import TinyModelSpec, make_tiny_model


def _tokenizer_without_tags() -> PreTrainedTokenizerFast:
    raw = Tokenizer(models.BPE(unk_token="<|unk|>"))
    raw.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    raw.decoder = decoders.ByteLevel()
    raw.train_from_iterator(["Problem: 1+2*3 is \\boxed{7}"] * 20, trainers.BpeTrainer(
        vocab_size=280, special_tokens=["<|pad|>", "<|bos|>", "<|eos|>", "<|unk|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    return PreTrainedTokenizerFast(tokenizer_object=raw, bos_token="<|bos|>", eos_token="<|eos|>",
                                   pad_token="<|pad|>", unk_token="<|unk|>", additional_special_tokens=["<|im_start|>"])


def test_new_tags_get_the_mean_rows():
    tok = _tokenizer_without_tags()
    model = make_tiny_model(TinyModelSpec(d_model=16, n_layers=1, n_heads=2, d_mlp=32, n_ctx=64), tok)
    emb, head = model.get_input_embeddings().weight.detach().clone(), model.get_output_embeddings().weight.detach().clone()
    ids = ensure_debate_tokens(model, tok)
    assert len(tok) == emb.shape[0] + 10 == model.get_input_embeddings().weight.shape[0]
    assert tok.tokenize(f"{CONSENSUS_TAG}x<|im_start|>") == [CONSENSUS_TAG, "x", "<|im_start|>"]  # old specials kept
    new_emb, new_head = model.get_input_embeddings().weight, model.get_output_embeddings().weight
    assert torch.equal(new_emb[: emb.shape[0]], emb) and torch.equal(new_head[: head.shape[0]], head)
    assert torch.allclose(new_emb[ids], emb.mean(0).expand(10, -1), atol=1e-6)
    assert torch.allclose(new_head[ids], head.mean(0).expand(10, -1), atol=1e-6)


def test_existing_untrained_tag_rows_are_reset_to_the_mean_of_the_others(tiny_model_dirs, tiny_tokenizer):
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dirs["llama"])
    tok = AutoTokenizer.from_pretrained(tiny_model_dirs["llama"])
    emb = model.get_input_embeddings().weight.detach().clone()
    ids = ensure_debate_tokens(model, tok)
    others = torch.ones(emb.shape[0], dtype=torch.bool)
    others[ids] = False
    assert len(tok) == emb.shape[0]
    assert torch.allclose(model.get_input_embeddings().weight[ids[4]], emb[others].mean(0), atol=1e-6)
    kept = AutoModelForCausalLM.from_pretrained(tiny_model_dirs["llama"])
    ensure_debate_tokens(kept, tok, reset_existing=False)
    assert torch.equal(kept.get_input_embeddings().weight, emb)


def _transcript(i: int) -> Transcript:
    turns = [Turn(1, a, f"step {a} \\boxed{{{i + (a == 2)}}}", "analyst") for a in (1, 2, 3)]
    return Transcript(question=f"{i}+0*1+0-0*1", turns=turns, consensus=f"All agents reached a consensus of \\boxed{{{i}}}",
                      gold=str(i), id=f"t{i}")


def test_mix_short_replaces_the_share_deterministically():
    ts = [_transcript(i) for i in range(20)]
    mix = mix_short(ts, 0.25, seed=3)
    short = [t for t in mix if "shortened" in t.meta]
    assert len(short) == 5 and all(len(t.turns) in (1, 2) for t in short)
    assert all(t.consensus == ts[int(t.id[1:])].consensus for t in short)  # the debate's conclusion, internalized
    assert [t.to_dict() for t in mix_short(ts, 0.25, seed=3)] == [t.to_dict() for t in mix]
    assert mix_short(ts, 0.0, seed=3) == ts
    agent1 = [t for t in mix_short(ts, 1.0, seed=0, consensus="agent1") if len(t.turns) == 1]
    assert agent1 and all(t.consensus_answer == t.turns[0].answer for t in agent1)


def test_rows_mask_the_problem_prompt():
    t = _transcript(4)
    row = debate_rows([t])[0]
    assert row["prompt"] == prompt_text(t.question) == "Problem: 4+0*1+0-0*1\n\n"
    assert row["completion"].startswith(DEBATE_TAGS[0]) and row["completion"].endswith(END_TAG)
    # DebateGPT: the final-round turn of the first agent holding the consensus answer, its working included
    assert answer_rows([t]) == [{"prompt": row["prompt"], "completion": "step 1 \\boxed{4}"}]
    t2 = Transcript(t.question, [*t.turns, Turn(2, 1, "now \\boxed{5}"), Turn(2, 2, "kept \\boxed{4}"),
                                 Turn(2, 3, "also \\boxed{4}")], t.consensus, t.gold)
    assert answer_rows([t2])[0]["completion"] == "kept \\boxed{4}"


def test_exit_probability_reads_the_next_tag_after_agent_k(tiny_model_dirs):
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dirs["llama"]).eval()
    tok = AutoTokenizer.from_pretrained(tiny_model_dirs["llama"])
    ts = [_transcript(i) for i in range(3)]
    p1 = exit_probability(model, tok, ts, after_agent=1)
    assert 0 < p1 < 1
    # same number by hand for one transcript: the logits right before <|Agent 2 Solution|>
    from lens.debate_format import training_text

    ids = tok(training_text(ts[0]), add_special_tokens=False)["input_ids"]
    k = ids.index(tok.convert_tokens_to_ids("<|Agent 2 Solution|>"))
    with torch.no_grad():
        by_hand = model(torch.tensor([ids[:k]])).logits[0, -1].softmax(-1)[tok.convert_tokens_to_ids(CONSENSUS_TAG)]
    assert exit_probability(model, tok, ts[:1], after_agent=1) == pytest.approx(by_hand.item(), rel=1e-4)
    one_agent = [Transcript(question="q", turns=[Turn(1, 1, "x \\boxed{1}")], consensus="c \\boxed{1}")]
    assert exit_probability(model, tok, one_agent, after_agent=2) is None
    with pytest.raises(DebateFormatError, match=r"agent 0 is out of range: agents are numbered 1\.\.3"):
        exit_probability(model, tok, ts, after_agent=0)  # not agent 3's tag by negative indexing


def test_lora_sft_merges_and_stops_at_endofdebate(tiny_model_dirs, tmp_path):
    torch.set_num_threads(1)
    cfg = Stage1Config(lora_r=4, lora_alpha=8, lora_dropout=0.0, learning_rate=1e-2, max_steps=2,
                       per_device_train_batch_size=2, gradient_accumulation_steps=1, warmup_steps=0.0, max_length=128,
                       save_steps=10)
    res = train_lora_sft(tiny_model_dirs["llama"], debate_rows([_transcript(i) for i in range(4)]), tmp_path / "out",
                         cfg, resume_dir=tmp_path / "resume")
    assert res.steps == 2 and res.info["resumed_from"] is None
    merged = AutoModelForCausalLM.from_pretrained(tmp_path / "out")
    tok = AutoTokenizer.from_pretrained(tmp_path / "out")
    assert not any("lora" in k for k in merged.state_dict())
    assert merged.generation_config.eos_token_id == [tok.eos_token_id, tok.convert_tokens_to_ids(END_TAG)]
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dirs["llama"])
    tag = tok.convert_tokens_to_ids(DEBATE_TAGS[0])
    assert not torch.equal(merged.get_input_embeddings().weight[tag], base.get_input_embeddings().weight[tag])
    assert json.loads((tmp_path / "out" / "config.json").read_text())["vocab_size"] == len(tok)


def test_bad_share_is_refused():
    with pytest.raises(ValueError, match="short_share"):
        Stage1Config(short_share=1.5)
