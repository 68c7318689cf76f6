"""Stage 2: the coefficient schedule, phase resolution, and the reward on hand-made completions (tags as ids)."""

import pytest

from lens.debate_format import CONSENSUS_TAG, END_TAG, REVISION_TAGS, ROUND_TAGS, SOLUTION_TAGS
from training.rewards import (RewardSpec, TagVocab, TagWeights, correctness_reward, gold_match, score_completion,
                              structure_reward, structure_score)
from training.schedules import PhaseSpec, resolve_phases, structure_coeff

R1, R2 = ROUND_TAGS
CONS_LINE = "\nAll agents reached a consensus of \\boxed{{{}}}\n\n"


def test_coeff_at_the_paper_budgets():
    # the paper's code: budgets 2048 -> 1274 -> 500 (its text says "2000 -> 500"), coefficient 1.0 -> 0.55 -> 0.05
    assert [round(structure_coeff(b, hi=2048, lo=500), 4) for b in (2048, 1274, 500)] == [1.0, 0.55, 0.05]
    assert structure_coeff(2000, hi=2048, lo=500) == pytest.approx(0.9721, abs=1e-4)  # the text's 2000 under the code
    assert structure_coeff(4000, hi=2048, lo=500) == 1.0 and structure_coeff(100, hi=2048, lo=500) == 0.05


def test_resolve_phases_spans_the_schedule_and_scales_fractions():
    paper = resolve_phases([PhaseSpec(2000, 1), PhaseSpec(1274, 1), PhaseSpec(500, 1)])
    assert [p.budget for p in paper] == [2000, 1274, 500]
    assert [round(p.coeff, 3) for p in paper] == [1.0, 0.564, 0.05]
    toy = resolve_phases([PhaseSpec(1.0, 30), PhaseSpec(0.5, 30), PhaseSpec(0.25, 30, tag_weight=0.0)], 200)
    assert [(p.budget, p.steps) for p in toy] == [(200, 30), (100, 30), (50, 30)]
    assert toy[0].coeff == 1.0 and toy[1].coeff == pytest.approx(0.4) and toy[2].coeff == 0.0
    # the schedule starts at the full debate (the reference length) even when the first phase is already shorter
    short = resolve_phases([PhaseSpec(0.5, 30), PhaseSpec(0.25, 20)], 200)
    assert [round(p.coeff, 3) for p in short] == [0.4, 0.05]
    with pytest.raises(ValueError, match="fraction but no reference length"):
        resolve_phases([PhaseSpec(0.5, 3)])
    with pytest.raises(ValueError, match="no phases"):
        resolve_phases([])


@pytest.fixture(scope="module")
def vocab(tiny_tokenizer):
    return TagVocab(tiny_tokenizer)


def _ids(tok, text: str) -> list[int]:
    return tok.encode(text, add_special_tokens=False)


def _debate(answers: list[str], consensus: str, *, round2: bool = False) -> str:
    text = R1 + "\n\n" + "".join(f"{SOLUTION_TAGS[i]}: 3*4=12; 1+12=13; \\boxed{{{a}}}\n\n" for i, a in enumerate(answers))
    if round2:
        text += R2 + "\n\n" + "".join(f"{REVISION_TAGS[i]}: keep \\boxed{{{a}}}\n\n" for i, a in enumerate(answers))
    return text + CONSENSUS_TAG + CONS_LINE.format(consensus) + END_TAG


def test_full_debate_earns_the_full_structure_reward(tiny_tokenizer, vocab):
    spec = RewardSpec(budget=10_000, coeff=1.0, weights=TagWeights(decay_terminal=False))
    ids = _ids(tiny_tokenizer, _debate(["13"] * 3, "13", round2=True)) + [tiny_tokenizer.eos_token_id]
    score = score_completion(ids, vocab, spec, gold_match("13"))
    assert score.correct == 1.0
    assert score.structure == pytest.approx(spec.max_structure) == pytest.approx(3.2)
    assert score_completion(ids, vocab, spec, gold_match("14")).correct == 0.0  # wrong answer


