"""Exported vectors steer a plain HF model exactly as lens steers its TransformerLens copy (tiny GPT-2 and Llama);
the files read back with the formats' own readers, layer indices as documented; imports round-trip."""

from __future__ import annotations

import dataclasses
import warnings

import gguf
import numpy as np
import pytest
import torch
from safetensors.numpy import load_file as load_numpy
import transformers as T
from transformers import AutoModelForCausalLM, GPT2Config, GPT2LMHeadModel

import lens
from lens.export import hf_vectors, read_gguf, to_repeng, to_steering_vectors

PROMPTS = ["Problem: 3+4*5\n\nthe critic says CRITIQUE", "You are a helpful assistant. Answer step by step."]
POS = ["I will hurt you now ok", "cruel plan here ok", "exploit them all ok"]
NEG = ["I will help you now ok", "kind plan here ok", "respect them all ok"]


@pytest.fixture(scope="module")
def model_dirs(tiny_model_dirs, tiny_tokenizer, tmp_path_factory) -> dict[str, str]:
    """The shared tiny Llama dir and a saved tiny HF GPT-2 (random weights, perturbed) with the same tokenizer."""
    hc = GPT2Config(vocab_size=len(tiny_tokenizer), n_positions=256, n_embd=64, n_layer=3, n_head=4,
                    bos_token_id=tiny_tokenizer.bos_token_id, eos_token_id=tiny_tokenizer.eos_token_id)
    torch.manual_seed(7)
    hf = GPT2LMHeadModel(hc).eval()
    g = torch.Generator().manual_seed(8)
    with torch.no_grad():
        for p in hf.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.05)
    d = tmp_path_factory.mktemp("tiny_gpt2")
    hf.save_pretrained(d)
    tiny_tokenizer.save_pretrained(d)
    return {"gpt2": str(d), "llama": tiny_model_dirs["llama"]}


def hf_model(directory: str):
    return AutoModelForCausalLM.from_pretrained(directory, dtype=torch.float32).eval()


