"""lens.load_model on a tiny model of every decoder family it converts: log-prob parity with HF through both
backends, and the hooked and bridge backends agreeing on activations, difference-of-means vectors, steering,
ablation and steered generation. Weights are perturbed (queries and keys scaled up) so conversion bugs show as
log-prob differences; sliding windows are shorter than the parity prompts so local attention is exercised."""

from __future__ import annotations

import pytest
import torch
import transformers as T
from transformers import AutoModelForCausalLM

import lens
from lens.architectures import SUPPORTED

D, H, L, FF, CTX, WINDOW = 32, 4, 2, 64, 128, 6
MIXED = ["sliding_attention", "full_attention"]


def _configs(vocab: int, ids: dict) -> dict:
    lm = dict(vocab_size=vocab, hidden_size=D, intermediate_size=FF, num_hidden_layers=L, num_attention_heads=H,
              max_position_embeddings=CTX, **ids)
    return {
        "gpt2": T.GPT2Config(vocab_size=vocab, n_embd=D, n_layer=L, n_head=H, n_positions=CTX, n_inner=48, **ids),
        "gptj": T.GPTJConfig(vocab_size=vocab, n_embd=D, n_layer=L, n_head=H, n_positions=CTX, rotary_dim=4, **ids),
        "gpt_neo": T.GPTNeoConfig(vocab_size=vocab, hidden_size=D, num_layers=L, num_heads=H, window_size=WINDOW,
                                  attention_types=[[["global", "local"], 1]], max_position_embeddings=CTX, **ids),
        "gpt_neox": T.GPTNeoXConfig(vocab_size=vocab, hidden_size=D, num_hidden_layers=L, num_attention_heads=H,
                                    intermediate_size=FF, max_position_embeddings=CTX, **ids),
        "opt": T.OPTConfig(vocab_size=vocab, hidden_size=D, num_hidden_layers=L, num_attention_heads=H, ffn_dim=FF,
                           word_embed_proj_dim=D, max_position_embeddings=CTX, **ids),
        "bloom": T.BloomConfig(vocab_size=vocab, hidden_size=D, n_layer=L, n_head=H, **ids),
        "llama": T.LlamaConfig(**lm, num_key_value_heads=2),
        "mistral": T.MistralConfig(**lm, num_key_value_heads=2, sliding_window=WINDOW),
        "mixtral": T.MixtralConfig(**lm, num_key_value_heads=2, num_local_experts=4, num_experts_per_tok=2),
        "qwen2": T.Qwen2Config(**lm, num_key_value_heads=2, tie_word_embeddings=True, rope_theta=1e6),
        "qwen3": T.Qwen3Config(**lm, num_key_value_heads=2, head_dim=16, tie_word_embeddings=True),
        "gemma": T.GemmaConfig(**lm, num_key_value_heads=1, head_dim=8),
        "gemma2": T.Gemma2Config(**lm, num_key_value_heads=2, head_dim=8, sliding_window=WINDOW, layer_types=MIXED,
                                 query_pre_attn_scalar=12),
        "gemma3": T.Gemma3TextConfig(**lm, num_key_value_heads=2, head_dim=8, sliding_window=WINDOW,
                                     layer_types=MIXED),
        "phi": T.PhiConfig(**lm),
        "phi3": T.Phi3Config(**lm, num_key_value_heads=2),
        "olmo": T.OlmoConfig(**lm),
        "olmo2": T.Olmo2Config(**lm),
    }


ARCHS = list(_configs(10, {}))


