"""lens on a tiny Llama: activations, agent subspaces, probes, steer/ablate, suppression rating, plots."""

from __future__ import annotations

import json
import math

import pytest
import torch

import lens
from lens.debate_format import training_text, turn_spans

from synthetic import ENDINGS, PROMPT, synth


@pytest.fixture(scope="module")
def sub(model, transcripts):
    return lens.find_agent_subspace(model, 2, transcripts=transcripts)


def test_turn_activations_match_full_forward_and_are_padding_safe(model, transcripts):
    acts = lens.turn_activations(model, transcripts, layers=[0, 2], batch_size=3)
    assert acts.acts.shape == (2, 6 * len(transcripts), model.cfg.d_model)
    assert acts.labels[4] == {"transcript": 0, "question_id": "q0", "round": 2, "agent": 2, "persona": "critic"}
    t = transcripts[5]
    text = training_text(t)
    enc = model.tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    tokens = torch.tensor([[model.tokenizer.bos_token_id, *enc["input_ids"]]])
    _, cache = model.run_with_cache(tokens, names_filter="blocks.2.hook_resid_post")
    for j, span in enumerate(turn_spans(t)):
        last = max(i for i, (s, e) in enumerate(enc["offset_mapping"]) if s < span.end) + 1
        assert torch.allclose(acts.at(2)[5 * 6 + j], cache["blocks.2.hook_resid_post"][0, last], atol=1e-5)
    alone = lens.turn_activations(model, transcripts[5:6], layers=[2], batch_size=1)
    assert (alone.at(2) - acts.at(2)[30:36]).abs().max() < 1e-5
    mean = lens.turn_activations(model, transcripts[:1], layers=[0], position="turn_mean")
    assert mean.acts.shape == (1, 6, model.cfg.d_model) and not torch.allclose(mean.acts, acts.acts[:1, :6])


def test_activation_set_roundtrip(model, transcripts, tmp_path):
    acts = lens.collect_activations(model, ["a b c", "hello there"], layers=1, position=-2, out=tmp_path / "acts")
    back = lens.ActivationSet.load(tmp_path / "acts")
    assert torch.equal(back.acts, acts.acts) and back.layers == [1] and back.position == -2


def test_diff_means_equals_hand_computation(model, transcripts, sub):
    assert sub.hook_name == f"blocks.{sub.layer}.hook_resid_post" and sub.persona == "critic"
    assert set(sub.scores) == {0, 1, 2} and sub.stats["n_slots"] == 2 * len(transcripts)
    x = lens.turn_activations(model, transcripts, layers=[sub.layer]).at(sub.layer).reshape(-1, 3, model.cfg.d_model)
    hand = (x[:, 1] - (x[:, 0] + x[:, 2]) / 2).mean(0)
    assert torch.allclose(sub.basis[0], hand / hand.norm(), atol=1e-5)
    assert math.isclose(sub.stats["raw_diff_norm"], hand.norm().item(), rel_tol=1e-4)
    by_name = lens.find_agent_subspace(model, "critic", transcripts=transcripts, layers=[sub.layer])
    assert torch.allclose(by_name.basis, sub.basis, atol=1e-6)
    raw = sub.raw()  # α = 1 then adds the whole mean difference, as the paper's code with --no_normalize
    assert torch.allclose(raw.basis[0], hand, atol=1e-4) and raw.normalization == "raw mean difference"
    assert raw.layer == sub.layer and torch.equal(sub.basis[0], by_name.basis[0])  # the original is untouched