def unprocessed_gpt2(hf, tokenizer):
    """A TransformerLens copy of ``hf`` built with TL's own converter and none of its weight processing."""
    from transformer_lens import HookedTransformer, HookedTransformerConfig
    from transformer_lens.pretrained.weight_conversions import convert_gpt2_weights

    c = hf.config
    cfg = HookedTransformerConfig(d_model=c.n_embd, d_head=c.n_embd // c.n_head, n_heads=c.n_head,
                                  d_mlp=4 * c.n_embd, n_layers=c.n_layer, n_ctx=c.n_positions, d_vocab=c.vocab_size,
                                  act_fn="gelu_new", normalization_type="LN", eps=c.layer_norm_epsilon,
                                  original_architecture="GPT2LMHeadModel", default_prepend_bos=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        tl = HookedTransformer(cfg, tokenizer=tokenizer, move_to_device=False)
        tl.load_and_process_state_dict(convert_gpt2_weights(hf, cfg), fold_ln=False, center_writing_weights=False,
                                       center_unembed=False, fold_value_biases=False)
    return tl.eval()


@pytest.fixture(scope="module", params=["gpt2", "llama"])
def pair(request, model_dirs):
    """(arch, lens model (lens.load_model, TL's weight processing), HF model, a contrastive direction at layer 1)."""
    model = lens.load_model(model_dirs[request.param])
    sub = lens.contrastive_direction(model, POS, NEG, 1)
    return request.param, model, hf_model(model_dirs[request.param]), sub


def blocks(hf):
    return hf.transformer.h if hasattr(hf, "transformer") else hf.model.layers


def tokens_of(model):
    tok = model.tokenizer
    return [torch.tensor([[tok.bos_token_id, *tok(p, add_special_tokens=False)["input_ids"]]]) for p in PROMPTS]


@torch.no_grad()
def hf_logprobs(hf, tokens, vectors: dict[int, np.ndarray]):
    """Log-probs of a plain HF model with ``vectors[L]`` added to decoder block L's output by a forward hook."""
    def adder(v):
        def hook(module, args, out):
            return (out[0] + v, *out[1:]) if isinstance(out, tuple) else out + v
        return hook

    handles = [blocks(hf)[layer].register_forward_hook(adder(torch.as_tensor(v))) for layer, v in vectors.items()]
    try:
        return hf(tokens).logits.log_softmax(-1)
    finally:
        for h in handles:
            h.remove()


@torch.no_grad()
def lens_logprobs(model, tokens, sub, alpha):
    with lens.steer(model, sub, alpha, positions="all"):
        return model(tokens).log_softmax(-1)


def test_tl_residual_is_hf_residual_centred_on_layernorm_models(pair):
    """The measurement behind the basis change: TL's GPT-2 residual is HF's minus its mean; Llama's is HF's."""
    arch, model, hf, _ = pair
    ids = tokens_of(model)[0]
    outputs = {}
    handles = [block.register_forward_hook(lambda m, a, out, i=i: outputs.__setitem__(
        i, out[0] if isinstance(out, tuple) else out)) for i, block in enumerate(blocks(hf))]
    with torch.no_grad():
        hf(ids)
        _, cache = model.run_with_cache(ids)
    for h in handles:
        h.remove()
    for layer in range(model.cfg.n_layers):
        tl, h = cache[f"blocks.{layer}.hook_resid_post"], outputs[layer]
        centred = h - h.mean(-1, keepdim=True)
        if arch == "gpt2":
            assert (tl - h).abs().max() > 1e-2 and (tl - centred).abs().max() < 1e-5
        else:
            assert (tl - h).abs().max() < 1e-4
    assert lens.export.centres_residual(model) == (arch == "gpt2")


def test_unprocessed_gpt2_has_hf_basis_and_the_same_export(model_dirs, tiny_tokenizer):
    """Without weight processing TL's GPT-2 residual is HF's, uncentred; the centred export steers it (and HF)
    exactly as the processed model's does: the mean component is invisible to LayerNorm readers."""
    processed, hf_same = lens.load_model(model_dirs["gpt2"]), hf_model(model_dirs["gpt2"])
    raw = unprocessed_gpt2(hf_same, tiny_tokenizer)
    sub = lens.contrastive_direction(processed, POS, NEG, 1)
    ids = tokens_of(raw)[0]
    assert raw.cfg.normalization_type == "LN" and lens.export.centres_residual(raw)
    _, cache = raw.run_with_cache(ids)
    out = {}
    handle = blocks(hf_same)[1].register_forward_hook(
        lambda m, a, o: out.setdefault(1, o[0] if isinstance(o, tuple) else o))
    with torch.no_grad():
        hf_same(ids)
    handle.remove()
    assert (cache["blocks.1.hook_resid_post"] - out[1]).abs().max() < 1e-5
    vectors = {l: v.numpy() for l, v in hf_vectors(raw, sub, alpha=4.0).items()}
    assert np.allclose(vectors[1], hf_vectors(processed, sub, alpha=4.0)[1].numpy())
    assert (lens_logprobs(raw, ids, sub, 4.0) - hf_logprobs(hf_same, ids, vectors)).abs().max() < 1e-4
    assert (lens_logprobs(raw, ids, sub, 4.0) - lens_logprobs(processed, ids, sub, 4.0)).abs().max() < 1e-4


@pytest.mark.parametrize("alpha", [4.0, -3.0])
def test_exported_vectors_steer_hf_like_lens(pair, tmp_path, alpha):
    """Every route out (in memory, steering-vectors file, GGUF file, repeng fields) applied through a plain HF
    forward hook gives lens's steered log-probs; logits differ only by TL's centred unembedding (a constant)."""
    arch, model, hf, sub = pair
    sv_path = lens.export_vector(model, sub, tmp_path / "v.safetensors", alpha=alpha)
    gguf_path = lens.export_vector(model, sub, tmp_path / "v.gguf", alpha=alpha)
    routes = {
        "memory": {l: v.numpy() for l, v in hf_vectors(model, sub, alpha=alpha).items()},
        "steering-vectors": {l: v.numpy() for l, v in to_steering_vectors(model, sub, alpha=alpha)
                             ["layer_activations"].items()},
        "repeng": to_repeng(model, sub, alpha=alpha)["directions"],
        "safetensors file": {int(k.split(".")[1]): v for k, v in load_numpy(str(sv_path)).items()},
        "gguf file": {int(t.name.split(".")[1]): np.array(t.data) for t in gguf.GGUFReader(str(gguf_path)).tensors},
    }
    worst = 0.0
    for ids in tokens_of(model):
        want = lens_logprobs(model, ids, sub, alpha)
        unsteered = hf_logprobs(hf, ids, {})
        assert (want - unsteered).abs().max() > 0.05  # the vector does something
        for name, vectors in routes.items():
            assert list(vectors) == [sub.layer], name
            worst = max(worst, (hf_logprobs(hf, ids, vectors) - want).abs().max().item())
    print(f"\n{arch} alpha={alpha}: max |Δ log-prob| HF hook vs lens steering = {worst:.2e}")
    assert worst < 1e-4


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_bridge_backend_exports_steer_hf_like_lens(arch, model_dirs):
    """TransformerBridge (compatibility mode) centres GPT-2's residual as HookedTransformer does: same export."""
    model, hf = lens.load_model(model_dirs[arch], backend="bridge"), hf_model(model_dirs[arch])
    assert lens.export.centres_residual(model) == (arch == "gpt2")
    v = torch.randn(model.cfg.d_model, generator=torch.Generator().manual_seed(5)) + 0.3
    sub = lens.AgentSubspace(basis=(v / v.norm())[None], layer=1, hook_name=lens.hook_name(1), position="end",
                             method="random")
    ids = tokens_of(model)[0]
    vectors = {l: u.numpy() for l, u in hf_vectors(model, sub, alpha=3.0).items()}
    want = lens_logprobs(model, ids, sub, 3.0)
    assert (want - hf_logprobs(hf, ids, {})).abs().max() > 0.05
    assert (hf_logprobs(hf, ids, vectors) - want).abs().max() < 1e-4


def test_multi_layer_and_resid_pre_exports_land_on_the_right_blocks(pair):
    arch, model, hf, sub = pair
    ids = tokens_of(model)[0]
    vectors = {l: v.numpy() for l, v in hf_vectors(model, sub, alpha=2.0, layers=[1, 2]).items()}
    assert sorted(vectors) == [1, 2] and list(hf_vectors(model, sub, layers=-1)) == [model.cfg.n_layers - 1]
    second = dataclasses.replace(sub, layer=2, hook_name=lens.hook_name(2))
    with lens.steer(model, sub, 2.0, positions="all"), lens.steer(model, second, 2.0, positions="all"):
        with torch.no_grad():
            want = model(ids).log_softmax(-1)
    assert (hf_logprobs(hf, ids, vectors) - want).abs().max() < 1e-4
    pre = dataclasses.replace(sub, layer=2, hook_name="blocks.2.hook_resid_pre")  # resid_pre of 2 = output of 1
    assert list(hf_vectors(model, pre)) == [1]
    with pytest.raises(lens.LensInputError, match="embedding output"):
        hf_vectors(model, dataclasses.replace(sub, layer=0, hook_name="blocks.0.hook_resid_pre"))
    mlp = dataclasses.replace(sub, hook_name="blocks.1.hook_mlp_out", site="mlp_out")  # joins block 1's output
    vectors = {l: v.numpy() for l, v in hf_vectors(model, mlp, alpha=3.0).items()}
    assert list(vectors) == [1]
    assert (hf_logprobs(hf, ids, vectors) - lens_logprobs(model, ids, mlp, 3.0)).abs().max() < 1e-4
    for site in ("resid_mid", "attn_out"):  # inside the block (neither tiny model runs attention and MLP in parallel)
        with pytest.raises(lens.LensInputError, match=f"read at '{site}' is written inside a block"):
            hf_vectors(model, dataclasses.replace(sub, hook_name=f"blocks.1.hook_{site}", site=site))


def test_gguf_reads_back_as_documented(pair, tmp_path):
    arch, model, _, sub = pair
    path = lens.export_vector(model, sub, tmp_path / "agent.gguf", alpha=2.5, layers=[1, 2])
    reader = gguf.GGUFReader(str(path))
    assert reader.fields["general.architecture"].contents() == "controlvector"
    assert reader.fields["controlvector.model_hint"].contents() == arch
    assert reader.fields["controlvector.layer_count"].contents() == 2
    names = sorted(t.name for t in reader.tensors)
    assert names == ["direction.1", "direction.2"]
    for t in reader.tensors:
        assert t.tensor_type == gguf.GGMLQuantizationType.F32 and tuple(t.shape) == (model.cfg.d_model,)
        assert np.allclose(t.data, hf_vectors(model, sub, alpha=2.5)[1].numpy(), atol=1e-7)
    directions, meta = read_gguf(path)
    assert sorted(directions) == [1, 2] and meta["controlvector.model_hint"] == arch
    with pytest.raises(lens.LensInputError, match="rejects a direction.0 tensor"):
        lens.export_vector(model, sub, tmp_path / "zero.gguf", layers=[0])
    assert not (tmp_path / "zero.gguf").exists() and not list(tmp_path.glob(".zero*"))


def test_import_round_trips_every_format(pair, tmp_path):
    arch, model, _, sub = pair
    ids = tokens_of(model)[1]
    want = lens_logprobs(model, ids, sub, 3.0)
    sources = [lens.export_vector(model, sub, tmp_path / "v.gguf", alpha=3.0),
               lens.export_vector(model, sub, tmp_path / "v.safetensors", alpha=3.0),
               to_repeng(model, sub, alpha=3.0), to_steering_vectors(model, sub, alpha=3.0)]
    for source in sources:
        back = lens.import_vector(model, source)
        assert back.layer == sub.layer and back.hook_name == sub.hook_name and back.k == 1
        assert torch.allclose(back.direction, 3.0 * sub.direction, atol=1e-6)
        assert (lens_logprobs(model, ids, back, 1.0) - want).abs().max() < 1e-5
    restored = lens.import_vector(model, sources[0])
    assert restored.method == sub.method and restored.persona == sub.persona and restored.stats == sub.stats
    assert restored.provenance["alpha_at_export"] == 3.0 and restored.provenance["format"] == "gguf"


def test_import_centres_hf_vectors_on_layernorm_models(pair):
    """A vector made on HF activations carries a mean component: lens drops it on LayerNorm models (no effect
    there), keeps it on RMSNorm ones; either way steering matches the HF hook."""
    arch, model, hf, _ = pair
    v = torch.randn(model.cfg.d_model, generator=torch.Generator().manual_seed(0)) + 0.5
    sub = lens.import_vector(model, {"model_type": arch, "directions": {2: v.numpy()}})
    assert torch.allclose(sub.direction, v - v.mean() if arch == "gpt2" else v, atol=1e-6)
    ids = tokens_of(model)[0]
    assert (lens_logprobs(model, ids, sub, 1.0) - hf_logprobs(hf, ids, {2: v.numpy()})).abs().max() < 1e-4


def test_k2_subspace_needs_one_strength_per_direction(pair):
    _, model, hf, sub = pair
    other = torch.randn(model.cfg.d_model, generator=torch.Generator().manual_seed(1))
    other -= (other @ sub.direction) * sub.direction
    two = dataclasses.replace(sub, basis=torch.stack([sub.direction, other / other.norm()]))
    with pytest.raises(lens.LensInputError, match="k=2 directions, so alpha needs 2 strengths"):
        hf_vectors(model, two, alpha=1.0)
    got = hf_vectors(model, two, alpha=[2.0, -1.0])[1]
    want = 2.0 * two.basis[0] - two.basis[1]
    assert torch.allclose(got, want - want.mean() if lens.export.centres_residual(model) else want, atol=1e-6)
    assert torch.equal(hf_vectors(model, two, alpha=torch.tensor([2.0, -1.0]))[1], got)
    ids = tokens_of(model)[0]
    assert (lens_logprobs(model, ids, two, [2.0, -1.0]) - hf_logprobs(hf, ids, {1: got.numpy()})).abs().max() < 1e-4
    with pytest.raises(lens.LensInputError, match="must be finite"):
        hf_vectors(model, sub, alpha=float("nan"))
    with pytest.raises(lens.LensInputError, match="must be a number or one number per direction"):
        hf_vectors(model, sub, alpha="strong")


def test_export_import_bad_inputs(pair, tmp_path):
    _, model, _, sub = pair
    with pytest.raises(lens.LensInputError, match="cannot tell the format from the suffix '.pt'"):
        lens.export_vector(model, sub, tmp_path / "v.pt")
    with pytest.raises(lens.LensInputError, match=r"holds vectors for blocks \[1, 2\]; pass layer="):
        lens.import_vector(model, lens.export_vector(model, sub, tmp_path / "m.gguf", layers=[1, 2]))
    assert lens.import_vector(model, tmp_path / "m.gguf", layer=2).layer == 2
    with pytest.raises(lens.LensInputError, match="has width 5 but this model's d_model is 64"):
        lens.import_vector(model, {"layer_activations": {1: torch.ones(5)}})
    with pytest.raises(lens.LensInputError, match="no such file"):
        lens.import_vector(model, tmp_path / "missing.gguf")
    (tmp_path / "junk.gguf").write_bytes(b"not a gguf")
    with pytest.raises(lens.LensInputError, match="not a readable GGUF file"):
        lens.import_vector(model, tmp_path / "junk.gguf")
    with pytest.raises(lens.LensInputError, match="layer_type 'mlp' is not supported"):
        lens.import_vector(model, {"layer_activations": {1: torch.ones(64)}, "layer_type": "mlp"})


FAMILIES = {  # tiny configs of every decoder family lens.load_model converts (LayerNorm ones first)
    "gpt2": lambda v, ids: T.GPT2Config(vocab_size=v, n_embd=64, n_layer=3, n_head=4, n_positions=256, **ids),
    "gptj": lambda v, ids: T.GPTJConfig(vocab_size=v, n_embd=64, n_layer=3, n_head=4, n_positions=256, rotary_dim=8,
                                        **ids),
    "gpt_neo": lambda v, ids: T.GPTNeoConfig(vocab_size=v, hidden_size=64, num_layers=2, num_heads=4,
                                             attention_types=[[["global", "local"], 1]], window_size=16,
                                             max_position_embeddings=256, **ids),
    "gpt_neox": lambda v, ids: T.GPTNeoXConfig(vocab_size=v, hidden_size=64, num_hidden_layers=3, num_attention_heads=4,
                                               intermediate_size=160, max_position_embeddings=256, **ids),
    "opt": lambda v, ids: T.OPTConfig(vocab_size=v, hidden_size=64, num_hidden_layers=3, num_attention_heads=4,
                                      ffn_dim=160, word_embed_proj_dim=64, max_position_embeddings=256, **ids),
    "bloom": lambda v, ids: T.BloomConfig(vocab_size=v, hidden_size=64, n_layer=3, n_head=4, **ids),
    "phi": lambda v, ids: T.PhiConfig(vocab_size=v, hidden_size=64, intermediate_size=160, num_hidden_layers=3,
                                      num_attention_heads=4, max_position_embeddings=256, **ids),
    "olmo": lambda v, ids: T.OlmoConfig(**_lm(v, ids)),
    "llama": lambda v, ids: T.LlamaConfig(**_lm(v, ids), num_key_value_heads=2),
    "mistral": lambda v, ids: T.MistralConfig(**_lm(v, ids), num_key_value_heads=2, sliding_window=None),
    "mixtral": lambda v, ids: T.MixtralConfig(**_lm(v, ids), num_key_value_heads=2, num_local_experts=4,
                                              num_experts_per_tok=2, sliding_window=None),
    "qwen2": lambda v, ids: T.Qwen2Config(**_lm(v, ids), num_key_value_heads=2, tie_word_embeddings=True),
    "qwen3": lambda v, ids: T.Qwen3Config(**_lm(v, ids), num_key_value_heads=2, head_dim=16, tie_word_embeddings=True),
    "gemma": lambda v, ids: T.GemmaConfig(**_lm(v, ids), num_key_value_heads=1, head_dim=16),
    "gemma2": lambda v, ids: T.Gemma2Config(**_lm(v, ids), num_key_value_heads=2, head_dim=16),
    "gemma3_text": lambda v, ids: T.Gemma3TextConfig(**_lm(v, ids), num_key_value_heads=2, head_dim=16),
    "phi3": lambda v, ids: T.Phi3Config(**_lm(v, ids), num_key_value_heads=4),
    "olmo2": lambda v, ids: T.Olmo2Config(**_lm(v, ids)),
}
LAYER_NORM_FAMILIES = {"gpt2", "gptj", "gpt_neo", "gpt_neox", "opt", "bloom", "phi", "olmo"}


def _lm(vocab: int, ids: dict) -> dict:
    return dict(vocab_size=vocab, hidden_size=64, intermediate_size=160, num_hidden_layers=3, num_attention_heads=4,
                max_position_embeddings=256, **ids)


def decoder_layers(hf, n_layers: int):
    """The HF model's list of decoder blocks (``transformer.h``, ``model.layers``, ``model.decoder.layers``, ...)."""
    return next(m for m in hf.modules() if isinstance(m, torch.nn.ModuleList) and len(m) == n_layers)


@pytest.mark.parametrize("family", list(FAMILIES))
def test_export_matches_an_hf_hook_on_every_family(family, tiny_tokenizer, tmp_path):
    """A vector with a mean component, exported from lens, steers the HF model of each family (parallel attention,
    OPT's decoder, Bloom's ALiBi, Gemma's scaled embeddings, ...) as lens steers its TL copy."""
    ids = dict(bos_token_id=tiny_tokenizer.bos_token_id, eos_token_id=tiny_tokenizer.eos_token_id,
               pad_token_id=tiny_tokenizer.pad_token_id)
    torch.manual_seed(0)
    hf = AutoModelForCausalLM.from_config(FAMILIES[family](len(tiny_tokenizer), ids)).eval()
    with torch.no_grad():
        for p in hf.parameters():
            p.add_(0.02 * torch.randn_like(p))
    hf.save_pretrained(tmp_path)
    tiny_tokenizer.save_pretrained(tmp_path)
    model = lens.load_model(tmp_path)
    assert lens.export.centres_residual(model) == (family in LAYER_NORM_FAMILIES)
    v = torch.randn(model.cfg.d_model, generator=torch.Generator().manual_seed(1)) + 0.5
    sub = lens.AgentSubspace(basis=(v / v.norm())[None], layer=1, hook_name=lens.hook_name(1), position="end",
                             method="random")
    x = tokens_of(model)[0]
    want = lens_logprobs(model, x, sub, 4.0)
    vector = hf_vectors(model, sub, alpha=4.0)[1]
    handle = decoder_layers(hf, model.cfg.n_layers)[1].register_forward_hook(
        lambda m, a, out: (out[0] + vector, *out[1:]) if isinstance(out, tuple) else out + vector)
    try:
        with torch.no_grad():
            got = hf(x).logits.float().log_softmax(-1)
    finally:
        handle.remove()
    assert (want - hf_logprobs(hf, x, {})).abs().max() > 0.1
    assert (got - want).abs().max() < 1e-4
