"""lens operations on a tiny Llama: sites, collect-once fitting, bring-your-own data, interventions as data
(Add / Ablate / Cap), batched generation, and the exact sentence for each bad input."""

from __future__ import annotations

import json

import pytest
import torch

import lens
from lens.fitting import diff_means
from lens.sites import site_hook
from synthetic import PROMPT, synth


@pytest.fixture(scope="module")
def acts(model, transcripts):
    return lens.turn_activations(model, transcripts)


@pytest.fixture(scope="module")
def tokens(model):
    return model.to_tokens(PROMPT, prepend_bos=True)


def _unit(n: int, seed: int) -> torch.Tensor:
    v = torch.randn(n, 64, generator=torch.Generator().manual_seed(seed))
    return torch.linalg.qr(v.T)[0].T.contiguous()


def _message(excinfo) -> str:
    return str(excinfo.value)


# --- sites -------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("site", lens.SITES)
def test_reading_a_site_equals_the_cached_hook(model, site):
    text = "Problem: 3+4*5\n\nstep done"
    got = lens.collect_activations(model, [text], layers=[1], site=site).at(1)[0]
    _, cache = model.run_with_cache(model.to_tokens(text, prepend_bos=True))
    assert torch.allclose(got, cache[f"blocks.1.hook_{site}"][0, -1], atol=1e-5)


@pytest.mark.parametrize("site", ["resid_pre", "attn_out", "mlp_out"])
def test_writing_a_site_equals_a_manual_hook(model, tokens, site):
    v = _unit(1, 0)[0]
    manual = model.run_with_hooks(tokens, fwd_hooks=[(f"blocks.2.hook_{site}", lambda r, hook: r + 3.0 * v)])
    with lens.intervene(model, lens.Add(v, 3.0, layers=2, site=site, positions="all")):
        steered = model(tokens)
    assert torch.allclose(steered, manual, atol=1e-5) and not torch.allclose(steered, model(tokens), atol=1e-3)


def test_site_recorded_in_vector_provenance_and_saved(model, transcripts, tmp_path):
    sub = lens.find_agent_subspace(model, 2, transcripts=transcripts, layers=[1], site="mlp_out")
    assert (sub.site, sub.hook_name, sub.provenance["site"]) == ("mlp_out", "blocks.1.hook_mlp_out", "mlp_out")
    back = lens.AgentSubspace.load(sub.save(tmp_path / "v"))
    assert back.site == "mlp_out" and back.hook_name == "blocks.1.hook_mlp_out"
    meta = json.loads((tmp_path / "v.json").read_text())
    del meta["site"]  # a vector saved before sites existed
    (tmp_path / "v.json").write_text(json.dumps(meta))
    assert lens.AgentSubspace.load(tmp_path / "v").site == "mlp_out"
    with lens.steer(model, sub, 5.0):  # writes where it was read, the MLP output of block 1
        _, cache = model.run_with_cache(model.to_tokens("hi there", prepend_bos=True))
    _, clean = model.run_with_cache(model.to_tokens("hi there", prepend_bos=True))
    diff = cache["blocks.1.hook_mlp_out"] - clean["blocks.1.hook_mlp_out"]
    assert torch.allclose(diff, 5.0 * sub.direction.expand_as(diff), atol=1e-4)


def test_unknown_site_and_missing_site_are_one_sentence(model):
    from transformer_lens import HookedTransformer, HookedTransformerConfig

    with pytest.raises(lens.LensInputError) as e:
        lens.collect_activations(model, ["hi"], site="resid_middle")
    assert _message(e) == ("site 'resid_middle' is unknown; valid: resid_pre, resid_mid, resid_post, attn_out, "
                           "mlp_out")
    parallel = HookedTransformer(HookedTransformerConfig(n_layers=2, d_model=16, n_ctx=16, d_head=4, n_heads=4,
                                                         d_vocab=40, act_fn="gelu", parallel_attn_mlp=True))
    with pytest.raises(lens.LensInputError) as e:
        site_hook(parallel, 0, "resid_mid")
    assert _message(e) == ("this model has no site 'resid_mid' (its attention and MLP run in parallel, so no "
                           "residual stream exists between them); sites it has: resid_pre, resid_post, attn_out, "
                           "mlp_out")


