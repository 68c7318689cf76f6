"""lens.load_model: log-prob parity with HF for every architecture, LoRA merge with added tokens, clear errors."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from peft import LoraConfig, get_peft_model
from transformers import AutoModelForCausalLM, AutoTokenizer

import lens
from lens.debate_format import Transcript, Turn, write_jsonl
from lens.loading import parity_tokens
from training.tiny_models import TinyModelSpec, make_tiny_model

EXTRA = "<|extra|>"


@torch.no_grad()
def max_logprob_diff(model, hf, tok) -> float:
    return max((model(ids).log_softmax(-1) - hf(ids).logits.log_softmax(-1)).abs().max().item()
               for ids in parity_tokens(tok))


@pytest.mark.parametrize("arch", ["llama", "qwen2", "mistral"])
def test_parity_per_architecture(tiny_model_dirs, arch):
    model = lens.load_model(tiny_model_dirs[arch])
    hf = AutoModelForCausalLM.from_pretrained(tiny_model_dirs[arch], attn_implementation="eager").eval()
    diff = max_logprob_diff(model, hf, AutoTokenizer.from_pretrained(tiny_model_dirs[arch]))
    print(f"parity {arch}: max|Δ log-prob| = {diff:.2e}")
    assert diff < 1e-4
    prov = model.lens_provenance
    assert prov.parity_max_abs_logprob_diff < 1e-4 and prov.path and len(prov.fingerprint) == 64
    assert prov.weights_sha256 and prov.architecture.lower().startswith(arch)
    assert model.cfg.default_prepend_bos is (arch != "qwen2")
    assert (model.cfg.n_key_value_heads or model.cfg.n_heads) == 2


def test_bridge_backend_boots_from_saved_dir(tiny_model_dirs):
    model = lens.load_model(tiny_model_dirs["qwen2"], backend="bridge")
    assert type(model).__name__ == "TransformerBridge"
    assert model.lens_provenance.parity_max_abs_logprob_diff < 1e-4


def test_llama3_rope_scaling_parity(tmp_path, tiny_tokenizer):
    spec = TinyModelSpec(arch="llama", d_model=64, n_layers=2, n_heads=4, n_kv_heads=2, d_mlp=128, n_ctx=256)
    hf = make_tiny_model(spec, tiny_tokenizer, seed=7)
    hf.config.rope_parameters = {"rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0,
                                 "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                                 "original_max_position_embeddings": 32}
    hf.save_pretrained(tmp_path)
    tiny_tokenizer.save_pretrained(tmp_path)
    model = lens.load_model(tmp_path)
    assert model.cfg.use_NTK_by_parts_rope and model.cfg.NTK_by_parts_factor == 8.0
    assert model.cfg.rotary_base == 500000.0
    assert model.lens_provenance.parity_max_abs_logprob_diff < 1e-4


@pytest.fixture(scope="module")
def lora_adapter(tmp_path_factory, tiny_model_dirs):
    """A LoRA adapter on the tiny Llama with one added token (embeddings resized, saved via modules_to_save)."""
    base_dir = tiny_model_dirs["llama"]
    tok_dir = tmp_path_factory.mktemp("tok_extra")
    tok = AutoTokenizer.from_pretrained(base_dir)
    tok.add_tokens([EXTRA], special_tokens=True)
    tok.save_pretrained(tok_dir)
    tok = AutoTokenizer.from_pretrained(tok_dir)
    base = AutoModelForCausalLM.from_pretrained(base_dir)
    base.resize_token_embeddings(len(tok))
    peft = get_peft_model(base, LoraConfig(r=4, target_modules=["q_proj", "k_proj", "v_proj", "o_proj"],
                                           modules_to_save=["embed_tokens", "lm_head"]))
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, p in peft.named_parameters():
            if "lora_B" in name or "modules_to_save" in name:
                p.add_(torch.randn(p.shape, generator=g) * 0.05)
    out = tmp_path_factory.mktemp("adapter")
    peft.save_pretrained(out)
    tok.save_pretrained(out)
    cfg = json.loads((out / "adapter_config.json").read_text())
    assert cfg["base_model_name_or_path"] == base_dir
    return out, peft.merge_and_unload().eval(), tok


def test_lora_merged_with_added_token_matches_peft(lora_adapter, tiny_model_dirs):
    adapter_dir, merged_hf, tok = lora_adapter
    model = lens.load_model(adapter_dir)
    assert model.cfg.d_vocab == len(tok) == len(AutoTokenizer.from_pretrained(tiny_model_dirs["llama"])) + 1
    ids = torch.tensor([[tok.bos_token_id, *tok(f"Problem: 1+2 {EXTRA} 3", add_special_tokens=False)["input_ids"]]])
    assert tok.convert_tokens_to_ids(EXTRA) in ids[0].tolist()
    with torch.no_grad():
        diff = (model(ids).log_softmax(-1) - merged_hf(ids).logits.log_softmax(-1)).abs().max().item()
    print(f"parity LoRA-merged (+1 token): max|Δ log-prob| = {diff:.2e}")
    assert diff < 1e-4 and model.lens_provenance.parity_max_abs_logprob_diff < 1e-4
    prov = model.lens_provenance
    assert prov.adapter == str(adapter_dir.resolve()) and prov.base is not None
    assert any(k.startswith("adapter/") for k in prov.weights_sha256)


def test_adapter_for_another_base_is_rejected(lora_adapter, tmp_path, tiny_tokenizer):
    adapter_dir, _, _ = lora_adapter
    other = make_tiny_model(TinyModelSpec(arch="llama", d_model=32, n_layers=2, n_heads=4, d_mlp=64, n_ctx=128),
                            tiny_tokenizer)
    other.save_pretrained(tmp_path)
    tiny_tokenizer.save_pretrained(tmp_path)
    with pytest.raises(lens.LensLoadError, match="does not fit base"):
        lens.load_model(adapter_dir, base=tmp_path)


def test_vocab_mismatch_and_missing_dir(lora_adapter, tiny_model_dirs, tmp_path):
    _, _, tok_with_extra = lora_adapter
    with pytest.raises(lens.LensLoadError, match="vocab mismatch"):
        lens.load_model(tiny_model_dirs["llama"], tokenizer=tok_with_extra)
    with pytest.raises(lens.LensLoadError, match="no such model directory"):
        lens.load_model(tmp_path / "nope")
    with pytest.raises(lens.LensLoadError, match="neither config.json"):
        lens.load_model(tmp_path)


def test_in_memory_model_and_trained_on_transcripts(tiny_model_dirs, tmp_path):
    hf = AutoModelForCausalLM.from_pretrained(tiny_model_dirs["mistral"])
    model = lens.load_model(hf, tokenizer=AutoTokenizer.from_pretrained(tiny_model_dirs["mistral"]))
    assert model.lens_provenance.path is None and model.lens_provenance.fingerprint is None
    with pytest.raises(lens.LensLoadError, match="needs tokenizer"):
        lens.load_model(hf)

    run = tmp_path / "run"
    shutil.copytree(tiny_model_dirs["llama"], run)
    t = Transcript("1+1", [Turn(1, 1, "2"), Turn(1, 2, "3")], "A majority", id="q0")
    write_jsonl([t], tmp_path / "debates.jsonl")
    (run / "provenance.json").write_text(json.dumps({"transcripts": ["../debates.jsonl"]}))
    prov = lens.load_model(run).lens_provenance
    assert prov.transcripts == (str((tmp_path / "debates.jsonl").resolve()),)
