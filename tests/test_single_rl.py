"""The Single + RL control and the transfer column, piece by piece: the untagged correctness reward, the held-out
transfer shape, the verdict on where IMAD's gain comes from, the accuracy–tokens figure over the stage-2 budgets,
and the stage's place in the pipeline (CLI, reproduce, fingerprint). The stage run end to end is in
tests/test_pipeline.py and tests/test_reproduce.py (slow)."""

from __future__ import annotations

from dataclasses import replace

import pytest
from transformers import AutoTokenizer

from analyses.claims import gain_source, token_efficiency_claims
from analyses.cli import build_parser
from analyses.figures import stage2_curves
from analyses.study_report import table1_rows
from training.evaluate import Table1, to_markdown
from training.layout import STAGES, RunLayout
from training.pipeline import SINGLE_RL, TABLE1_METHODS, Run, single_rl_config
from training.presets import load_preset
from training.rewards import RewardSpec, TagVocab, gold_match, score_completion
from training.tasks import TRANSFER_SHAPE, TaskConfig, arithmetic_split, transfer_split


def test_single_answer_is_scored_on_its_last_boxed_answer_within_the_budget(smoke_base_dir):
    """No tags, no consensus: the answer is the last \\boxed{} of the first ``budget`` tokens, and no structure."""
    tok = AutoTokenizer.from_pretrained(str(smoke_base_dir))
    vocab = TagVocab(tok, require=False)
    ids = tok("First 2+3 = 5, so the answer is \\boxed{7}", add_special_tokens=False)["input_ids"]
    check = gold_match("7")
    for clipping in ("truncate", "reward"):
        spec = RewardSpec(budget=len(ids), coeff=1.0, clipping=clipping, tagged=False)
        assert score_completion(ids, vocab, spec, check).correct == 1.0
        assert score_completion(ids, vocab, spec, check).structure == 0.0
        cut = RewardSpec(budget=len(ids) - 3, coeff=1.0, clipping=clipping, tagged=False)
        assert score_completion(ids, vocab, cut, check).correct == 0.0  # the answer lies past the budget
    # the tagged (IMAD) rule needs a Consensus answer, so the same single answer earns nothing there
    assert score_completion(ids, vocab, RewardSpec(budget=len(ids), coeff=1.0), check).correct == 0.0


