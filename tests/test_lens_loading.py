"""lens.load_model: log-prob parity with HF for every architecture, LoRA merge with added tokens, clear errors."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from peft import LoraConfig, get_peft_model
from safetensors import safe_open
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


def test_adapter_with_no_record_on_a_base_of_other_shape_is_refused(lora_adapter, tmp_path, tiny_tokenizer):
    adapter_dir, _, _ = lora_adapter
    other = make_tiny_model(TinyModelSpec(arch="llama", d_model=32, n_layers=2, n_heads=4, d_mlp=64, n_ctx=128),
                            tiny_tokenizer)
    other.save_pretrained(tmp_path)
    tiny_tokenizer.save_pretrained(tmp_path)
    with pytest.raises(lens.LensLoadError, match="has no base_model.json and its adapter_config.json names base"):
        lens.load_model(adapter_dir, base=tmp_path)
    with pytest.warns(UserWarning, match="allow_other_base=True"), \
            pytest.raises(lens.LensLoadError, match="does not fit base"):
        lens.load_model(adapter_dir, base=tmp_path, allow_other_base=True)


def test_adapter_with_no_record_loads_on_its_named_base_with_a_warning(lora_adapter):
    adapter_dir, _, _ = lora_adapter
    with pytest.warns(UserWarning, match="has no base_model.json, so its base cannot be verified"):
        model = lens.load_model(adapter_dir)
    assert model.lens_provenance.adapter == str(adapter_dir.resolve())


@pytest.fixture
def same_shape_other_base(tmp_path, tiny_model_dirs):
    """A copy of the tiny Llama base with every weight changed (same config and shapes)."""
    hf = AutoModelForCausalLM.from_pretrained(tiny_model_dirs["llama"])
    with torch.no_grad():
        for p in hf.parameters():
            p.add_(0.01)
    d = tmp_path / "other_base"
    hf.save_pretrained(d)
    AutoTokenizer.from_pretrained(tiny_model_dirs["llama"]).save_pretrained(d)
    return d


def test_adapter_on_another_base_of_the_same_shape_is_refused_by_its_record(lora_adapter, tmp_path,
                                                                              tiny_model_dirs, same_shape_other_base):
    adapter_dir = tmp_path / "adapter"
    shutil.copytree(lora_adapter[0], adapter_dir)
    record = lens.write_base_record(adapter_dir, tiny_model_dirs["llama"])
    assert json.loads(record.read_text())["architecture"] == "LlamaForCausalLM"
    assert lens.read_base_record(adapter_dir).difference(lens.fingerprint_model(tiny_model_dirs["llama"])) is None

    model = lens.load_model(adapter_dir)  # its recorded base: no warning, no error
    assert model.lens_provenance.base == str(Path(tiny_model_dirs["llama"]).resolve())
    with pytest.raises(lens.LensLoadError, match=r"was trained on base .* has different weights .*allow_other_base"):
        lens.load_model(adapter_dir, base=same_shape_other_base)
    with pytest.warns(UserWarning, match="loading it anyway"):
        model = lens.load_model(adapter_dir, base=same_shape_other_base, allow_other_base=True)
    assert model.lens_provenance.base == str(same_shape_other_base.resolve())


def test_fingerprint_ignores_dtype_of_the_saved_copy_but_not_its_values(tiny_model_dirs, tmp_path,
                                                                        same_shape_other_base):
    fp = lens.fingerprint_model(tiny_model_dirs["llama"])
    bf16 = AutoModelForCausalLM.from_pretrained(tiny_model_dirs["llama"], dtype=torch.bfloat16)
    bf16.save_pretrained(tmp_path / "bf16")
    assert fp.difference(lens.fingerprint_model(tmp_path / "bf16")) is None
    assert "different weights" in fp.difference(lens.fingerprint_model(same_shape_other_base))
    with safe_open(str(Path(tiny_model_dirs["llama"]) / "model.safetensors"), "pt") as f:
        assert set(fp.tensors) == set(f.keys())


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


def test_nan_weights_fail_the_parity_check_naming_the_parameter(tiny_model_dirs, tmp_path):
    hf = AutoModelForCausalLM.from_pretrained(tiny_model_dirs["mistral"])
    with torch.no_grad():
        hf.model.layers[0].mlp.up_proj.weight[0, :8] = float("nan")
    hf.save_pretrained(tmp_path)
    AutoTokenizer.from_pretrained(tiny_model_dirs["mistral"]).save_pretrained(tmp_path)
    for backend in ("hooked", "bridge"):
        with pytest.raises(lens.LensLoadError, match=r"non-finite weights: 8 NaN/inf values in "
                                                     r"model\.layers\.0\.mlp\.up_proj\.weight"):
            lens.load_model(tmp_path, backend=backend)


def test_truncated_or_missing_weights_file_is_named(tiny_model_dirs, tmp_path):
    d = tmp_path / "truncated"
    shutil.copytree(tiny_model_dirs["llama"], d)
    weights = d / "model.safetensors"
    with weights.open("r+b") as f:
        f.truncate(weights.stat().st_size // 2)
    with pytest.raises(lens.LensLoadError, match=rf"{weights}: the weights file is truncated or corrupt"):
        lens.load_model(d)
    with pytest.raises(lens.LensLoadError, match=rf"{weights}: the weights file is truncated or corrupt"):
        lens.fingerprint_model(d)

    sharded = tmp_path / "sharded"
    shutil.copytree(tiny_model_dirs["llama"], sharded)
    (sharded / "model.safetensors").rename(sharded / "model-00001-of-00002.safetensors")
    (sharded / "model.safetensors.index.json").write_text(json.dumps({"weight_map": {
        "a": "model-00001-of-00002.safetensors", "b": "model-00002-of-00002.safetensors"}}))
    with pytest.raises(lens.LensLoadError, match="model-00002-of-00002.safetensors: weight shard listed in "
                                                 "model.safetensors.index.json is missing"):
        lens.load_model(sharded)


@pytest.fixture(scope="module")
def granite_dir(tmp_path_factory, tiny_tokenizer):
    """A tiny Granite model: a family TransformerLens' bridge supports but no HookedTransformer converter does."""
    from transformers import GraniteConfig

    cfg = GraniteConfig(vocab_size=len(tiny_tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                        num_attention_heads=4, max_position_embeddings=128, bos_token_id=tiny_tokenizer.bos_token_id,
                        eos_token_id=tiny_tokenizer.eos_token_id, pad_token_id=tiny_tokenizer.pad_token_id)
    d = tmp_path_factory.mktemp("granite")
    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(cfg).save_pretrained(d)
    tiny_tokenizer.save_pretrained(d)
    return d


def test_unconvertible_architecture_names_the_supported_ones_and_the_bridge(granite_dir):
    with pytest.raises(lens.LensLoadError) as e:
        lens.load_model(granite_dir)
    msg = str(e.value)
    assert msg.startswith("architecture GraniteForCausalLM cannot be converted to a HookedTransformer; supported: ")
    assert "LlamaForCausalLM" in msg and "Gemma3ForCausalLM" in msg and msg.endswith('backend="bridge" '
                                                                                    "(TransformerLens' "
                                                                                    "TransformerBridge) instead")
    model = lens.load_model(granite_dir, backend="bridge")  # the allow-list does not block the bridge
    assert model.lens_provenance.parity_max_abs_logprob_diff < 1e-4
    acts = lens.collect_activations(model, ["Problem: 1+2*3"], layers=[0, 1])
    assert acts.acts.shape == (2, 1, 32) and torch.isfinite(acts.acts).all()


def test_directory_name_does_not_change_the_conversion(tiny_model_dirs, tmp_path):
    """TL 3.9 picks Llama and Gemma configs by name; lens reads config.json whatever the dir is called."""
    for name in ("Meta-Llama-3-8B-finetune", "google/gemma-2b-copy"):
        d = tmp_path / name
        shutil.copytree(tiny_model_dirs["qwen2"], d)
        model = lens.load_model(d)
        assert model.cfg.original_architecture == "Qwen2ForCausalLM" and model.cfg.d_model == 64
        assert model.lens_provenance.parity_max_abs_logprob_diff < 1e-4


def test_import_leaves_the_environment_alone():
    env = {k: v for k, v in os.environ.items() if k not in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")}
    code = "import os, lens; print(os.environ.get('HF_HUB_OFFLINE'), os.environ.get('TRANSFORMERS_OFFLINE'))"
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["None", "None"]


def test_dtype_and_device_are_honoured_and_auto_is_cpu_fp32_here(tiny_model_dirs):
    assert lens.resolve_device("auto") == ("cuda" if torch.cuda.is_available() else "cpu")
    assert lens.resolve_dtype("auto", "cpu") == torch.float32 and lens.resolve_dtype("auto", "cuda") == torch.bfloat16
    for backend in ("hooked", "bridge"):
        model = lens.load_model(tiny_model_dirs["llama"], dtype="bfloat16", device="cpu", backend=backend)
        assert {p.dtype for p in model.parameters()} == {torch.bfloat16}
        prov = model.lens_provenance
        assert prov.dtype == "bfloat16" and prov.device == "cpu"
        assert 0 < prov.parity_max_abs_logprob_diff <= lens.PARITY_TOL[torch.bfloat16]
    assert lens.load_model(tiny_model_dirs["llama"]).lens_provenance.dtype == "float32"
    with pytest.raises(lens.LensLoadError, match="dtype 'int8' is unknown; valid: 'auto'"):
        lens.load_model(tiny_model_dirs["llama"], dtype="int8")


def test_no_hf_copy_stays_alive_after_loading(tiny_model_dirs):
    import gc

    from transformers import PreTrainedModel

    def alive() -> int:
        gc.collect()
        return sum(isinstance(o, PreTrainedModel) for o in gc.get_objects())

    before = alive()
    model = lens.load_model(tiny_model_dirs["llama"])
    assert alive() == before
    del model


@pytest.mark.parametrize("module", ["lens.loading", "lens.architectures", "lens.integrity"])
def test_docstring_examples_run(module):
    import doctest
    import importlib

    result = doctest.testmod(importlib.import_module(module), optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0 and result.failed == 0


def test_in_memory_model_built_from_a_config_loads_and_parity_failure_is_one_sentence(tiny_tokenizer):
    from transformers import Qwen2Config

    tok = tiny_tokenizer
    hf = AutoModelForCausalLM.from_config(Qwen2Config(
        vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=128)).eval()
    assert not hf.config.architectures  # named only when saved
    model = lens.load_model(hf, tokenizer=tok)
    assert model.lens_provenance.architecture == "Qwen2ForCausalLM"
    with pytest.raises(lens.LensLoadError, match=r"^parity check failed for the model: max \|Δ log-prob\| "
                                                 r"TransformerLens vs HF = .* > tolerance 0 for float32"):
        lens.load_model(hf, tokenizer=tok, parity_tol=0.0)


def test_training_provenance_records_the_base_fingerprint(tiny_model_dirs, tmp_path):
    from training.sft import write_provenance

    write_provenance(tmp_path, kind="sft", experiment="x", parent=Path(tiny_model_dirs["llama"]), final_dir=tmp_path,
                     transcripts=[], preset="smoke")
    recorded = lens.read_base_record(tmp_path)
    assert recorded.path == str(Path(tiny_model_dirs["llama"]).resolve())
    assert recorded.difference(lens.fingerprint_model(tiny_model_dirs["llama"])) is None
