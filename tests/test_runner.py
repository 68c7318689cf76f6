"""Debate runner and backends: early stop, majority filtering, malicious slots, token accounting, shortening."""

import json
import random

import pytest
from transformers import AutoModelForCausalLM

from lens.debate_format import (END_TAG, FULL_CONSENSUS, DebateFormatError, consensus_line, parse_trace,
                                render_trace)
from training.backends import AgentRequest, HFBackend, TeacherBackend
from training.presets import load_preset
from training.prompts import round1_messages, round2_messages
from training.runner import (NO_MAJORITY, DebateConfig, load_debates, run_debates, save_debates, shorten,
                             single_answers, training_transcripts)
from training.tasks import TaskConfig, arithmetic_split, trait_split
from training.teacher import Teacher, TeacherConfig, persona_marks

TASKS = TaskConfig(n_train=300, n_test=50)


@pytest.fixture(scope="module")
def problems():
    return arithmetic_split(TASKS, "train", seed=0)


@pytest.fixture(scope="module")
def teacher(tiny_tokenizer):
    return TeacherBackend(Teacher(), tiny_tokenizer)


@pytest.fixture(scope="module")
def debates(problems, teacher):
    return run_debates(problems, teacher, seed=0)


def _template_len(tok, messages) -> int:
    return len(tok.apply_chat_template(messages, add_generation_prompt=True)["input_ids"])


def test_unanimous_round1_stops_early(problems, tiny_tokenizer):
    clean = TeacherBackend(Teacher(TeacherConfig(slips=False)), tiny_tokenizer)
    records = run_debates(problems[:20], clean, seed=0)
    for r in records:
        assert r.transcript.n_rounds == 1 and r.early_stopped
        assert [(c.round, c.agent) for c in r.calls] == [(1, 1), (1, 2), (1, 3)]
        assert r.transcript.consensus == FULL_CONSENSUS.format(answer=r.transcript.gold)
    full = run_debates(problems[:5], clean, seed=0, early_stop=False)
    assert all(r.transcript.n_rounds == 2 and len(r.calls) == 6 for r in full)


def test_disagreement_goes_to_round2_and_majority_decides(debates):
    for r in debates:
        t = r.transcript
        r1 = [x.answer for x in t.round_turns(1)]
        assert (t.n_rounds == 1) == (r1[0] is not None and len(set(r1)) == 1)
        final = [x.answer for x in t.round_turns(t.n_rounds)]
        line = consensus_line(final)
        assert r.has_majority == (line is not None)
        assert t.consensus == (line if line is not None else NO_MAJORITY)


def test_no_majority_debates_are_flagged_and_dropped(debates):
    dropped = [r for r in debates if not r.has_majority]
    kept = training_transcripts(debates)
    assert dropped, "the teacher should leave some debates without a majority"
    assert len(kept) == len(debates) - len(dropped)
    assert all(t.consensus_answer is not None for t in kept)
    assert not {r.transcript.id for r in dropped} & {t.id for t in kept}


def test_malicious_slot_gets_the_persona(tiny_tokenizer, teacher):
    questions = trait_split(TASKS, "evil", "train", seed=0)[:6]
    records = run_debates(questions, teacher, personas=["helpful"] * 3, malicious={2: "evil"}, domain="advice")
    for r in records:
        t = r.transcript
        assert t.personas == ("helpful", "evil", "helpful") and t.n_rounds == 2
        assert [x.persona for x in t.turns] == ["helpful", "evil", "helpful"] * 2
        assert persona_marks(t.turns[1].text)["evil"] and not persona_marks(t.turns[0].text)["evil"]
        assert t.turns[3].text in t.consensus  # agent 1 (benign) states the majority position
        assert t.meta["malicious"] == {"2": "evil"} and t.meta["trait"] == "evil"
        assert t.turns[0].text in shorten(t, 1, consensus="agent1").consensus
    with pytest.raises(ValueError, match="malicious slot 4 is out of range"):
        run_debates(questions, teacher, malicious={4: "evil"}, domain="advice")


def test_token_accounting_matches_chat_template(debates, tiny_tokenizer):
    r = next(r for r in debates if r.transcript.n_rounds == 2)
    t = r.transcript
    assert r.input_tokens == sum(c.input for c in r.calls) and r.total_tokens == r.input_tokens + r.output_tokens
    r1 = t.round_turns(1)
    for c, turn in zip(r.calls, t.turns):
        if c.round == 1:
            msgs = round1_messages(turn.persona, t.question)
        else:
            others = [x.text for x in r1 if x.agent != turn.agent]
            msgs = round2_messages(turn.persona, t.question, r1[turn.agent - 1].text, others)
        assert c.input == _template_len(tiny_tokenizer, msgs)
        assert c.output == len(tiny_tokenizer(turn.text, add_special_tokens=False)["input_ids"]) + 1


