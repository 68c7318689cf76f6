"""The shared debate format: render/parse round trips on teacher traces and the paper's own format, clear errors."""

import json
import random

import pytest

from lens.debate_format import (DebateFormatError, Transcript, Turn, consensus_line, extract_boxed, majority,
                                parse_trace, read_paper_json, render_trace)
from training.tasks import TaskConfig, arithmetic_split
from training.teacher import Teacher

PERSONAS = ("analyst", "critic", "programmer")

PAPER_TRACE = (
    "<|Round 1 - Initial Solutions|>\n\n"
    "<|Agent 1 Solution|>: First, 4*5 = 20 and 7*8 = 56. Then 3 + 20 + 6 - 56 = -27. \\(\\boxed{-27}\\)\n\n"
    "<|Agent 2 Solution|>: We get \\(\\boxed{-27}\\)\n\n"
    "<|Agent 3 Solution|>: I think it is \\boxed{-25}.\n\n"
    "<|Round 2 - Revision|>\n\n"
    "<|Agent 1 Revision|>: Still \\(\\boxed{-27}\\)\n\n"
    "<|Agent 2 Revision|>: Agreed, \\(\\boxed{-27}\\)\n\n"
    "<|Agent 3 Revision|>: I was wrong: \\(\\boxed{-27}\\)\n\n"
    "<|Consensus|>\nAll agents reached a consensus of \\boxed{-27}\n\n<|endofdebate|>"
)
ROUND1_ONLY = (
    "<|Round 1 - Initial Solutions|>\n\n"
    "<|Agent 1 Solution|>: \\(\\boxed{12}\\)\n\n"
    "<|Agent 2 Solution|>: \\(\\boxed{12}\\)\n\n"
    "<|Agent 3 Solution|>: \\(\\boxed{13}\\)\n\n"
    "<|Consensus|>\nA majority of agents converged on the solution of \\boxed{12}\n\n<|endofdebate|>"
)


def _teacher_transcript(problem, seed: int) -> Transcript:
    rng, teacher = random.Random(seed), Teacher()
    r1 = [teacher.respond(p, problem, rng=rng) for p in PERSONAS]
    r2 = [teacher.respond(p, problem, own=r1[i], others=r1[:i] + r1[i + 1:], rng=rng)
          for i, p in enumerate(PERSONAS)]
    turns = [Turn(1, i + 1, t, PERSONAS[i]) for i, t in enumerate(r1)]
    turns += [Turn(2, i + 1, t, PERSONAS[i]) for i, t in enumerate(r2)]
    line = consensus_line([extract_boxed(t) for t in r2]) or "No consensus: \\boxed{none}"
    return Transcript(problem.question, turns, line, gold=problem.answer, personas=PERSONAS, id=f"gen{seed}")


@pytest.mark.parametrize("seed", range(5))
def test_teacher_traces_round_trip(seed):
    problem = arithmetic_split(TaskConfig(n_test=5), "test", 0)[seed]
    t = _teacher_transcript(problem, seed)
    text = render_trace(t)
    back = parse_trace(text, question=t.question, gold=t.gold, personas=PERSONAS, id=t.id)
    assert back.turns == t.turns and back.consensus == t.consensus
    assert render_trace(back) == text
    assert back.round_turns(1)[1].answer == extract_boxed(t.turns[1].text)


def test_paper_trace_round_trips_with_inline_math_boxes():
    t = parse_trace(PAPER_TRACE, question="3+4*5+6-7*8", gold="-27")
    assert render_trace(t) == PAPER_TRACE
    assert [turn.answer for turn in t.turns] == ["-27", "-27", "-25", "-27", "-27", "-27"]
    assert t.n_rounds == 2 and t.consensus_answer == "-27" and t.correct is True


def test_round1_only_trace():
    t = parse_trace(ROUND1_ONLY, question="q", gold="13")
    assert t.n_rounds == 1 and len(t.turns) == 3 and render_trace(t) == ROUND1_ONLY
    assert t.consensus_answer == "12" and t.correct is False


@pytest.mark.parametrize("broken, message", [
    (PAPER_TRACE.replace("\n\n<|endofdebate|>", ""), r"trace bad: missing tag <\|endofdebate\|>"),
    (PAPER_TRACE.replace("<|Round 1 - Initial Solutions|>", ""), r"trace bad: missing tag <\|Round 1"),
    (ROUND1_ONLY.replace("<|Agent 2 Solution|>: \\(\\boxed{12}\\)", "<|Agent 2 Solution|>: "),
     r"trace bad: agent 2's round-1 turn is empty"),
])
def test_parse_errors_name_the_trace_and_the_problem(broken, message):
    with pytest.raises(DebateFormatError, match=message):
        parse_trace(broken, question="q", id="bad")


def test_agents_out_of_order():
    swapped = ROUND1_ONLY.replace("<|Agent 1 Solution|>", "<|X|>").replace(
        "<|Agent 2 Solution|>", "<|Agent 1 Solution|>").replace("<|X|>", "<|Agent 2 Solution|>")
    with pytest.raises(DebateFormatError, match=r"trace bad: agent 2 out of order in round 1 \(expected agent 1\)"):
        parse_trace(swapped, question="q", id="bad")


def test_read_paper_json(tmp_path):
    path = tmp_path / "debates.json"
    path.write_text(json.dumps([{"question": "3+4*5+6-7*8", "debate_trace": PAPER_TRACE, "gold_answer": -27},
                                {"question": "q2", "debate_trace": ROUND1_ONLY, "gold_answer": "13"}]))
    ts = read_paper_json(path)
    assert [t.id for t in ts] == ["debates.json#0", "debates.json#1"]
    assert [t.correct for t in ts] == [True, False]
    path.write_text(json.dumps({"question": "q"}))
    with pytest.raises(DebateFormatError, match="expected a JSON list of debate records, got dict"):
        read_paper_json(path)


def test_boxed_majority_and_consensus_lines():
    assert extract_boxed("a \\boxed{1} then \\boxed{\\frac{1}{2}}") == "\\frac{1}{2}"
    assert extract_boxed("\\(\\boxed{ 1,024. }\\)") == "1024"
    assert extract_boxed("no box") is None
    assert majority(["3", "3", "4"]) == "3" and majority(["3", "4", None]) is None
    assert consensus_line(["5", "5", "5"]) == "All agents reached a consensus of \\boxed{5}"
    assert consensus_line(["5", "6", "5"]) == "A majority of agents converged on the solution of \\boxed{5}"
    assert consensus_line(["5", "6", "7"]) is None
