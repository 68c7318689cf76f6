"""`lens.generate` through the HF twin (forward hooks) against TransformerLens, and per-arm prompt subsets."""

from __future__ import annotations

import pytest
import torch

import lens
from lens.errors import LensInputError, LensLoadError

PROMPTS = ["Problem: 3+4*5\n\n", "Problem: 12+2*3-1\n\n<|Round 1 - Initial Solutions|>", "7", "Problem: 9+9\n\n"]


@pytest.fixture(scope="module")
def twin(tiny_model_dirs):
    """The tiny Llama with its HF twin kept."""
    return lens.load_model(tiny_model_dirs["llama"], keep_hf=True)


@pytest.fixture(scope="module")
def subs(twin, transcripts):
    return {a: lens.find_agent_subspace(twin, a, transcripts=transcripts, layers=[1]).raw() for a in (1, 2)}


def _stops(model) -> list[int]:
    return [model.tokenizer.eos_token_id, model.tokenizer.convert_tokens_to_ids("<|endofdebate|>")]


def test_hf_hooks_give_the_tokens_of_transformer_lens_under_greedy_steering(twin, subs):
    kw = dict(interventions={str(a): s for a, s in subs.items()}, alphas=[0.0, 2.0, 6.0], max_new_tokens=12,
              stop=_stops(twin), batch_size=5)
    hooked = lens.generate(twin, PROMPTS, backend="hooked", **kw)
    hf = lens.generate(twin, PROMPTS, backend="hf", **kw)
    assert (hooked.settings["backend"], hf.settings["backend"]) == ("hooked", "hf")
    assert hf.tokens == hooked.tokens and hf.texts == hooked.texts and hf.stopped == hooked.stopped
    assert hf.select(arm="1", alpha=6.0) != hf.select(arm="1", alpha=0.0)  # steering changed something
    assert lens.generate(twin, PROMPTS, **kw).settings["backend"] == "hf"  # auto picks the twin


def test_hf_hooks_steer_the_same_residual_as_transformer_lens(twin, subs):
    """The hooked block output equals TransformerLens' resid_post, with and without an Add."""
    tokens = twin.to_tokens(PROMPTS[0])
    add = lens.Add(subs[1], 3.0, positions="all")
    seen = {}
    block = twin.lens_hf.model.model.layers[1]
    from lens.interventions import _applied_hf

    with _applied_hf(twin, twin.lens_hf.model, [(add, None, None)], prompt_len=None):
        # registered after the steering hook, so it reads the steered stream
        handle = block.register_forward_hook(lambda m, a, o: seen.update(h=o[0] if isinstance(o, tuple) else o))
        try:
            twin.lens_hf.model(tokens)
        finally:
            handle.remove()
    _, cache = twin.run_with_cache(tokens, names_filter=lens.hook_name(1))
    steered = cache[lens.hook_name(1)] + 3.0 * subs[1].basis[0]
    assert torch.allclose(seen["h"], steered, atol=1e-4)


def test_sampled_rows_follow_the_seed_on_the_hf_backend(twin, subs):
    kw = dict(interventions=subs[1], alphas=[0.0, 4.0], max_new_tokens=8, temperature=0.9, top_p=0.9,
              backend="hf")
    a, b = (lens.generate(twin, PROMPTS, seed=3, **kw) for _ in range(2))
    assert a.tokens == b.tokens and a.tokens != lens.generate(twin, PROMPTS, seed=4, **kw).tokens


def test_arm_prompts_batched_equal_one_call_per_arm(twin, subs):
    """Each agent on its own prompts in one call gives the tokens of one call per agent (greedy)."""
    own = {"1": [0, 2], "2": [1, 3]}
    kw = dict(alphas=[0.0, 5.0], max_new_tokens=10, stop=_stops(twin), backend="hooked")
    one = lens.generate(twin, PROMPTS, interventions={str(a): s for a, s in subs.items()}, arm_prompts=own, **kw)
    assert len(one.tokens) == 2 * 2 * 2 and sorted(set(one.prompt)) == [0, 1, 2, 3]
    for arm, idx in own.items():
        alone = lens.generate(twin, [PROMPTS[j] for j in idx], interventions=subs[int(arm)], **kw)
        rows = [r for r, a in enumerate(one.arm) if a == arm]
        assert [one.tokens[r] for r in rows] == alone.tokens
        assert [idx.index(one.prompt[r]) for r in rows] == alone.prompt


def test_backend_and_arm_prompts_bad_inputs(twin, subs, model):
    with pytest.raises(LensInputError, match="backend 'tf' is unknown"):
        lens.generate(twin, PROMPTS, backend="tf")
    with pytest.raises(LensInputError, match="no HF twin"):
        lens.generate(model, PROMPTS, backend="hf")
    with pytest.raises(LensInputError, match="site other than 'resid_post'"):
        lens.generate(twin, PROMPTS, interventions=lens.Add(subs[1], 1.0, site="mlp_out"), backend="hf")
    with pytest.raises(LensInputError, match=r"arm_prompts names arms \['3'\]"):
        lens.generate(twin, PROMPTS, interventions={"1": subs[1]}, arm_prompts={"3": [0]})
    with pytest.raises(LensInputError, match=r"arm_prompts\['1'\] must be a non-empty list of prompt indices"):
        lens.generate(twin, PROMPTS, interventions={"1": subs[1]}, arm_prompts={"1": [4]})


def test_keep_hf_needs_the_hooked_backend(tiny_model_dirs):
    with pytest.raises(LensLoadError, match="keep_hf=True needs backend='hooked'"):
        lens.load_model(tiny_model_dirs["llama"], keep_hf=True, backend="bridge")


def test_hf_backend_without_stop_tokens_runs_every_row_to_the_end(twin, subs):
    """stop=[] means no stop token on both backends (HF would otherwise take the model config's eos)."""
    kw = dict(interventions=subs[1], alphas=[0.0, 3.0], max_new_tokens=9, stop=[])
    hf, hooked = (lens.generate(twin, PROMPTS, backend=b, **kw) for b in ("hf", "hooked"))
    assert all(len(t) == 9 for t in hf.tokens) and not any(hf.stopped) and hf.tokens == hooked.tokens


def test_hf_collection_reads_the_residual_transformerlens_reads(twin):
    """collect_activations through the HF twin (stopping after the last layer read) equals TransformerLens' run,
    at every layer and reading rule; sites an HF block does not expose are refused on 'hf' and fall back on 'auto'."""
    texts = ["Alice: I agree. Bob: I object!", "Alice: Fine. Bob: No way, not at all!"]
    spans = [[(0, 15, "end"), (16, len(texts[0]), "mean")], [(0, 12, -2), (13, len(texts[1]))]]
    kw = dict(char_spans=spans, layers=[0, 1], batch_size=2)
    hf = lens.collect_activations(twin, texts, backend="hf", **kw)
    tl = lens.collect_activations(twin, texts, backend="hooked", **kw)
    assert hf.acts.shape == tl.acts.shape == (2, 4, twin.cfg.d_model)
    assert torch.allclose(hf.acts, tl.acts, atol=1e-4), (hf.acts - tl.acts).abs().max()
    assert torch.equal(lens.collect_activations(twin, texts, **kw).acts, hf.acts)  # auto takes HF
    with pytest.raises(LensInputError, match="site other than 'resid_post'"):
        lens.collect_activations(twin, texts, site="mlp_out", backend="hf")
    mlp = lens.collect_activations(twin, texts, site="mlp_out", layers=0)  # auto falls back to TransformerLens
    assert mlp.acts.shape == (1, 2, twin.cfg.d_model)
