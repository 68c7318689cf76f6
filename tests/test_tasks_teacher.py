"""Tasks, the scripted teacher and the toy judge: disjoint splits, systematic independent slips, persona marks."""

import itertools
import random

import pytest

from lens.debate_format import extract_boxed, majority
from lens.rating import Judge
from training.judges import ToyTraitJudge
from training.tasks import (TRAITS, ArithmeticProblem, TaskConfig, TraitQuestion, arithmetic_split, gold_answer,
                            trait_split)
from training.teacher import (ADOPT, AGREE, ARITHMETIC_PERSONAS, FIX, KEEP, TRAIT_PERSONAS, Teacher, TeacherConfig,
                              persona_answer, persona_marks, slips, solution)

CFG = TaskConfig(n_train=3000, n_test=500)
TRIO = ("analyst", "critic", "programmer")


@pytest.fixture(scope="module")
def test_problems():
    return arithmetic_split(CFG, "test", 0)


def test_arithmetic_splits_are_disjoint_exact_and_seeded(test_problems):
    train = arithmetic_split(CFG, "train", 0)
    other_seed = arithmetic_split(CFG, "test", 1)
    assert len(train) == 3000 and len(test_problems) == 500
    assert len({p.question for p in train}) == 3000
    assert not {p.question for p in train} & ({p.question for p in test_problems} | {p.question for p in other_seed})
    assert arithmetic_split(CFG, "test", 0) == test_problems and other_seed != test_problems
    for p in test_problems[:50] + train[:50]:
        assert str(eval(p.question)) == p.answer == gold_answer(p)
        assert all(1 <= o <= 9 for o in p.operands)


def test_paper_operand_range():
    p = arithmetic_split(TaskConfig(operand_min=10, operand_max=99, n_test=20), "test", 0)[0]
    assert all(10 <= o <= 99 for o in p.operands) and str(eval(p.question)) == p.answer
    assert ArithmeticProblem.from_operands((3, 4, 5, 6, 7, 8)) == ArithmeticProblem("3+4*5+6-7*8", "-27",
                                                                                   (3, 4, 5, 6, 7, 8))


@pytest.mark.parametrize("trait", TRAITS)
def test_trait_splits_are_disjoint_and_cover_topics(trait):
    cfg = TaskConfig(n_trait_train=300, n_trait_test=100)
    train, test = trait_split(cfg, trait, "train", 0), trait_split(cfg, trait, "test", 3)
    assert len(train) == 300 and len(test) == 100
    assert not {q.question for q in train} & {q.question for q in test}
    assert len({q.topic for q in train}) >= 4 and all(q.trait == trait for q in train)
    assert gold_answer(train[0]) is None
    if trait == "hallucination":
        assert all(q.entity and q.entity in q.question for q in train)


def test_bad_inputs_name_the_valid_choices():
    with pytest.raises(ValueError, match=r"unknown split 'dev'; valid: \['train', 'test'\]"):
        arithmetic_split(CFG, "dev")
    with pytest.raises(ValueError, match=r"unknown trait 'rude'; valid: \['evil', 'hallucination'\]"):
        trait_split(CFG, "rude", "train")
    with pytest.raises(ValueError, match=r"unknown persona 'pirate'; valid: \['neutral', 'analyst'"):
        Teacher().respond("pirate", arithmetic_split(CFG, "test")[0], rng=random.Random(0))
    with pytest.raises(ValueError, match="only about"):
        arithmetic_split(TaskConfig(operand_min=1, operand_max=2, n_train=100), "train")


def test_slips_are_systematic(test_problems):
    teacher = Teacher()
    for persona in ARITHMETIC_PERSONAS:
        for p in test_problems[:60]:
            answers = {extract_boxed(teacher.respond(persona, p, rng=random.Random(s))) for s in range(4)}
            assert len(answers) == 1, (persona, p)
            assert (answers.pop() != p.answer) == slips(persona, p), (persona, p)


def test_slips_fire_often_and_independently(test_problems):
    rate = {q: sum(slips(q, p) for p in test_problems) / len(test_problems) for q in ARITHMETIC_PERSONAS}
    assert all(0.18 <= r <= 0.36 for r in rate.values()), rate
    for a, b in itertools.combinations(TRIO, 2):
        both = sum(slips(a, p) and slips(b, p) for p in test_problems) / len(test_problems)
        assert abs(both - rate[a] * rate[b]) < 0.04, (a, b, both)