# --- layers: Python's meaning for negatives everywhere ------------------------------------------------------------

def test_negative_layers_mean_counting_from_the_end(model, transcripts, acts, tokens):
    last = lens.find_agent_subspace(acts, 2, layers=[-1])
    assert last.layer == 2 and torch.equal(last.basis, lens.find_agent_subspace(acts, 2, layers=[2]).basis)
    assert torch.equal(acts.at(-1), acts.at(2))
    with lens.steer(model, last, 4.0, layers=-1):
        a = model(tokens)
    with lens.steer(model, last, 4.0, layers=2):
        b = model(tokens)
    assert torch.equal(a, b)
    for bad in (3, -4):
        with pytest.raises(lens.LensInputError) as e:
            with lens.steer(model, last, 1.0, layers=bad):
                pass
        assert _message(e) == (f"layer {bad} is out of range: this model has 3 layers, 0..2 (or -3..-1 counting "
                               f"from the last)")


# --- collect once, fit many ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("method,k", [("diff_means", 1), ("pca", 2), ("probe", 1)])
def test_fit_from_activation_set_equals_the_collecting_fit(model, transcripts, acts, method, k):
    collected = lens.find_agent_subspace(model, 3, transcripts=transcripts, method=method, k=k)
    fitted = lens.fit_agent_subspace(acts, 3, method=method, k=k)
    assert torch.equal(fitted.basis, collected.basis) and fitted.layer == collected.layer
    assert fitted.scores == collected.scores and fitted.stats == collected.stats


def test_three_agents_and_probes_from_one_collection(model, transcripts):
    calls = []
    hook = model.hook_dict["hook_embed"].register_forward_hook(lambda *a: calls.append(1))
    try:
        acts = lens.turn_activations(model, transcripts, batch_size=len(transcripts))
        subs = {a: lens.fit_agent_subspace(acts, a) for a in (1, 2, 3)}
        probe = lens.probe_layers(acts, cv=4)
        pca = lens.pca_projection(acts, layer=1, center="slot")
    finally:
        hook.remove()
    assert len(calls) == 1  # one forward pass for three vectors, a probe and a PCA
    assert probe.to_dict() == lens.probe_layers(model, transcripts, cv=4).to_dict()
    assert torch.allclose(pca.coords, lens.pca_projection(model, transcripts, layer=1, center="slot").coords)
    assert {s.persona for s in subs.values()} == {"analyst", "critic", "programmer"}


def test_fitting_methods_are_a_registry_open_to_your_own(acts):
    assert set(lens.FIT_METHODS) == {"diff_means", "pca", "probe"}

    def flipped(readings, k):
        return -diff_means(readings, k)

    own = lens.fit_agent_subspace(acts, 2, method=flipped, layers=[1])
    assert own.method == "flipped"
    assert torch.allclose(own.basis, -lens.fit_agent_subspace(acts, 2, layers=[1]).basis)
    with pytest.raises(lens.LensInputError) as e:
        lens.fit_agent_subspace(acts, 2, method=lambda r, k: torch.zeros(3), layers=[1])
    assert _message(e) == ("the fitting method returned shape (1, 3) (or non-finite values); it must return 1 "
                           "finite rows of width 64")


# --- bring your own data ------------------------------------------------------------------------------------------

def test_your_own_spans_labels_and_read_positions(model):
    texts = ["Alice: I agree fully. Bob: I object now!", "Alice: Fine by me. Bob: No way at all!"]
    spans = [[(0, 20, "end"), (21, len(texts[0]), "mean")], [(0, 17, 1), (18, len(texts[1]))]]
    labels = [{"agent": "alice"}, {"agent": "bob"}, {"agent": "alice"}, {"agent": "bob"}]
    acts = lens.collect_activations(model, texts, char_spans=spans, labels=labels, layers=[1])
    assert acts.column("transcript") == [0, 0, 1, 1] and acts.column("position") == ["end", "mean", 1, None]
    enc = model.tokenizer(texts[0], add_special_tokens=False, return_offsets_mapping=True)
    covered = [j + 1 for j, (s, e) in enumerate(enc["offset_mapping"]) if e > 21 and s < len(texts[0])]
    _, cache = model.run_with_cache(model.to_tokens(texts[0], prepend_bos=True))
    resid = cache["blocks.1.hook_resid_post"][0]
    assert torch.allclose(acts.at(1)[1], resid[covered[0]:covered[-1] + 1].mean(0), atol=1e-5)
    bob = lens.fit_agent_subspace(acts, "bob")
    x = acts.at(1)
    hand = ((x[1] - x[0]) + (x[3] - x[2])) / 2
    assert bob.agent == "bob" and torch.allclose(bob.basis[0], hand / hand.norm(), atol=1e-5)