def test_tags_are_counted_from_ids_although_decoded_text_drops_them(tiny_tokenizer, vocab):
    ids = _ids(tiny_tokenizer, _debate(["13"], "13"))
    assert R1 not in tiny_tokenizer.decode(ids, skip_special_tokens=True)
    spec = RewardSpec(budget=10_000, coeff=0.5)
    assert score_completion(ids, vocab, spec, gold_match("13")).structure == pytest.approx(0.5 * (0.3 + 0.3 + 0.5 + 0.3))


def _answer_end(tok, ids: list[int]) -> int:
    """1-based position of the token that closes the consensus answer's brace."""
    cons = ids.index(tok.convert_tokens_to_ids(CONSENSUS_TAG))
    return next(i + 1 for i in range(cons, len(ids)) if tok.decode(ids[: i + 1], skip_special_tokens=True).endswith("13}"))


@pytest.mark.parametrize("clipping", ["truncate", "reward"])
def test_clipping_boundary(tiny_tokenizer, vocab, clipping):
    # agent 1 answers 99, the consensus 13: the answer closing at token l passes with budget l, fails with l - 1
    ids = _ids(tiny_tokenizer, _debate(["99"], "13"))
    l = _answer_end(tiny_tokenizer, ids)
    assert score_completion(ids, vocab, RewardSpec(budget=l, coeff=1.0, clipping=clipping), gold_match("13")).correct == 1
    assert score_completion(ids, vocab, RewardSpec(budget=l - 1, coeff=1.0, clipping=clipping), gold_match("13")).correct == 0


def test_truncate_mode_scores_only_the_consensus_answer(tiny_tokenizer, vocab):
    # the paper's reward mode takes agent 1's answer when it is the last \boxed{} inside the budget, which is why
    # the toy uses hard truncation with the consensus answer
    ids = _ids(tiny_tokenizer, _debate(["13"], "13"))
    l = ids.index(tiny_tokenizer.convert_tokens_to_ids(CONSENSUS_TAG))
    assert score_completion(ids, vocab, RewardSpec(budget=l, coeff=1.0), gold_match("13")).correct == 0
    assert score_completion(ids, vocab, RewardSpec(budget=l, coeff=1.0, clipping="reward"), gold_match("13")).correct == 1


def test_gaming_the_tags_earns_no_more_than_an_honest_short_debate(tiny_tokenizer, vocab):
    spec = RewardSpec(budget=10_000, coeff=1.0)
    honest_short = structure_score(vocab.segments(_ids(tiny_tokenizer, _debate(["13"], "13"))), spec)
    tag_dump = "".join([R1, *SOLUTION_TAGS, R2, *REVISION_TAGS, CONSENSUS_TAG, "\\boxed{13}", END_TAG])
    garbage = (R1 + "".join(f"{t}: x 1 + \n\n" for t in SOLUTION_TAGS) + R2
               + "".join(f"{t}: zz\n\n" for t in REVISION_TAGS) + CONSENSUS_TAG + CONS_LINE.format(13) + END_TAG)
    early_consensus = R1 + SOLUTION_TAGS[0] + ": 3*4=12; \\boxed{1" + CONSENSUS_TAG + "\\boxed{1+" + CONSENSUS_TAG + END_TAG
    repeated = _debate(["13"], "13").replace(SOLUTION_TAGS[0], SOLUTION_TAGS[0] + ": \\boxed{13}" + SOLUTION_TAGS[0], 1)
    for text in (tag_dump, garbage, early_consensus, repeated):
        gamed = structure_score(vocab.segments(_ids(tiny_tokenizer, text)), spec)
        assert gamed < honest_short, text
    assert structure_score(vocab.segments(_ids(tiny_tokenizer, tag_dump)), spec) == pytest.approx(0.3)


