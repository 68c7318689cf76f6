"""The toy base model: built by `build_base` on the smoke preset, reloadable offline, cached on rerun."""

import json
import random

import pytest
from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback

from lens.debate_format import DEBATE_TAGS
from training.presets import load_preset
from training.prompts import ARITHMETIC, round1_messages, round2_messages
from training.tasks import TRAITS, arithmetic_split, trait_split
from training.teacher import Teacher
from training.tokenizer import IM_END
from training.presets import PresetError
from training.toy_base import (BaseConfig, Example, build_base, generate, pretraining_rows, round2_check_problems,
                                sections, teacher_examples, tokenize_examples, train_base)


@pytest.fixture(scope="module")
def tok(smoke_base_dir):
    return AutoTokenizer.from_pretrained(str(smoke_base_dir))


def test_base_loads_offline_with_tags_and_chat_stop(smoke_base_dir, tok):
    model = AutoModelForCausalLM.from_pretrained(str(smoke_base_dir))
    assert model.config.model_type == "llama" and model.config.vocab_size == len(tok)
    assert "<|Agent 1 Solution|>" in tok.get_vocab()
    assert tok.convert_tokens_to_ids(IM_END) in model.generation_config.eos_token_id
    prov = json.loads((smoke_base_dir / "provenance.json").read_text())
    assert prov["kind"] == "base" and prov["preset"] == "smoke" and prov["spec"]["d_model"] == 64
    assert [p["phase"] for p in prov["phases"]] == [0, 1]  # the smoke preset has one warm restart
    assert all(sum(p["train_examples_by_kind"].values()) == 600 for p in prov["phases"])
    assert [p["drills"] for p in prov["phases"]] == [100, 300]  # phase_mix overrides the second phase's drills
    assert prov["train_tokens"] == sum(p["train_tokens"] for p in prov["phases"]) > 0


def test_base_eval_has_every_measurement(smoke_base_dir):
    ev = json.loads((smoke_base_dir / "base_eval.json").read_text())
    assert set(ev["accuracy"]) == {"neutral", "analyst", "critic", "programmer", "majority_of_3"}
    assert set(ev["adherence"]) >= {"analyst", "critic", "programmer", "evil", "helpful", "honest", "hallucinating"}
    assert all(0 <= v <= 1 for v in [*ev["accuracy"].values(), *ev["adherence"].values(), *ev["round2"].values()])
    assert set(ev["traits"]) == {"evil", "hallucination"} and ev["build_seconds"] > 0
    assert ev["teacher_accuracy"]["majority"] > 0.5


def test_generate_left_pads_its_batches_and_leaves_the_tokenizer_as_it_was(smoke_base_dir, tok):
    model = AutoModelForCausalLM.from_pretrained(str(smoke_base_dir)).eval()
    chats = [round1_messages("neutral", "1+2*3+4-5*6"), round1_messages("analyst", "9-8")]
    tok.padding_side = "right"
    together = generate(model, tok, chats, batch_size=2, max_new_tokens=12)
    assert tok.padding_side == "right"
    assert together == [generate(model, tok, [c], batch_size=1, max_new_tokens=12)[0] for c in chats]


def test_trait_revisions_are_labelled_apart_from_arithmetic_revisions():
    task = sections(load_preset("smoke"))[0]
    cfg = BaseConfig(n_round1=0, n_round2=2, n_trait=0, n_trait_round2=3)
    examples = teacher_examples(task, Teacher(), cfg, seed=0)
    kinds = sorted(e.kind for e in examples)
    assert kinds == ["round2", "round2", "trait_round2", "trait_round2", "trait_round2"]
    questions = {q.question for t in TRAITS for q in trait_split(task, t, "train", 0)}
    for e in examples:  # an advice question in the last user turn exactly when the example is a trait revision
        user = next(m["content"] for m in reversed(e.messages) if m["role"] == "user")
        assert any(q in user for q in questions) == (e.kind == "trait_round2")


def test_tokenizer_keeps_digits_and_tags_whole(tok):
    assert tok.tokenize("12+345*6") == ["1", "2", "+", "3", "4", "5", "*", "6"]
    for tag in (*DEBATE_TAGS, IM_END, "<|im_start|>"):
        assert tok.tokenize(tag) == [tag]