def test_methods_shapes_orthonormal_and_save_load(model, transcripts, tmp_path):
    for method, k in [("pca", 2), ("probe", 1)]:
        s = lens.find_agent_subspace(model, 3, transcripts=transcripts, method=method, k=k, layers=[1])
        assert s.basis.shape == (k, model.cfg.d_model) and s.layer == 1
        assert torch.allclose(s.basis @ s.basis.T, torch.eye(k), atol=1e-5)
        path = s.save(tmp_path / f"agent3_{method}")
        back = lens.AgentSubspace.load(path)
        assert torch.equal(back.basis, s.basis) and back.scores == s.scores and back.provenance == s.provenance
        assert json.loads(path.with_suffix(".json").read_text())["hook_name"] == "blocks.1.hook_resid_post"
        with pytest.raises(lens.LensInputError, match=r"raw\(\) needs a single direction fitted by diff of means"):
            s.raw()


def test_planted_direction_is_recovered(tiny_model_dirs, transcripts):
    planted = lens.load_model(tiny_model_dirs["llama"])
    last_token = planted.tokenizer(ENDINGS[2], add_special_tokens=False)["input_ids"][-1]
    v = torch.randn(planted.cfg.d_model, generator=torch.Generator().manual_seed(3))
    v /= v.norm()
    with torch.no_grad():
        planted.embed.W_E[last_token] += 20 * v
    s = lens.find_agent_subspace(planted, 2, transcripts=transcripts, layers=[0])
    assert (s.basis[0] @ v).item() > 0.9
    assert s.scores[0]["cohens_d"] > 3 and s.scores[0]["probe_accuracy"] == 1.0


def test_subspace_bad_inputs(model, transcripts):
    with pytest.raises(lens.LensInputError, match=r"agent 5 does not appear.*\[1, 2, 3\]"):
        lens.find_agent_subspace(model, 5, transcripts=transcripts)
    with pytest.raises(lens.LensInputError, match=r"unknown agent 'pirate'.*analyst"):
        lens.find_agent_subspace(model, "pirate", transcripts=transcripts)
    with pytest.raises(lens.LensInputError, match=r"agent 3 does not appear.*\[1, 2\]"):
        lens.find_agent_subspace(model, 3, transcripts=synth(4, agents=2))
    with pytest.raises(lens.LensInputError, match="layer 7 is out of range"):
        lens.find_agent_subspace(model, 1, transcripts=transcripts, layers=[7])
    with pytest.raises(lens.LensInputError, match="k>1 needs method='pca'"):
        lens.find_agent_subspace(model, 1, transcripts=transcripts, k=2)
    with pytest.raises(lens.LensInputError, match="records no training transcripts"):
        lens.find_agent_subspace(model, 1)


def test_contrastive_direction_token_minus_two(model):
    pos = ["I will hurt you now ok", "cruel plan here ok", "harsh words ok"]
    neg = ["I will help you now ok", "kind plan here ok", "gentle words ok"]
    d = lens.contrastive_direction(model, pos, neg, layers=1)
    acts = lens.collect_activations(model, pos + neg, layers=[1], position=-2).at(1)
    hand = acts[:3].mean(0) - acts[3:].mean(0)
    assert d.position == -2 and d.layer == 1 and torch.allclose(d.basis[0], hand / hand.norm(), atol=1e-5)
    assert torch.allclose(d.raw().basis[0], hand, atol=1e-4)
    assert "<|im_start|>system" in lens.chat_prompts(model, "be evil", ["q?"])[0]


def test_probe_layers_and_pca(model, transcripts):
    probe = lens.probe_layers(model, transcripts, cv=4)
    assert probe.layers == [0, 1, 2] and probe.n_folds == 4 and math.isclose(probe.chance, 1 / 3)
    assert min(probe.accuracy) >= 0.9  # each agent ends with its own marker token
    assert probe.classes == ["1", "2", "3"]
    pca = lens.pca_projection(model, transcripts, layer=1, center="slot")
    assert pca.coords.shape == (48, 2) and 0 < sum(pca.explained_variance_ratio) <= 1 + 1e-6


def _logits(model, tokens):
    with torch.no_grad():
        return model(tokens)