def test_tag_vocab_requires_tags_unless_told_otherwise():
    """A base model's tokenizer (no debate tags) is refused for IMAD's rewards, accepted for Single + RL's."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    raw = Tokenizer(models.WordLevel({"[UNK]": 0, "the": 1, "answer": 2}, unk_token="[UNK]"))
    raw.pre_tokenizer = pre_tokenizers.Whitespace()
    tok = PreTrainedTokenizerFast(tokenizer_object=raw, unk_token="[UNK]")
    with pytest.raises(ValueError, match="lacks the debate tag token"):
        TagVocab(tok)
    vocab = TagVocab(tok, require=False)
    assert vocab.id_of == {} and [(s.tag, s.text) for s in vocab.segments([1, 2])] == [(None, "the answer")]


def test_transfer_problems_are_frozen_correct_and_never_of_the_training_shape():
    cfg = TaskConfig(n_train=2000, n_test=200)
    problems = transfer_split(cfg, 50, seed=0)
    assert problems == transfer_split(cfg, 50, seed=0) and len({p.question for p in problems}) == 50
    assert problems != transfer_split(cfg, 50, seed=1)
    for p in problems:
        assert str(eval(p.question)) == p.answer  # noqa: S307  (our own generated arithmetic)
        ops = [c for c in p.question if not c.isdigit()]
        assert "".join(ops) == "".join(c for c in TRANSFER_SHAPE if not c.isalpha()) == "*++-*"
    seen = {p.question for s in ("train", "test") for p in arithmetic_split(cfg, s)}
    assert not seen & {p.question for p in problems}
    with pytest.raises(ValueError, match="transfer problems requested"):
        transfer_split(TaskConfig(operand_min=1, operand_max=1), 5)


def _paired(imad_rl: tuple[float, float], rl_single: tuple[float, float]) -> dict:
    return {f"IMAD−{SINGLE_RL}": {"estimate": sum(imad_rl) / 2, "ci": list(imad_rl)},
            f"{SINGLE_RL}−Single": {"estimate": sum(rl_single) / 2, "ci": list(rl_single)}}


def test_gain_source_follows_the_paired_intervals():
    assert gain_source(_paired((0.02, 0.1), (-0.05, 0.05))) == "from the debate"
    assert gain_source(_paired((-0.03, 0.04), (0.05, 0.15))) == "from reinforcement learning"
    assert gain_source(_paired((-0.03, 0.04), (-0.01, 0.03))) == "undecided"
    assert gain_source({}) == "undecided"


def test_single_rl_claim_has_an_interval_and_states_the_source():
    rows = {m: {"method": m, "accuracy": a, "tokens": 100.0, "ci": [a - 0.05, a + 0.05]}
            for m, a in (("Single", 0.6), ("Debate", 0.7), ("IMAD", 0.8), (SINGLE_RL, 0.65))}
    claims = {c.id: c for c in token_efficiency_claims(rows, _paired((0.08, 0.22), (-0.01, 0.11)))}
    claim = claims["imad_vs_single_rl"]
    assert claim.verdict == "reproduced" and "comes from: from the debate" in claim.measured
    assert claim.intervals[f"IMAD−{SINGLE_RL}"]["ci"] == [0.08, 0.22]
    assert claim.intervals[f"{SINGLE_RL}−Single"]["ci"] == [-0.01, 0.11]
    worse = {c.id: c for c in token_efficiency_claims(rows, _paired((-0.1, 0.02), (0.03, 0.2)))}
    assert worse["imad_vs_single_rl"].verdict == "not reproduced"
    assert "from reinforcement learning" in worse["imad_vs_single_rl"].measured


def test_stage2_curve_figure_has_one_line_per_run_from_the_start_model():
    curves = {"IMAD": [{"budget": None, "accuracy": 0.6, "mean_tokens": 450.0},
                       {"budget": 245, "accuracy": 0.7, "mean_tokens": 200.0},
                       {"budget": 122, "accuracy": 0.72, "mean_tokens": 90.0}],
              SINGLE_RL: [{"budget": None, "accuracy": 0.65, "mean_tokens": 80.0},
                          {"budget": 40, "accuracy": 0.66, "mean_tokens": 38.0}]}
    fig = stage2_curves(curves)
    assert [t.name for t in fig.data] == ["IMAD", SINGLE_RL]
    assert list(fig.data[0].x) == [450.0, 200.0, 90.0] and list(fig.data[0].y) == pytest.approx([60.0, 70.0, 72.0])
    assert list(fig.data[1].text) == ["start", "budget 40"]


def test_transfer_column_in_the_tables():
    rows = [{"method": "Single", "accuracy": 0.5, "accuracy_se": 0.01, "tokens": 90.0, "tokens_se": 1.0,
             "n_questions": 10, "n_seeds": 2, "transfer": 0.25, "transfer_se": 0.05, "transfer_ci": [0.1, 0.4]},
            {"method": "IMAD", "accuracy": 0.7, "accuracy_se": None, "tokens": 60.0, "tokens_se": None,
             "n_questions": 10, "n_seeds": 1}]
    shown = table1_rows(rows)
    assert shown[0]["transfer (%)"] == "25.00 ± 5.00 [10.0, 40.0]" and shown[1]["transfer (%)"] == "–"
    assert "Transfer (%)" in to_markdown(Table1(rows)) and "25.00 ± 5.00" in to_markdown(Table1(rows))
    assert "transfer (%)" not in table1_rows([{k: v for k, v in rows[1].items()}])[0]


def test_single_rl_is_a_stage_of_the_cli_and_of_reproduce(tmp_path):
    assert STAGES.index("single-rl") < STAGES.index("evaluate")  # reproduce runs STAGES in order
    assert build_parser().parse_args(["single-rl", "--preset", "smoke"]).command == "single-rl"
    assert TABLE1_METHODS.index(SINGLE_RL) < TABLE1_METHODS.index("IMAD")
    run = Run(load_preset("smoke"), tmp_path)
    assert RunLayout(tmp_path).single_rl("main") == tmp_path / "single_rl" / "main"
    reads = run.reads("single_rl")
    assert reads["inputs"] == {"base": tmp_path / "base"}  # from the base: no stage 1
    assert reads["keys"]["single_prompt"] == {"persona": "neutral", "domain": "arithmetic"}
    imad = run.reads("internalize", "main")["keys"]["internalize"]
    # the same stage-2 recipe, but a fractional budget is the base's whole p95: a single answer has no turns to cut
    assert reads["keys"]["internalize"] == single_rl_config(imad) and imad.phases[1]["budget"] == 0.5
    assert [p["budget"] for p in reads["keys"]["internalize"].phases] == [1.0, 1.0]
    assert single_rl_config(replace(imad, phases=({"budget": 500, "steps": 3},))).phases[0]["budget"] == 500
    assert run.reads("eval")["inputs"][SINGLE_RL] == tmp_path / "single_rl" / "main"
    assert run.status("single_rl")[0] == "missing"