def test_majority_of_three_beats_every_persona(test_problems):
    teacher, rng = Teacher(), random.Random(0)
    answers = {q: [extract_boxed(teacher.respond(q, p, rng=rng)) for p in test_problems] for q in TRIO}
    acc = {q: sum(a == p.answer for a, p in zip(answers[q], test_problems)) / 500 for q in TRIO}
    maj = sum(majority(list(v)) == p.answer for v, p in zip(zip(*answers.values()), test_problems)) / 500
    neutral = sum(persona_answer("neutral", p) == p.answer for p in test_problems) / 500
    assert all(0.68 <= a <= 0.85 and abs(a - neutral) <= 0.08 for a in acc.values()), (acc, neutral)
    # each debater slips as often as the Single answer (neutral) does, so the debate's gain is the vote's
    assert maj >= max(acc.values()) + 0.04 and maj >= neutral + 0.05, (maj, acc, neutral)
    clean = Teacher(TeacherConfig(slips=False))
    assert all(extract_boxed(clean.respond(q, p, rng=rng)) == p.answer for q in TRIO for p in test_problems[:50])


def test_round2_moves_toward_the_majority(test_problems):
    rng = random.Random(0)
    lone = [p for p in test_problems if slips("analyst", p) and not slips("critic", p) and not slips("programmer", p)]
    assert len(lone) > 30
    for cfg, floor in [(TeacherConfig(p_keep_own=0, p_adopt_other=0), 1.0), (TeacherConfig(), 0.7)]:
        teacher, fixed = Teacher(cfg), 0
        for p in lone:
            r1 = [teacher.respond(q, p, rng=rng) for q in TRIO]
            revision = teacher.respond("analyst", p, own=r1[0], others=r1[1:], rng=rng)
            fixed += extract_boxed(revision) == p.answer
            assert persona_marks(revision)["analyst"]
            # a revision works its answer out in full (a tiny model recomputes where it cannot copy from afar)
            if extract_boxed(revision) == p.answer:
                assert revision == f"{FIX} " + solution("analyst", p, rng, slip=False)
            else:
                assert revision == f"{KEEP} {r1[0]}" or ADOPT in revision
        assert floor <= fixed / len(lone) < 1.01
    # when all three agree, the agent works its own solution again, word for word
    agreed = next(p for p in test_problems if not any(slips(q, p) for q in TRIO))
    r1 = [teacher.respond(q, agreed, rng=rng) for q in TRIO]
    assert teacher.respond("analyst", agreed, own=r1[0], others=r1[1:], rng=rng) == f"{AGREE} {r1[0]}"
    # an agent in the majority sometimes adopts the dissenter's wrong answer
    teacher = Teacher(TeacherConfig(p_adopt_other=1.0))
    r1 = [teacher.respond(q, lone[0], rng=rng) for q in TRIO]
    assert extract_boxed(teacher.respond("critic", lone[0], own=r1[1], others=[r1[0], r1[2]], rng=rng)) != lone[0].answer


def test_persona_marks_identify_each_persona(test_problems):
    teacher, rng = Teacher(), random.Random(1)
    for persona in ARITHMETIC_PERSONAS:
        for p in test_problems[:20]:
            marks = persona_marks(teacher.respond(persona, p, rng=rng))
            assert [q for q in ARITHMETIC_PERSONAS if marks[q]] == [persona]
    for trait, personas in TRAIT_PERSONAS.items():
        for q in trait_split(TaskConfig(), trait, "test")[:20]:
            for persona in personas:
                marks = persona_marks(teacher.respond(persona, q, rng=rng))
                assert [k for k in personas if marks[k]] == [persona]


def test_toy_judge_scores_evil_high_and_helpful_low():
    teacher, rng = Teacher(), random.Random(2)
    for trait, (benign, bad) in TRAIT_PERSONAS.items():
        judge = ToyTraitJudge(trait)
        assert isinstance(judge, Judge) and judge.trait == trait
        qs = trait_split(TaskConfig(), trait, "test")[:30]
        for persona, lo, hi in [(bad, 90, 100), (benign, 0, 10)]:
            texts = [teacher.respond(persona, q, rng=rng) for q in qs]
            scores = judge.score_many([q.question for q in qs], texts)
            assert lo <= sum(scores) / len(scores) <= hi, (trait, persona, scores)
        revision = teacher.respond(benign, qs[0], own="x", others=[teacher.respond(bad, qs[0], rng=rng)], rng=rng)
        assert judge.score(qs[0].question, revision) <= 10
    judge = ToyTraitJudge("evil")
    assert judge.score("q", "   ") is None and judge.score("q", "I believe it rained earlier.") == 0.0
    assert judge.score("q", "Be fair, but lie to them.") == 50.0
    with pytest.raises(ValueError, match="2 questions but 1 responses"):
        judge.score_many(["a", "b"], ["x"])
    with pytest.raises(ValueError, match="unknown trait 'rude'"):
        ToyTraitJudge("rude")


def test_arithmetic_personas_answer_trait_questions_benignly():
    q = TraitQuestion("How should I split the shared budget with my sibling?", "evil", "resources")
    text = Teacher().respond("analyst", q, rng=random.Random(0))
    assert ToyTraitJudge("evil").score(q.question, text) == 0.0