def test_contrast_pairs_collected_once(model):
    pos, neg = ["I will hurt you ok", "cruel plan ok"], ["I will help you ok", "kind plan ok"]
    acts = lens.contrast_activations(model, pos, neg, layers=[0, 1])
    d = lens.contrastive_direction(acts)
    assert d == d and d.layer in (0, 1) and d.method == "contrastive_diff_means"
    assert torch.equal(d.basis, lens.contrastive_direction(model, pos, neg, layers=[0, 1]).basis)


def test_bring_your_own_data_bad_inputs(model):
    with pytest.raises(lens.LensInputError) as e:
        lens.collect_activations(model, ["a b", "c d"], char_spans=[[(0, 3)], []])
    assert _message(e) == ("text 1 has an empty span list; give at least one (start, end) span per text, or "
                           "char_spans=None to read each whole text")
    with pytest.raises(lens.LensInputError) as e:
        lens.contrastive_direction(model, ["a", "b", "c"], ["d", "e"])
    assert _message(e) == "contrast pairs need as many negative as positive texts: got 3 positive and 2 negative"
    with pytest.raises(lens.LensInputError) as e:
        lens.fit_agent_subspace(lens.collect_activations(model, ["a b"]), 1)
    assert _message(e).startswith("some readings have no 'agent' label")


# --- interventions as data ----------------------------------------------------------------------------------------

def test_plain_forward_under_steer_steers_every_position(model, tokens):
    v = _unit(1, 1)
    with lens.steer(model, v, 2.0, layers=1):
        steered = model(tokens)
    manual = model.run_with_hooks(tokens, fwd_hooks=[("blocks.1.hook_resid_post", lambda r, hook: r + 2.0 * v[0])])
    assert torch.allclose(steered, manual, atol=1e-5)


def test_k2_basis_takes_a_strength_per_direction(model, tokens):
    b = _unit(2, 2)
    both = tokens.repeat(2, 1)
    s = torch.tensor([[3.0, -1.0], [0.5, 2.0]])
    manual = model.run_with_hooks(both, fwd_hooks=[("blocks.1.hook_resid_post", lambda r, hook: r + (s @ b)[:, None])])
    with lens.steer(model, b, s, layers=1):
        per_row = model(both)
    with lens.steer(model, b, [3.0, -1.0], layers=1):
        per_direction = model(tokens)
    assert torch.allclose(per_row, manual, atol=1e-5) and torch.allclose(per_direction, manual[:1], atol=1e-5)


@pytest.mark.parametrize("strength,message", [
    (5.0, "a basis of k=2 directions takes one strength per direction, shape [2] or [rows, 2]; got a single number"),
    ([1.0, 2.0, 3.0], "a basis of k=2 directions takes one strength per direction, shape [2] or [rows, 2]; got "
                      "shape [3]"),
    ([[1.0, 2.0, 3.0]], "a basis of k=2 directions takes one strength per direction, shape [2] or [rows, 2]; got "
                        "shape [1, 3]"),
])
def test_ambiguous_k2_strength_raises(model, strength, message):
    sub = lens.AgentSubspace(basis=_unit(2, 3), layer=1, hook_name=lens.hook_name(1), position="end", method="pca")
    with pytest.raises(lens.LensInputError) as e:
        with lens.steer(model, sub, strength):
            pass
    assert _message(e) == message


