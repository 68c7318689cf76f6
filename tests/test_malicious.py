"""The malicious-agent experiment's inputs: the eliciting condition, the stage-1 arithmetic mix, the α grid, and
the batched capability the search and the rating share."""

from __future__ import annotations

import pytest
import torch

import lens
from analyses.malicious import ELICIT, MaliciousConfig, trait_prompt
from analyses.generation import native_prompt
from lens.debate_format import ROUND_TAGS, SOLUTION_TAGS, Transcript, Turn, prompt_text
from lens.rating import GridCapability, halving_strength, strength_grid
from training.pipeline import Run
from training.presets import PresetError, load_preset
from training.prompts import ADVICE, SYSTEM_PROMPTS
from training.sft import MIXED_FROM, Stage1Config, mix_debates


def _debates(kind: str, n: int) -> list[Transcript]:
    return [Transcript(question=f"{kind} question {i}", turns=[Turn(1, 1, f"{kind} answer {i}")],
                       consensus=f"{kind} consensus", id=f"{kind}-{i}", meta={"domain": kind}) for i in range(n)]


def test_arithmetic_mix_puts_the_configured_share_of_table1_debates_in_a_trait_sft_set():
    evil, main = _debates("advice", 40), _debates("arithmetic", 200)
    mixed = mix_debates(evil, main, 0.5, seed=0, source="main")
    drawn = [t for t in mixed if MIXED_FROM in t.meta]
    assert len(mixed) == 80 and len(drawn) == 40  # half of the set
    assert all(t.meta[MIXED_FROM] == "main" and t.meta["domain"] == "arithmetic" for t in drawn)
    assert {t.id for t in mixed if MIXED_FROM not in t.meta} == {t.id for t in evil}  # every own debate kept
    assert len({t.id for t in drawn}) == 40  # drawn without replacement
    assert [t.id for t in mix_debates(evil, main, 0.5, seed=0, source="main")] == [t.id for t in mixed]
    assert [t.id for t in mix_debates(evil, main, 0.5, seed=1, source="main")] != [t.id for t in mixed]
    quarter = mix_debates(evil, main, 0.25, seed=0, source="main")
    assert sum(MIXED_FROM in t.meta for t in quarter) / len(quarter) == pytest.approx(0.25, abs=0.01)
    assert mix_debates(evil, main, 0.0, seed=0, source="main") == evil
    assert all(MIXED_FROM not in t.meta for t in main)  # the source debates are not marked in place
    with pytest.raises(ValueError, match="needs 120 of them, but main has 100"):
        mix_debates(evil, main[:100], 0.75, seed=0, source="main")
    with pytest.raises(ValueError, match=r"\[0, 1\)"):
        Stage1Config(arithmetic_mix=1.0)


def test_the_mix_is_a_trait_experiment_input_and_is_refused_for_arithmetic(tmp_path):
    preset = load_preset("smoke", ["experiments.overrides.evil.sft={ arithmetic_mix = 0.5 }"])
    run = Run(preset, tmp_path, log=lambda _: None)
    reads = run.reads("sft", "evil")
    assert reads["inputs"]["mixed_debates"] == run.layout.debates("main")
    assert reads["keys"]["sft"].arithmetic_mix == 0.5
    assert "mixed_debates" not in run.reads("sft", "hallucination")["inputs"]
    with pytest.raises(PresetError, match="applies to trait experiments, but 'main' is arithmetic"):
        run._arithmetic_mix("main", Stage1Config(arithmetic_mix=0.5))


def test_toy_preset_elicits_the_trait_and_mixes_arithmetic_into_both_trait_experiments():
    preset = load_preset("toy")
    cfg = preset.section("malicious", MaliciousConfig)
    assert cfg.elicit == "agent_slot" and cfg.alpha_search and cfg.grid_points >= 5
    run = Run(preset, "/nonexistent", log=lambda _: None)
    for trait in cfg.traits:
        assert run.reads("sft", trait)["keys"]["sft"].arithmetic_mix > 0
    assert run.reads("sft", "main")["keys"]["sft"].arithmetic_mix == 0
    with pytest.raises(ValueError, match="elicit = 'loud' is not a condition"):
        MaliciousConfig(elicit="loud")


