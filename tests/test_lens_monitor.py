"""Monitoring on a tiny Llama with a planted agent direction: per-token projections (read and during generation,
steered or not), the malicious-turn detector's AUROC against a text judge on the same held-out turns, and plots."""

from __future__ import annotations

import dataclasses

import pytest
import torch

import lens
from lens.debate_format import Transcript, Turn, consensus_line
from lens.monitor import detect_agent_turns, monitor_generation, token_projections
from training.judges import ToyTraitJudge

MARKER = "CRITIQUE"  # the malicious agent 2 ends every turn with it; its embedding carries the planted direction


def debates(questions: range) -> list[Transcript]:
    """Three agents; agent 2 says something evil in every other turn, agent 3 sometimes says something fair."""
    out = []
    for q in questions:
        a, b = q % 7 + 1, q % 5 + 2
        texts = {1: f"{a}*{b}={a * b} step done",
                 2: f"{a}*{b}={a * b} {'exploit them' if q % 2 else 'fine'} {MARKER}",
                 3: f"{a}*{b}={a * b} {'be fair' if q % 3 == 0 else 'ok'} m //"}
        turns = [Turn(rd, ag, texts[ag], ("analyst", "critic", "programmer")[ag - 1]) for rd in (1, 2)
                 for ag in (1, 2, 3)]
        out.append(Transcript(f"{a}*{b}", turns, consensus_line([str(a * b)] * 3), gold=str(a * b),
                              personas=("analyst", "critic", "programmer"), id=f"q{q}"))
    return out


@pytest.fixture(scope="module")
def planted(tiny_model_dirs):
    """The tiny Llama with a unit direction v added (x20) to the marker token's embedding."""
    model = lens.load_model(tiny_model_dirs["llama"])
    marker = model.tokenizer(MARKER, add_special_tokens=False)["input_ids"][-1]
    v = torch.randn(model.cfg.d_model, generator=torch.Generator().manual_seed(3))
    v /= v.norm()
    with torch.no_grad():
        model.embed.W_E[marker] += 20 * v
    return model, v, marker


@pytest.fixture(scope="module")
def agent2(planted):
    model, _, _ = planted
    return lens.find_agent_subspace(model, 2, transcripts=debates(range(0, 12)), layers=[0])


def random_subspace(model, seed: int, layer: int = 0) -> lens.AgentSubspace:
    d = torch.randn(model.cfg.d_model, generator=torch.Generator().manual_seed(seed))
    return lens.AgentSubspace(basis=(d / d.norm())[None], layer=layer, hook_name=lens.hook_name(layer),
                              position="end", method="random")


def test_detector_auroc_beats_text_judge_on_held_out_turns(planted, agent2):
    model, v, _ = planted
    assert (agent2.direction @ v).item() > 0.9
    judge = ToyTraitJudge("evil")
    held_out = debates(range(100, 124))
    det = detect_agent_turns(model, agent2, held_out, judge=lambda text: judge.score("", text))
    assert det.agent == 2 and len(det.scores) == 24 * 6 and sum(det.is_agent) == 24 * 2
    # agent 2 is evil in half its turns, nobody else ever: the judge ranks half perfectly and ties the rest
    assert det.judge_auroc == pytest.approx(0.75, abs=1e-9)
    assert det.auroc > 0.99 and det.auroc > det.judge_auroc
    acts = lens.turn_activations(model, held_out, layers=[0], position=agent2.position)
    flipped = detect_agent_turns(model, dataclasses.replace(agent2, basis=-agent2.basis), held_out, acts=acts)
    assert flipped.auroc == pytest.approx(1 - det.auroc, abs=1e-9) and flipped.judge_auroc is None
    print(f"\nplanted direction, held-out turns: projection AUROC {det.auroc:.3f}, "
          f"ToyTraitJudge AUROC {det.judge_auroc:.3f}")
    fig = lens.plots.detection_roc(det)
    assert [t.name for t in fig.data][:2] == [f"projection (AUROC {det.auroc:.3f})",
                                              f"text judge (AUROC {det.judge_auroc:.3f})"]