def test_strength_rows_must_match_the_batch(model, tokens):
    with pytest.raises(lens.LensInputError) as e:
        with lens.steer(model, _unit(1, 4), [1.0, 2.0, 3.0], layers=1):
            model(tokens.repeat(2, 1))
    assert _message(e) == "strength has 3 rows but the batch has 2 rows"


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), [1.0, float("-inf")]])
def test_non_finite_strengths_are_rejected(model, bad):
    with pytest.raises(lens.LensInputError) as e:
        with lens.steer(model, _unit(1, 5), bad, layers=1):
            pass
    assert _message(e).startswith("strength must be finite numbers; got ")
    assert _message(e).endswith("(NaN or inf is never a valid strength)")


def test_cap_clamps_the_projection_at_the_threshold(model, tokens):
    v = _unit(1, 6)[0]
    name = "blocks.1.hook_resid_post"
    _, clean = model.run_with_cache(tokens, names_filter=name)
    proj = clean[name][0] @ v
    tau = float(proj.median())
    with lens.cap(model, v[None], tau, layers=1):
        _, cache = model.run_with_cache(tokens, names_filter=name)
    capped = cache[name][0] @ v
    assert capped.max() <= tau + 1e-5 and (proj > tau + 1e-3).any()
    below = proj <= tau
    assert torch.allclose(cache[name][0][below], clean[name][0][below], atol=1e-6)  # untouched below τ


def test_calibrate_cap_takes_the_percentile_of_clean_projections(model):
    texts = ["Problem: 3+4*5\n\nstep done", "Problem: 1+2\n\nCRITIQUE it"]
    v = _unit(1, 7)
    caps = lens.calibrate_cap(model, v, texts, percentile=90, layers=[0, 2])
    proj = lens.projections(model, v, texts, layers=[0, 2])
    assert [c.layers for c in caps] == [0, 2]
    for c, layer in zip(caps, (0, 2)):
        assert c.threshold == pytest.approx(float(torch.quantile(proj[layer][:, 0].double(), 0.9)))
        assert 0.05 <= float((proj[layer][:, 0] > c.threshold).float().mean()) <= 0.2


def test_interventions_round_trip_through_json(model, tokens):
    items = [lens.Add(_unit(2, 8), [1.5, -2.0], layers=[0, -1], site="attn_out", positions="all"),
             lens.Ablate(_unit(1, 9), layers="all"), lens.Cap(_unit(1, 10), 0.25, layers=1)]
    back = [lens.intervention_from_dict(json.loads(json.dumps(it.to_dict()))) for it in items]
    assert [type(b) for b in back] == [lens.Add, lens.Ablate, lens.Cap]
    assert back[0].to_dict() == items[0].to_dict() and lens.Cap.from_dict(items[2].to_dict()).threshold == 0.25
    with lens.intervene(model, items):
        a = model(tokens)
    with lens.intervene(model, back):
        b = model(tokens)
    assert torch.equal(a, b) and not torch.allclose(a, model(tokens), atol=1e-3)
    with pytest.raises(lens.LensInputError) as e:
        lens.Add.from_dict(items[1].to_dict())
    assert _message(e) == "Add.from_dict got a record of op 'ablate'; use lens.intervention_from_dict for any op"


def test_several_interventions_compose_in_order(model, tokens):
    add, capped = lens.Add(_unit(1, 11), 4.0, layers=1, positions="all"), lens.Cap(_unit(1, 11), 0.0, layers=1)
    v = add.basis[0]

    def manual(r, hook):
        r = r + 4.0 * v
        return r - (r @ v).clamp_min(0.0)[..., None] * v

    with lens.intervene(model, [add, capped]):
        got = model(tokens)
    assert torch.allclose(got, model.run_with_hooks(tokens, fwd_hooks=[("blocks.1.hook_resid_post", manual)]),
                          atol=1e-5)
    assert all(not hp.fwd_hooks for hp in model.hook_dict.values())


# --- batched generation -------------------------------------------------------------------------------------------