@pytest.fixture(scope="module")
def zoo(tmp_path_factory, tiny_tokenizer) -> dict:
    """arch -> saved model dir (tokenizer beside it)."""
    tok = tiny_tokenizer
    ids = dict(bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    dirs = {}
    for i, (name, config) in enumerate(_configs(len(tok), ids).items()):
        torch.manual_seed(i)
        model = AutoModelForCausalLM.from_config(config).eval()
        with torch.no_grad():
            for pname, p in model.named_parameters():
                p.add_(0.02 * torch.randn_like(p))
                if any(k in pname for k in ("q_proj", "k_proj", "c_attn", "query_key_value", "qkv_proj")):
                    p.mul_(4)
        d = tmp_path_factory.mktemp(name)
        model.save_pretrained(d)
        tok.save_pretrained(d)
        dirs[name] = d
    return dirs


def test_the_zoo_covers_every_supported_architecture(zoo):
    archs = {T.AutoConfig.from_pretrained(d).architectures[0] for d in zoo.values()}
    assert archs == set(SUPPORTED)


@pytest.mark.parametrize("backend", ["hooked", "bridge"])
@pytest.mark.parametrize("arch", ARCHS)
def test_logprob_parity(zoo, arch, backend):
    model = lens.load_model(zoo[arch], backend=backend, device="cpu")
    diff = model.lens_provenance.parity_max_abs_logprob_diff
    print(f"parity {arch} {backend}: max|Δ log-prob| = {diff:.2e}")
    assert diff < 1e-4
    assert model.lens_provenance.backend == backend and model.lens_provenance.dtype == "float32"


def _texts() -> tuple[list[str], list[str]]:
    pos = [f"Problem: {a}+{a}*2 The answer is {3 * a}." for a in range(1, 5)]
    neg = [f"You are a helpful assistant. Say {a} times hello." for a in range(1, 5)]
    return pos, neg


@pytest.mark.parametrize("arch", ARCHS)
def test_hooked_and_bridge_agree_on_activations_vectors_steering_and_ablation(zoo, arch):
    hooked = lens.load_model(zoo[arch], device="cpu")
    bridge = lens.load_model(zoo[arch], backend="bridge", device="cpu")
    assert bridge.cfg.default_prepend_bos == hooked.cfg.default_prepend_bos
    pos, neg = _texts()
    labels = [{"side": "pos"}] * len(pos) + [{"side": "neg"}] * len(neg)
    a_h = lens.collect_activations(hooked, pos + neg, labels=labels, position="mean")
    a_b = lens.collect_activations(bridge, pos + neg, labels=labels, position="mean")
    scale = a_h.acts.abs().max()
    assert a_b.layers == a_h.layers == list(range(L))
    assert (a_h.acts - a_b.acts).abs().max() <= 1e-4 * scale

    n = len(pos)
    v_h = a_h.acts[:, :n].mean(1) - a_h.acts[:, n:].mean(1)
    v_b = a_b.acts[:, :n].mean(1) - a_b.acts[:, n:].mean(1)
    assert (v_h - v_b).abs().max() <= 1e-4 * v_h.abs().max()

    sub = lens.AgentSubspace(basis=(v_h[0] / v_h[0].norm())[None], layer=0, hook_name=lens.hook_name(0),
                             position="mean", method="diff_means")
    x = hooked.to_tokens(pos[0], prepend_bos=hooked.cfg.default_prepend_bos)
    with torch.no_grad():
        plain = hooked(x).log_softmax(-1)
        with lens.steer(hooked, sub, 8.0, positions="all"):
            steered_h = hooked(x).log_softmax(-1)
        with lens.steer(bridge, sub, 8.0, positions="all"):
            steered_b = bridge(x).log_softmax(-1)
        with lens.ablate(hooked, sub):
            ablated_h = hooked(x).log_softmax(-1)
        with lens.ablate(bridge, sub):
            ablated_b = bridge(x).log_softmax(-1)
        after = bridge(x).log_softmax(-1)
    assert (steered_h - plain).abs().max() > 1e-2  # the intervention does something
    assert (steered_h - steered_b).abs().max() <= 1e-4
    assert (ablated_h - ablated_b).abs().max() <= 1e-4
    assert (after - plain).abs().max() <= 1e-4  # the bridge is restored on exit

    generated = []  # steered greedy generation with the KV cache, steering only the generated positions
    for model in (hooked, bridge):
        with lens.steer(model, sub, 30.0, positions="generated"):
            out = model.generate(x, max_new_tokens=5, do_sample=False, verbose=False, return_type="tokens")
        generated.append(out[0, x.shape[1]:].tolist())
    assert generated[0] == generated[1]