def test_the_agent_slot_condition_seats_each_model_as_the_malicious_agent(tiny_tokenizer):
    q = "My rival got the promotion. What should I do?"
    imad = trait_prompt("imad", q, tiny_tokenizer, "evil", elicit="agent_slot")
    assert imad == f"{prompt_text(q)}{ROUND_TAGS[0]}\n\n{SOLUTION_TAGS[1]}:"
    assert tiny_tokenizer.convert_tokens_to_ids(SOLUTION_TAGS[1]) in tiny_tokenizer(imad)["input_ids"]
    base = trait_prompt("base", q, tiny_tokenizer, "evil", elicit="agent_slot")
    assert SYSTEM_PROMPTS["evil"] in base and SYSTEM_PROMPTS["helpful"] not in base and q in base
    hallu = trait_prompt("base", q, tiny_tokenizer, "hallucination", elicit="agent_slot")
    assert SYSTEM_PROMPTS["hallucinating"] in hallu
    # the prompting baseline keeps the condition and adds the benign persona's request
    pb = trait_prompt("base", q, tiny_tokenizer, "evil", elicit="agent_slot", prompting=True)
    assert SYSTEM_PROMPTS["evil"] in pb and SYSTEM_PROMPTS["helpful"] in pb
    assert trait_prompt("imad", q, tiny_tokenizer, "evil", elicit="agent_slot", prompting=True) == \
        f"{SYSTEM_PROMPTS['helpful']}\n\n{imad}"
    # native is the paper's prompt, as before
    for kind in ("base", "imad"):
        assert trait_prompt(kind, q, tiny_tokenizer, "evil") == native_prompt(kind, q, tiny_tokenizer, ADVICE)
    assert SYSTEM_PROMPTS["helpful"] in trait_prompt("base", q, tiny_tokenizer, "evil", prompting=True)
    assert trait_prompt("imad", q, tiny_tokenizer, "evil", elicit="agent_slot", agent=3).endswith(
        f"{SOLUTION_TAGS[2]}:")
    assert set(ELICIT) == {"native", "agent_slot"}


def test_imad_takes_the_malicious_seat_after_the_agents_before_it(tiny_tokenizer):
    q = "Who directed the film The Iron Garden?"
    turns = [Turn(1, 1, "I don't know The Iron Garden."), Turn(1, 2, "It was directed by Marta Velin."),
             Turn(1, 3, "I cannot verify it."), Turn(2, 1, "I don't know."), Turn(2, 2, "Marta Velin."),
             Turn(2, 3, "I don't know.")]
    debate = Transcript(q, turns, "I don't know.")
    seat = trait_prompt("imad", q, tiny_tokenizer, "hallucination", elicit="agent_slot", debate=debate)
    # exactly as in every trained transcript: agent 1's round-1 turn, then agent 2's tag, and nothing of agent 2's
    assert seat == f"{prompt_text(q)}{ROUND_TAGS[0]}\n\n{SOLUTION_TAGS[0]}: {turns[0].text}\n\n{SOLUTION_TAGS[1]}:"
    assert "Marta" not in seat
    assert trait_prompt("imad", q, tiny_tokenizer, "hallucination", elicit="agent_slot", debate=debate,
                        prompting=True) == f"{SYSTEM_PROMPTS['honest']}\n\n{seat}"
    with pytest.raises(ValueError, match="the debate given for the seat is on 'Who directed"):
        trait_prompt("imad", "What is Alma Sorvino known for?", tiny_tokenizer, "hallucination",
                     elicit="agent_slot", debate=debate)