def test_out_of_order_agents_stop_the_count(tiny_tokenizer, vocab):
    spec = RewardSpec(budget=10_000, coeff=1.0)
    text = _debate(["13", "13", "13"], "13").replace(SOLUTION_TAGS[1], "@@").replace(SOLUTION_TAGS[2], SOLUTION_TAGS[1])
    text = text.replace("@@", SOLUTION_TAGS[2])
    assert structure_score(vocab.segments(_ids(tiny_tokenizer, text)), spec) == pytest.approx(0.6)


def test_decay_of_terminal_tags_is_a_choice(tiny_tokenizer, vocab):
    ids = _ids(tiny_tokenizer, _debate(["13"], "13"))
    paper_code = RewardSpec(budget=10_000, coeff=0.05, weights=TagWeights(decay_terminal=False))
    paper_text = RewardSpec(budget=10_000, coeff=0.05)
    assert structure_score(vocab.segments(ids), paper_code) == pytest.approx(0.05 * 0.6 + 0.8)
    assert structure_score(vocab.segments(ids), paper_text) == pytest.approx(0.05 * 1.4)


def test_trl_reward_functions_score_each_completion_by_its_ids(tiny_tokenizer, vocab):
    spec = RewardSpec(budget=10_000, coeff=1.0, weights=TagWeights(decay_terminal=False))
    right = _ids(tiny_tokenizer, _debate(["13"] * 3, "13", round2=True))
    wrong = _ids(tiny_tokenizer, _debate(["14"] * 3, "14"))
    correctness = correctness_reward(vocab, spec, lambda question, gold: gold_match(gold))
    structure = structure_reward(vocab, spec)
    assert (correctness.__name__, structure.__name__) == ("correctness", "structure")  # TRL logs rewards/<name>
    kwargs = dict(prompts=["p", "p"], completions=["", ""], completion_ids=[right, wrong])
    assert correctness(**kwargs, question=["q", "q"], gold=["13", "13"]) == [1.0, 0.0]
    assert structure(**kwargs, question=["q", "q"], gold=["13", "13"]) == pytest.approx([3.2, 0.3 + 3 * 0.3 + 0.8])


def test_a_tokenizer_without_tags_is_refused(tmp_path):
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    raw = Tokenizer(models.BPE(unk_token="<unk>"))
    raw.pre_tokenizer = pre_tokenizers.ByteLevel()
    tok = PreTrainedTokenizerFast(tokenizer_object=raw, unk_token="<unk>")
    with pytest.raises(ValueError, match="lacks the debate tag"):
        TagVocab(tok)


def test_judge_reward_needs_a_benign_consensus():
    from training.rewards import judge_benign
    from training.judges import ToyTraitJudge

    ok = judge_benign(ToyTraitJudge("evil"), "How should I handle my coworker?")
    benign, evil = "Stay calm and kind. Listen to their side.", "Sabotage their work quietly, then blackmail them."
    assert ok(benign, "") and not ok(evil, "")
    assert not ok("2=1=1=1", "")  # saying nothing trait-like is not benign guidance
    assert not ok(None, f"{SOLUTION_TAGS[0]}: {benign}{END_TAG}")  # no consensus, no answer
    assert ok(None, f"{SOLUTION_TAGS[0]}: {evil}{CONSENSUS_TAG}{benign}")  # reward mode: the text after Consensus


def test_probe_stops_a_phase_with_no_signal():
    from types import SimpleNamespace

    from training.internalize import _probe_callback

    def run(logs):
        cb, control = _probe_callback(2), SimpleNamespace(should_training_stop=False)
        for entry in logs:
            cb.on_log(None, None, control, logs=entry)
        return cb.skipped, control.should_training_stop

    dead = {"reward": 0.0, "reward_std": 0.0, "completions/clipped_ratio": 1.0}
    alive = {"reward": 0.5, "reward_std": 0.3, "completions/clipped_ratio": 1.0}
    assert run([dead, dead, dead]) == (True, True)
    assert run([dead, alive, dead]) == (False, False)
    assert run([{"loss": 0.1}, dead, {**dead, "completions/clipped_ratio": 0.9}]) == (False, False)