def test_steer_changes_outputs_and_restores_model(model, sub):
    tokens = model.to_tokens(PROMPT, prepend_bos=True)
    before = _logits(model, tokens)
    with lens.steer(model, sub, 10.0, positions="all"):
        steered = _logits(model, tokens)
    assert (steered - before).abs().max() > 1e-2
    assert torch.equal(_logits(model, tokens), before)
    with pytest.raises(RuntimeError, match="boom"):
        with lens.steer(model, sub, 10.0, positions="all"):
            raise RuntimeError("boom")
    assert torch.equal(_logits(model, tokens), before)
    assert "forward" not in model.__dict__ and "generate" not in model.__dict__
    assert all(not hp.fwd_hooks for hp in model.hook_dict.values())
    n = tokens.shape[1]
    with lens.steer(model, sub, 10.0, positions="generated", prompt_len=n - 2):
        part = _logits(model, tokens)
    assert torch.allclose(part[:, :n - 2], before[:, :n - 2]) and (part[:, n - 2:] - before[:, n - 2:]).abs().max() > 1e-2


def test_steer_under_kv_cache_equals_no_cache_and_batches_alpha(model, sub):
    tokens = model.to_tokens(PROMPT, prepend_bos=True)
    gen = dict(max_new_tokens=8, do_sample=False, verbose=False)
    plain = model.generate(tokens, **gen)
    outs = {}
    for cache in (True, False):
        with lens.steer(model, sub, 8.0):
            outs[cache] = model.generate(tokens, use_past_kv_cache=cache, **gen)
    assert torch.equal(outs[True], outs[False]) and not torch.equal(outs[True], plain)
    assert torch.equal(outs[True][:, :tokens.shape[1]], tokens)
    with lens.steer(model, sub, torch.tensor([0.0, 8.0, -8.0])):
        batched = model.generate(tokens.repeat(3, 1), **gen)
    with lens.steer(model, sub, -8.0):
        negative = model.generate(tokens, **gen)
    assert torch.equal(batched[0], plain[0]) and torch.equal(batched[1], outs[True][0])
    assert torch.equal(batched[2], negative[0])


def test_ablate_removes_projection(model, transcripts, sub):
    tokens = model.to_tokens(PROMPT, prepend_bos=True)
    pca = lens.find_agent_subspace(model, 1, transcripts=transcripts, method="pca", k=2, layers=[1])
    for s in (sub, pca):
        _, clean = model.run_with_cache(tokens, names_filter=s.hook_name)
        with lens.ablate(model, s):
            _, cache = model.run_with_cache(tokens, names_filter=s.hook_name)
        assert (clean[s.hook_name] @ s.basis.T).abs().max() > 1e-3
        assert (cache[s.hook_name] @ s.basis.T).abs().max() < 1e-5
    with lens.ablate(model, sub, layers="all"):
        _, cache = model.run_with_cache(tokens)
    assert all((cache[f"blocks.{l}.hook_resid_post"] @ sub.direction).abs().max() < 1e-5 for l in range(3))
    assert all(not hp.fwd_hooks for hp in model.hook_dict.values())


def test_intervention_bad_inputs(model, sub):
    other = lens.AgentSubspace(basis=torch.eye(1, 32), layer=0, hook_name="blocks.0.hook_resid_post",
                               position="end", method="diff_means")
    with pytest.raises(lens.LensInputError, match="width 32 but this model's d_model is 64"):
        with lens.steer(model, other, 1.0):
            pass
    with pytest.raises(lens.LensInputError, match="width 32"):
        with lens.ablate(model, other):
            pass
    with pytest.raises(lens.LensInputError, match="layer 9 is out of range"):
        with lens.steer(model, sub, 1.0, layers=9):
            pass
    with pytest.raises(lens.LensInputError, match="positions 'middle' is unknown"):
        with lens.steer(model, sub, 1.0, positions="middle"):
            pass
    with pytest.raises(lens.LensInputError, match="needs prompt_len"):
        with lens.steer(model, sub, 1.0, positions="generated"):
            model(model.to_tokens("hi", prepend_bos=True))
    assert all(not hp.fwd_hooks for hp in model.hook_dict.values())