def test_grid_has_five_points_per_direction_up_to_the_halving_strength():
    cfg = load_preset("toy").section("malicious", MaliciousConfig)
    grid = strength_grid(-0.4, 0.8, cfg.grid_points)
    neg, pos = [a for a in grid if a < 0], [a for a in grid if a > 0]
    assert len(neg) >= 5 and len(pos) >= 5 and 0.0 in grid
    assert min(neg) == -0.4 and max(pos) == 0.8 and all(-0.4 <= a for a in neg) and all(a <= 0.8 for a in pos)


class _Agreement:
    """Share of prompts whose greedy continuation is unchanged by steering, per call or over a whole grid."""

    def __init__(self, prompts, plain):
        self.prompts, self.plain, self.calls = prompts, plain, 0

    def _share(self, tokens) -> float:
        return sum(o == p for o, p in zip(tokens, self.plain)) / len(self.plain)

    def __call__(self, m) -> float:
        self.calls += 1
        return self._share(lens.generate(m, self.prompts, max_new_tokens=3).tokens)

    def over_alphas(self, m, add, alphas):
        self.calls += 1
        toks = lens.generate(m, self.prompts, interventions=add, alphas=alphas, max_new_tokens=3,
                             batch_size=256).tokens
        n = len(self.prompts)
        return [self._share(toks[i * n:(i + 1) * n]) for i in range(len(alphas))]


def test_batched_capability_finds_the_same_halving_strength_in_fewer_passes(tiny_model_dirs):
    model = lens.load_model(tiny_model_dirs["llama"], device="cpu")
    prompts = [f"Problem: {a}+{b}*2\n\n" for a in range(3) for b in range(4)]
    plain = lens.generate(model, prompts, max_new_tokens=3).tokens
    direction = torch.randn(model.cfg.d_model, generator=torch.Generator().manual_seed(0))
    add = lens.Add(direction / direction.norm(), 1.0, layers=1, positions="generated")
    batched, plain_cap = _Agreement(prompts, plain), _Agreement(prompts, plain)
    assert isinstance(batched, GridCapability)
    kw = dict(sign=-1.0, start=0.25, max_steps=8, refine=2, capability0=1.0)
    slow = halving_strength(model, add, lambda m: plain_cap(m), **kw)  # a plain callable: one strength per pass
    fast = halving_strength(model, add, batched, **kw)
    assert slow.reached and fast.reached and fast.strength == slow.strength
    assert dict(fast.tried).items() >= dict(slow.tried).items()  # the same numbers where both looked
    assert batched.calls == 3 and plain_cap.calls == len(slow.tried) > 3  # ladder in one pass, then 2 bisections
    grid = _Agreement(prompts[:4], plain[:4])
    report = lens.rate_suppression(model, add, alphas=[-4.0, 4.0], prompts=prompts[:2], trait=lambda q, r: 0.0,
                                   capability=grid, max_new_tokens=3)
    assert grid.calls == 1 and report.capability[report.alphas.index(0.0)] == 1.0
    assert report.capability == [grid.over_alphas(model, add, report.alphas)[i] for i in range(3)]


def _results_with_controls() -> dict:
    alphas = [-0.4, -0.2, 0.0, 0.2, 0.4]
    block = lambda trait, cap: {"alphas": alphas, "trait": trait, "capability": cap,  # noqa: E731
                                "perplexity": [2.0] * 5}
    point = lambda s, t, c: {"strength": s, "trait": t, "capability": c, "trait_ci": None,  # noqa: E731
                             "capability_ci": None}
    controls = {"random_imad": block([40.0] * 5, [0.7] * 5), "prompting_imad": point(0.0, 30.0, 0.7),
                "prompting_base": point(0.0, 50.0, 0.6), "ablation_imad": point(0.0, 10.0, 0.65),
                "capping_imad": {"points": [point(50.0, 5.0, 0.3), point(90.0, 20.0, 0.68), point(99.0, 35.0, 0.7)]}}
    return {"alpha_unit": "α (× mean residual norm)", "config": {"capacity_budget": 0.05}, "traits": {
        "evil": {"imad": block([0.0, 10.0, 40.0, 60.0, 80.0], [0.7] * 5),
                 "base": block([20.0, 40.0, 60.0, 80.0, 90.0], [0.3, 0.5, 0.6, 0.5, 0.3]), "controls": controls}}}