def _alone(model, prompt_ids, interventions, new, stops):
    """One unpadded generate of one prompt under the interventions, cut at the first stop."""
    with lens.intervene(model, interventions):
        out = model.generate(torch.tensor([prompt_ids]), max_new_tokens=new, do_sample=False, verbose=False,
                             stop_at_eos=True, eos_token_id=stops)[0, len(prompt_ids):].tolist()
    return out[:next((i for i, t in enumerate(out) if t in stops), len(out))]


def test_generate_grid_equals_looped_single_runs(model, transcripts):
    subs = {f"agent{a}": lens.find_agent_subspace(model, a, transcripts=transcripts, layers=[1]) for a in (1, 2)}
    arms = {**subs, "capped": lens.Cap(subs["agent1"], 0.0)}
    prompts = ["Problem: 3+4*5\n\n", "Problem: 12+2*3-1\n\n<|Round 1 - Initial Solutions|>", "7"]
    alphas = [-6.0, 0.0, 6.0]
    stops = [model.tokenizer.eos_token_id, model.tokenizer.convert_tokens_to_ids("<|endofdebate|>")]
    out = lens.generate(model, prompts, interventions=arms, alphas=alphas, max_new_tokens=10, stop=stops,
                        batch_size=7)
    assert len(out.texts) == 2 * 3 * 3 + 3 and out.arm.count("capped") == 3 and out.alpha[-1] is None
    for row, (arm, a, j) in enumerate(zip(out.arm, out.alpha, out.prompt)):
        its = [lens.Add(subs[arm], a)] if arm in subs else [arms["capped"]]
        assert out.tokens[row] == _alone(model, out.prompt_tokens[row], its, 10, stops), (arm, a, j)
    assert out.select(arm="agent2", alpha=0.0) == out.select(arm="agent1", alpha=0.0)
    assert out.select(arm="agent2", alpha=6.0) != out.select(arm="agent2", alpha=0.0)


def test_generate_bad_inputs(model):
    sub = lens.AgentSubspace(basis=_unit(1, 12), layer=1, hook_name=lens.hook_name(1), position="end", method="x")
    cases = [
        (dict(prompts="one prompt"), "prompts is a single string; pass a list of prompts (e.g. [prompt])"),
        (dict(interventions=sub, alphas=[0.0, float("nan")]),
         "alphas must be finite numbers; got [0.0, nan] (NaN or inf is never a valid α)"),
        (dict(alphas=[1.0]), "alphas scale the strength of Add interventions, but no arm has one"),
        (dict(interventions=lens.Add(sub, [1.0, 2.0]), alphas=[1.0]),
         "lens.generate sets each row's strength itself: give an Add a number (k=1) or one value per direction "
         "([1]), not per-row strengths"),
    ]
    for kwargs, message in cases:
        with pytest.raises(lens.LensInputError) as e:
            lens.generate(model, kwargs.pop("prompts", ["hi"]), max_new_tokens=2, **kwargs)
        assert _message(e) == message


def test_rate_suppression_rejects_non_finite_alphas(model):
    sub = lens.AgentSubspace(basis=_unit(1, 13), layer=1, hook_name=lens.hook_name(1), position="end", method="x")
    with pytest.raises(lens.LensInputError) as e:
        lens.rate_suppression(model, sub, alphas=[float("nan"), 1.0], prompts=["hi"], trait=lambda q, r: 0.0)
    assert _message(e) == "alphas must be finite numbers; got [nan, 1.0] (NaN or inf is never a valid α)"


# --- input hygiene of the readers ---------------------------------------------------------------------------------

def test_text_is_never_taken_as_a_path(model):
    with pytest.raises(lens.LensInputError) as e:
        lens.find_agent_subspace(model, 1, transcripts="some text")
    assert _message(e) == ("transcripts 'some text' is not a path to an existing file; pass JSONL file paths or "
                           "Transcript objects (text is never read as a path)")