def test_every_assistant_turn_is_trained_and_nothing_else(tok):
    p = arithmetic_split(sections(load_preset("smoke"))[0], "train", 0)[0]
    rng, teacher = random.Random(0), Teacher()
    own, other = teacher.respond("analyst", p, rng=rng), teacher.respond("critic", p, rng=rng)
    revision = teacher.respond("analyst", p, own=own, others=[other, other], rng=rng)
    ex = Example([*round2_messages("analyst", p.question, own, [other, other], ARITHMETIC),
                  {"role": "assistant", "content": revision}], "round2")
    row = tokenize_examples(tok, [ex])[0]
    full = tok(tok.apply_chat_template(ex.messages, tokenize=False), add_special_tokens=False)["input_ids"]
    assert row["input_ids"] == full[:len(row["input_ids"])]
    trained = [t for t, lab in zip(row["input_ids"], row["labels"]) if lab != -100]
    assert tok.decode(trained) == own + IM_END + revision + IM_END  # the own round-1 turn, then the revision
    assert len(row["input_ids"]) == len(full) - 1  # all of it but the template's trailing newline
    first_loss = row["labels"].index(next(lab for lab in row["labels"] if lab != -100))
    assert tok.decode(row["input_ids"][:first_loss]).endswith("assistant\n")  # the prompt carries no loss


def test_training_data_never_shows_a_test_problem():
    task, teacher_cfg, _, cfg = sections(load_preset("smoke"))
    test_questions = {p.question for p in arithmetic_split(task, "test", 0)}
    examples = teacher_examples(task, Teacher(teacher_cfg), cfg, 0)
    shown = " ".join(m["content"] for e in examples for m in e.messages if m["role"] == "user")
    assert {e.kind for e in examples} == {"round1", "round2", "trait", "trait_round2"}
    assert not any(q in shown for q in test_questions)


def test_pretraining_rows_pack_solutions_and_correct_drills(tok):
    task = sections(load_preset("smoke"))[0]
    rows = pretraining_rows(tok, task, 30, 128, seed=0, n_drills=200)
    assert all(len(r["input_ids"]) <= 128 and r["labels"] == r["input_ids"] for r in rows)
    pieces = tok.decode([i for r in rows for i in r["input_ids"]]).split(tok.eos_token)
    drills = [p for p in pieces if "=" in p and "Problem" not in p]
    assert len(drills) == 200 and sum("Problem: " in p for p in pieces) == 30
    for d in drills:
        left, v = d.split("=")
        w, y = left.split("-", 1)
        assert int(w) - int(y) == int(v), d


def test_phase_mix_is_validated(tmp_path):
    text = load_preset("smoke").path.read_text()
    for mix, message in [("[{}, { n_apples = 3 }]", r"unknown key\(s\) \['n_apples'\]"),
                         ("[{}, {}, {}]", "3 entries but there are only 2 phases")]:
        bad = tmp_path / "bad.toml"
        bad.write_text(text.replace("phase_mix = [{}, { n_drills = 300 }]", f"phase_mix = {mix}"))
        with pytest.raises(PresetError, match=message):
            sections(load_preset(bad))


def test_repair_mix_and_round2_bar_are_validated():
    with pytest.raises(PresetError, match=r"repair_mix entry .* unknown key\(s\) \['n_apples'\]"):
        sections(load_preset("smoke", ["base.repair_mix={ n_apples = 3 }"]))
    with pytest.raises(PresetError, match="round2_bar"):
        sections(load_preset("smoke", ["base.round2_bar=1.5"]))


def test_round2_check_problems_are_held_out_from_every_phase_and_the_test_split():
    preset = load_preset("smoke", ["base.round2_bar=0.8", "base.max_repairs=2", "base.n_round2_check=50"])
    task, _, _, cfg = sections(preset)
    held_out = {p.question for p in round2_check_problems(preset)}
    assert len(held_out) == 50
    assert not held_out & {p.question for p in arithmetic_split(task, "test", 0)}
    for i in range(1 + len(cfg.restart_lrs) + cfg.max_repairs):  # two phases and two possible repairs
        assert not held_out & {p.question for p in arithmetic_split(task, "train", 100 * i)}
    with pytest.raises(ValueError, match="n_round2_check is 5000 but only .* of \\[task\\] n_train 2000"):
        round2_check_problems(load_preset("smoke", ["base.n_round2_check=5000"]))