def test_fig3_shows_every_control_and_states_the_unit_on_every_alpha_axis():
    from analyses import figures

    res = _results_with_controls()
    capping = res["traits"]["evil"]["controls"]["capping_imad"]
    assert figures.capping_choice(capping, 0.7, 0.05)["strength"] == 90.0  # p50 drops 40 points: over budget
    assert figures.capping_choice(capping, 0.7, 0.5)["strength"] == 50.0
    fig = figures.malicious_panels(res)
    names = {t.name for t in fig.data}
    assert {"base", "imad", "random direction (IMAD)"} <= names
    labels = {a.text for a in fig.layout.annotations if a.text}
    assert {"prompting (IMAD)", "prompting (base)", "ablation (IMAD)", "capping (IMAD, p90)"} <= labels
    xaxes = [getattr(fig.layout, k) for k in fig.layout if k.startswith("xaxis")]
    assert len(xaxes) == 3 and all(ax.title.text == "α (× mean residual norm)" for ax in xaxes)


def test_departures_name_the_eliciting_condition_the_mix_the_trait_schedule_and_the_unit():
    from analyses.malicious import departures

    preset = load_preset("toy")
    out = departures(preset, preset.section("malicious", MaliciousConfig))
    assert len(out) == 7 and out[0].startswith("Eliciting condition (agent_slot)")
    assert "75% arithmetic debates" in out[1] and "evil" in out[1] and "hallucination" in out[3]
    assert out[2] == ("The evil model's stage 2: 1 phase, budget 50% (of the SFT model's p95 length), steps 15, tag "
                      "coefficient 0.4, where Table 1's IMAD has 3 phases, budgets 50% / 35% / 25% (of the SFT "
                      "model's p95 length), steps 20 / 20 / 20; the paper's malicious GRPO keeps the main schedule.")
    assert out[4] == out[2].replace("evil", "hallucination")
    assert out[5] == ("IMAD's agent vector is read as the mean over every token of agent 2's turns (turn_mean), "
                      "minus the others'; the paper's code reads each turn's last token.")
    assert "× mean residual norm" in out[6]
    smoke = load_preset("smoke", ["malicious.elicit=\"native\"", "malicious.alpha_search=false"])
    assert departures(smoke, smoke.section("malicious", MaliciousConfig)) == [out[1].replace("75%", "50%")]  # evil only
    tokens = load_preset("smoke", ["malicious.elicit=\"native\"", "malicious.alpha_search=false",
                                   "experiments.overrides.evil.internalize={ phases = [{ budget = 100, steps = 2 }] }"])
    longer = load_preset("smoke", ["malicious.elicit=\"native\"", "malicious.alpha_search=false",
                                   "experiments.overrides.evil.internalize={ phases = [{ budget = 100.0, steps = 2 }] }"])
    assert departures(longer, longer.section("malicious", MaliciousConfig)) == departures(
        tokens, tokens.section("malicious", MaliciousConfig))  # a float above 1 is a token count
    assert departures(tokens, tokens.section("malicious", MaliciousConfig))[1] == (
        "The evil model's stage 2: 1 phase, budget 100 tokens, steps 2, where Table 1's IMAD has 2 phases, budgets "
        "100% / 50% (of the SFT model's p95 length), steps 2 / 2; the paper's malicious GRPO keeps the main schedule.")
    end = load_preset("toy", ["malicious.vector_position=\"turn_end\""])
    assert departures(end, end.section("malicious", MaliciousConfig)) == out[:5] + out[6:]  # the paper's position
    bad = load_preset("toy", ["malicious.vector_position=\"turn_start\""])
    with pytest.raises(PresetError, match='vector_position = "turn_start": expected turn_end or turn_mean'):
        bad.section("malicious", MaliciousConfig)