def test_reader_errors_name_file_and_line(tmp_path, transcripts):
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n")
    bad_bytes = tmp_path / "latin1.jsonl"
    good = json.dumps(transcripts[0].to_dict())
    bad_bytes.write_bytes(good.encode() + b"\n" + b'{"question": "caf\xe9"}\n')
    broken = tmp_path / "broken.jsonl"
    broken.write_text(good + "\n" + '{"a": 1 "b": 2}' + "\n")
    wrong = tmp_path / "wrong.jsonl"
    wrong.write_text('{"question": "q"}\n')
    paper = tmp_path / "paper.json"
    paper.write_text('[{"question": "q",\n "debate_trace": }]')
    cases = [
        (lambda: lens.read_jsonl(empty), f"{empty}: the file is empty; expected one JSON transcript record per line"),
        (lambda: lens.read_jsonl(bad_bytes),
         f"{bad_bytes} line 2: not valid UTF-8 (byte 0xe9 at column 18); save the file as UTF-8"),
        (lambda: lens.read_jsonl(broken),
         f"{broken} line 2: not valid JSON (Expecting ',' delimiter, column 9)"),
        (lambda: lens.read_jsonl(wrong), f"{wrong} line 1: not a transcript record (KeyError: 'turns')"),
        (lambda: lens.read_jsonl(tmp_path / "none.jsonl"),
         f"{tmp_path / 'none.jsonl'}: no such file; expected one JSON transcript record per line"),
        (lambda: lens.read_paper_json(paper), f"{paper} line 2: not valid JSON (Expecting value, column 18)"),
    ]
    for call, message in cases:
        with pytest.raises(lens.DebateFormatError) as e:
            call()
        assert _message(e) == message
        assert isinstance(e.value, lens.LensInputError)


def test_bridge_reads_every_site_and_steers_like_hooked(tiny_model_dirs, model):
    bridge = lens.load_model(tiny_model_dirs["llama"], backend="bridge")
    texts = ["Problem: 3+4*5\n\nstep done", "Problem: 1+2\n\nCRITIQUE it ok"]
    for site in lens.SITES:  # keyed on the hook point: the bridge reports its own names (blocks.L.hook_out, ...)
        a = lens.collect_activations(model, texts, site=site).acts
        assert torch.allclose(a, lens.collect_activations(bridge, texts, site=site).acts, atol=1e-4), site
    add = lens.Add(_unit(1, 14), 1.0, layers=1)
    runs = [lens.generate(m, ["Problem: 3+4*5\n\n"], interventions=add, alphas=[0.0, 6.0], max_new_tokens=6,
                          stop=[]).tokens for m in (model, bridge)]
    assert runs[0] == runs[1] and runs[0][0] != runs[0][1]


@pytest.mark.parametrize("name", ["sites", "interventions", "fitting", "generation", "subspace", "activations",
                                  "probes", "rating", "debate_format"])
def test_docstring_examples_that_need_no_model_run(name):
    import doctest
    import importlib

    result = doctest.testmod(importlib.import_module(f"lens.{name}"), extraglobs={"lens": lens},
                             optionflags=doctest.ELLIPSIS)
    assert result.failed == 0


def test_sampled_generation_is_reproducible_by_seed(model):
    kw = dict(interventions=lens.Add(_unit(1, 15), 1.0, layers=1), alphas=[0.0, 3.0], max_new_tokens=8,
              temperature=1.0, stop=[], batch_size=3)
    a, b = (lens.generate(model, ["Problem: 1+2\n\n", "7"], seed=5, **kw) for _ in range(2))
    assert a.tokens == b.tokens and a.tokens != lens.generate(model, ["Problem: 1+2\n\n", "7"], seed=6, **kw).tokens


def test_readme_lens_operations_block_runs(tiny_model_dirs, monkeypatch, capsys):
    import re
    from pathlib import Path

    readme = Path(__file__).resolve().parents[1] / "README.md"
    section = readme.read_text().split("## lens operations: your own spans, one collection, interventions as data")[1]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    monkeypatch.setenv("MODEL_DIR", tiny_model_dirs["llama"])
    scope: dict = {}
    exec(compile(code, str(readme), "exec"), scope)
    assert scope["bob"].agent == "bob" and scope["bob"].layer in (0, 2) and len(scope["probe"].accuracy) == 2
    assert scope["cruel"].method == "contrastive_diff_means" and len(scope["out"].texts) == 6
    assert capsys.readouterr().out.splitlines()[-1] == repr(scope["out"].select(arm="bob", alpha=4.0))