def test_a_base_below_its_round2_bar_gets_repair_phases_and_resumes_them(tmp_path):
    mix = "{ n_round1 = 40, n_round2 = 20, n_trait = 0, n_trait_round2 = 0, n_pretrain = 0, n_drills = 0 }"
    small = ["base.n_round1=40", "base.n_round2=10", "base.n_trait=10", "base.n_trait_round2=0", "base.n_pretrain=20",
             "base.n_drills=20", "base.phase_mix=[]"]  # the loop is under test, not the model's quality
    preset = load_preset("smoke", [*small, "base.round2_bar=1.0", "base.max_repairs=1", "base.n_round2_check=10",
                                   "base.repair_lr=5e-4", f"base.repair_mix={mix}"])
    logs: list[str] = []
    info = train_base(preset, tmp_path, log=logs.append)
    assert [p["phase"] for p in info["phases"]] == [0, 1, 2] and info["repairs"] == 1
    repair = info["phases"][2]
    assert repair["repair"] and repair["lr"] == 5e-4 and repair["data_seed"] == 200
    assert repair["train_examples_by_kind"] == {"round1": 40, "round2": 20, "trait": 0, "trait_round2": 0}
    checks = info["round2_checks"]
    assert [c["after_phase"] for c in checks] == [1, 2] and all(c["n"] == 10 and c["accuracy"] < 1 for c in checks)
    assert "below the bar 100%; repair phase 2 follows" in logs[0]
    assert "no repair left (max_repairs 1)" in logs[1] and len(logs) == 2
    # a second call finds every phase checkpointed: nothing is trained again, the checks read the same
    steps = _CountSteps()
    again = train_base(preset, tmp_path, callbacks=[steps], log=lambda _: None)
    assert steps.n == 0 and again["phases"] == info["phases"] and again["round2_checks"] == checks


class _CountSteps(TrainerCallback):
    def __init__(self) -> None:
        self.n = 0

    def on_step_end(self, args, state, control, **kwargs):
        self.n += 1


def test_second_build_is_skipped(smoke_run_dir, smoke_base_dir, capsys):
    before = (smoke_base_dir / "model.safetensors").stat().st_mtime_ns
    assert build_base(load_preset("smoke"), smoke_run_dir) == smoke_base_dir
    assert "[base] cached" in capsys.readouterr().out
    assert (smoke_base_dir / "model.safetensors").stat().st_mtime_ns == before


class _StopInSecondPhase(TrainerCallback):
    """Kills training at the first step of the second phase, as a crash or Ctrl-C would."""

    def __init__(self) -> None:
        self.phases = 0

    def on_train_begin(self, args, state, control, **kwargs):
        self.phases += 1

    def on_step_end(self, args, state, control, **kwargs):
        if self.phases == 2:
            raise KeyboardInterrupt


def test_killed_build_resumes_from_the_last_finished_phase(tmp_path):
    preset = load_preset("smoke")
    assert len(sections(preset)[3].restart_lrs) == 1
    with pytest.raises(KeyboardInterrupt):
        train_base(preset, tmp_path, callbacks=[_StopInSecondPhase()])
    first = json.loads((tmp_path / "resume" / "phase_0" / "phase.json").read_text())
    assert not (tmp_path / "resume" / "phase_1" / "phase.json").exists()
    info = train_base(preset, tmp_path)
    assert [p["phase"] for p in info["phases"]] == [0, 1]
    assert info["phases"][0] == first  # phase 0 was loaded from its checkpoint, not trained again
    assert info["phases"][1]["lr"] == 1e-3 and info["phases"][1]["data_seed"] != first["data_seed"]


def test_stages_built_by_an_older_recipe_are_stale_not_reused(tmp_path):
    """What the code writes is versioned in the fingerprints: a base or teacher debates built from older teacher
    turns, DebateGPT from older rows, or an experiment measured the old way is rebuilt, with the reason."""
    from analyses.reproduce import experiment_reads
    from training.pipeline import Run
    from training.stages import fingerprint, flatten_keys, stale_reasons
    from training.toy_base import base_keys

    preset = load_preset("smoke")
    run = Run(preset, tmp_path, log=lambda _: None)
    cases = [(base_keys(preset), "teacher_turns"), (run.reads("debates", "main")["keys"], "teacher_turns"),
             (run.reads("debategpt")["keys"], "debategpt_rows"),
             (experiment_reads("malicious", preset, tmp_path)["keys"], "version"),
             (experiment_reads("agent_subspaces", preset, tmp_path)["keys"], "version")]
    for keys, name in cases:
        now = keys[name]
        old = {"keys": flatten_keys({**keys, name: now - 1}), "inputs": {}}
        assert stale_reasons(old, fingerprint(keys)) == [f"{name} {now - 1} -> {now}"]