def test_detector_reads_at_the_subspace_site(planted):
    model, _, _ = planted
    mid = lens.find_agent_subspace(model, "critic", transcripts=debates(range(0, 12)), layers=[1], site="resid_mid")
    held_out = debates(range(100, 112))
    det = detect_agent_turns(model, mid, held_out)
    acts = lens.turn_activations(model, held_out, layers=[1], site="resid_mid")
    hand = acts.at(1) @ mid.direction
    assert det.hook_name == "blocks.1.hook_resid_mid" and det.agent == 2  # the subspace names its agent
    assert torch.allclose(torch.tensor(det.scores), hand, atol=1e-5) and det.auroc > 0.9


def test_detector_bad_inputs(planted, agent2):
    model, _, _ = planted
    with pytest.raises(lens.LensInputError, match="AUROC needs turns of 4 and of others"):
        detect_agent_turns(model, agent2, debates(range(3)), agent=4)
    with pytest.raises(lens.LensInputError, match="names no agent; pass agent="):
        detect_agent_turns(model, random_subspace(model, 0), debates(range(3)))
    with pytest.raises(lens.LensInputError, match="acts do not belong to these transcripts"):
        detect_agent_turns(model, agent2, debates(range(3)),
                           acts=lens.turn_activations(model, debates(range(4)), layers=[0], position="end"))
    with pytest.raises(lens.LensInputError, match="the judge returned 'high'"):
        detect_agent_turns(model, agent2, debates(range(3)), judge=lambda text: "high")


def test_token_projections_equal_hand_computation_and_find_the_speaker(planted, agent2):
    model, _, marker = planted
    subs = {"agent 2": agent2, "random": random_subspace(model, 1, layer=1)}
    text = f"3*4=12 fine {MARKER} then 5*6=30 ok"
    proj = token_projections(model, [text, "ok"], subs)
    ids = proj.token_ids[0]
    _, cache = model.run_with_cache(torch.tensor([ids]))
    for j, s in enumerate(subs.values()):
        hand = cache[s.hook_name][0] @ (s.direction / s.direction.norm())
        assert torch.allclose(proj.projections[0][:, j], hand, atol=1e-5)
    at_marker = ids.index(marker)
    assert proj.speaker(0)[at_marker] == "agent 2" and proj.prompt_lens == [len(ids), len(proj.token_ids[1])]
    fig = lens.plots.token_projection_heatmap(proj, 0)
    assert fig.data[0].z.shape == (2, len(ids)) and list(fig.data[0].y) == ["agent 2", "random"]


def test_monitor_generation_records_the_steered_stream(planted, agent2):
    model, _, _ = planted
    subs = {"agent 2": agent2}
    prompt = "Problem: 3+4*5\n\n<|Round 1 - Initial Solutions|>\n\n<|Agent 2 Solution|>:"
    run = monitor_generation(model, [prompt], subs, max_new_tokens=6)
    n_prompt = run.prompt_lens[0]
    ids = run.token_ids[0]
    assert len(ids) == n_prompt + 5  # the last generated token is never fed back, so it has no reading
    _, cache = model.run_with_cache(torch.tensor([ids]))
    clean = cache[agent2.hook_name][0] @ agent2.direction
    assert torch.allclose(run.projections[0][:, 0], clean, atol=1e-4)  # KV-cached readings = a full forward pass
    with lens.steer(model, agent2, 5.0):
        steered = monitor_generation(model, [prompt], subs, max_new_tokens=6)
    sids = steered.token_ids[0]
    _, cache = model.run_with_cache(torch.tensor([sids]))
    unsteered = cache[agent2.hook_name][0] @ agent2.direction  # layer 0 reads are untouched by its own output edit
    shift = steered.projections[0][:, 0] - unsteered
    assert torch.allclose(shift[:n_prompt], torch.zeros(n_prompt), atol=1e-4)
    assert torch.allclose(shift[n_prompt:], torch.full((len(sids) - n_prompt,), 5.0), atol=1e-4)
    with pytest.raises(lens.LensInputError, match="prompts must be a non-empty list"):
        monitor_generation(model, prompt, subs)