def test_hf_backend_counts_no_padding(tiny_model_dirs, tiny_tokenizer):
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dirs["llama"])
    backend = HFBackend(model=model, tokenizer=tiny_tokenizer, max_new_tokens=40, temperature=3.0, batch_size=16)
    msgs = [round1_messages("neutral", f"{i}+{i}*2" * (1 + i % 3)) for i in range(16)]
    reqs = [AgentRequest("neutral", m[1]["content"], "arithmetic", m) for m in msgs]
    replies = backend.generate(reqs, seed=3)
    raw = backend.chat(msgs, seed=3)
    assert [r.input_tokens for r in replies] == [_template_len(tiny_tokenizer, m) for m in msgs]
    stopped = [c for c in raw if c.output_tokens < 40]
    assert stopped and len(stopped) < len(raw), "want a batch where some rows stop early and others run on"
    for c in raw:
        assert c.output_tokens == len(c.ids)
        assert all(t not in backend.stop_ids for t in c.ids[:-1])
        assert (c.ids[-1] in backend.stop_ids) == (c.output_tokens < 40)


def test_raw_completion_keeps_tags_and_strips_stop_and_pad(tiny_model_dirs, tiny_tokenizer):
    backend = HFBackend(tiny_model_dirs["llama"])
    ids = tiny_tokenizer.convert_tokens_to_ids
    pad, eos = tiny_tokenizer.pad_token_id, tiny_tokenizer.eos_token_id
    tag, end = ids("<|Agent 1 Solution|>"), ids(END_TAG)
    body = tiny_tokenizer(": \\boxed{7}", add_special_tokens=False)["input_ids"]
    c = backend._completion(5, [tag, *body, end, pad, pad], keep_special=True)
    assert c.text == "<|Agent 1 Solution|>: \\boxed{7}" + END_TAG and c.output_tokens == len(body) + 2
    c = backend._completion(5, [*body, eos, pad], keep_special=True)
    assert c.text == ": \\boxed{7}" and c.output_tokens == len(body) + 1
    out = backend.complete(["Problem: 1+2*3+4-5*6\n\n"], 6)
    assert out[0].input_tokens == len(tiny_tokenizer("Problem: 1+2*3+4-5*6\n\n")["input_ids"])


def test_single_answers_and_save_load(debates, problems, teacher, tmp_path):
    singles = single_answers(problems[:10], teacher, "neutral")
    assert all(s.answer is not None and s.input_tokens > 0 for s in singles)
    path = save_debates(debates, tmp_path / "debates.jsonl")
    back = load_debates(path)
    assert [(b.calls, b.has_majority) for b in back] == [(r.calls, r.has_majority) for r in debates]
    summary = json.loads((tmp_path / "debates.tokens.json").read_text())
    assert summary["input_tokens"] == sum(r.input_tokens for r in debates)
    assert summary["n_majority"] == len(training_transcripts(debates))


def test_shorten(debates):
    t = next(r.transcript for r in debates if r.transcript.n_rounds == 2 and r.has_majority)
    one = shorten(t, 1, consensus="agent1")
    assert one.n_rounds == 1 and one.agents == (1,) and one.consensus_answer == t.turns[0].answer
    two = shorten(t, 2)
    assert two.agents == (1, 2) and two.consensus == t.consensus
    assert parse_trace(render_trace(two), question=t.question).consensus == t.consensus
    assert shorten(t, rng=random.Random(0)).meta["shortened"] in (1, 2)
    with pytest.raises(ValueError, match="1 or 2 agents"):
        shorten(t, 3)
    with pytest.raises(DebateFormatError):
        bad = type(t)(question=t.question, turns=[type(t.turns[0])(1, 1, "no box")], consensus="x")
        shorten(bad, 1, consensus="agent1")


@pytest.mark.parametrize("preset", ["toy", "smoke"])
def test_debate_preset_section(preset):
    cfg = load_preset(preset).section("debate", DebateConfig)
    assert cfg.experiment("main").personas == ("analyst", "critic", "programmer")
    evil = cfg.experiment("evil")
    assert evil.malicious == {2: "evil"} and evil.domain == "advice" and evil.n_debates > 0
    with pytest.raises(ValueError, match="unknown debate experiment"):
        cfg.experiment("nope")


def test_prompts_too_long_for_the_context_are_capped_or_empty(tiny_model_dirs):
    backend = HFBackend(tiny_model_dirs["llama"], max_new_tokens=8)  # 256-token context
    tok = backend.tokenizer
    base = "Problem: 1+2*3\n\n"
    sizes = [len(tok(base * k)["input_ids"]) for k in (1, 25, 40)]
    assert sizes[0] + 8 <= 256 < sizes[1] + 8 and sizes[1] < 256 <= sizes[2]
    with pytest.warns(UserWarning, match="1 leave fewer than 8 new tokens .* and 1 leave none"):
        short, tight, full = backend.complete([base, base * 25, base * 40])
    assert short.output_tokens <= 8 and tight.output_tokens <= 256 - sizes[1]
    assert full == ("", sizes[2], 0, [])