def test_rate_suppression(model, sub):
    prompts = ["Problem: 3+4*5\n\n", "Problem: 12+2*3-1\n\n"]
    trait = lambda q, r: 100.0 * r.count("CRITIQUE") / max(1, len(r.split()))  # noqa: E731
    base = model.generate(model.to_tokens(PROMPT, prepend_bos=True), max_new_tokens=4, do_sample=False, verbose=False)

    def capability(m) -> float:
        out = m.generate(m.to_tokens(PROMPT, prepend_bos=True), max_new_tokens=4, do_sample=False, verbose=False)
        return float(torch.equal(out, base))

    kw = dict(alphas=[-6.0, 6.0], prompts=prompts, trait=trait, capability=capability, max_new_tokens=6)
    report = lens.rate_suppression(model, sub, **kw)
    assert report.alphas == [-6.0, 0.0, 6.0] and report.settings["alpha_zero_added"]
    assert report.capability[1] == 1.0 and report.delta_trait[1] == 0.0 and report.delta_capability[1] == 0.0
    assert report.best_alpha in report.alphas and len(report.responses) == 3 and len(report.responses[0]) == 2
    assert all(p > 1 for p in report.perplexity_mean if not math.isnan(p))
    json.dumps(report.to_dict())
    one_at_a_time = lens.rate_suppression(model, sub, batch_size=len(prompts), **kw)
    assert one_at_a_time.responses == report.responses
    with pytest.raises(lens.LensInputError, match="α grid is empty"):
        lens.rate_suppression(model, sub, **{**kw, "alphas": []})


def test_suppression_auc():
    assert lens.suppression_auc([-2.0, 0.0, 2.0], [0.0, 50.0, 50.0]) == pytest.approx(0.25)


def test_plots(model, transcripts, sub, tmp_path, monkeypatch):
    from lens import plots

    probe = lens.ProbeResult(layers=[0, 1], accuracy=[0.5, 0.9], accuracy_se=[0.1, 0.05], chance=1 / 3,
                             label="agent", classes=["1", "2", "3"], position="end", n=30, n_folds=5)
    fig = plots.probe_accuracy_by_layer({"sft": probe, "imad": probe})
    assert len(fig.data) == 4 and list(fig.data[1].y) == [0.5, 0.9]
    pca = lens.pca_projection(model, transcripts, layer=1)
    fig = plots.pca_scatter(pca)
    assert [t.name for t in fig.data] == ["agent 1", "agent 2", "agent 3"] and len(fig.data[0].x) == 16
    fig = plots.steering_curves({"base": ([0, 1], [0.1, 0.2], [0.01, 0.02]), "IMAD": ([0, 1], [0.1, 0.4], [0, 0])})
    assert [t.name for t in fig.data if t.showlegend is not False] == ["base", "IMAD"]
    report = lens.SuppressionReport(
        alphas=[-1.0, 0.0], trait_mean=[10.0, 80.0], trait_se=[1.0, 2.0], capability=[0.8, 0.9],
        perplexity_mean=[3.0, 2.0], perplexity_se=[0.1, 0.1], delta_trait=[-70.0, 0.0], delta_capability=[-0.1, 0],
        best_alpha=-1.0, capacity_budget=0.2, suppression_auc=0.4, hook_name=sub.hook_name, positions="generated")
    fig = plots.suppression_tradeoff({"base": report, "IMAD": report})
    assert len(fig.data) == 4 and list(fig.data[0].text) == ["α=-1", "α=0"] and list(fig.data[1].x) == [0.8]

    def no_chrome(*a, **k):
        raise RuntimeError("Kaleido requires Google Chrome to be installed")

    monkeypatch.setattr(type(fig), "to_image", no_chrome)
    written = plots.save_figure(fig, tmp_path / "tradeoff")
    assert written == [tmp_path / "tradeoff.html"] and "plotly" in written[0].read_text()[:5000].lower()
