"""The seed spread: finished runs' numbers and verdicts lined up per seed (analyses/spread.py, `latent-agents spread`)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from analyses.cli import main
from analyses.spread import SpreadError, seed_spread, to_markdown, write_spread


def _run(root, seed: int, imad: float, verdict: str, neutral: float, alpha: float) -> str:
    """A finished run dir as `reproduce` leaves it, reduced to the files the spread reads."""
    (root / "report").mkdir(parents=True)
    (root / "base").mkdir()
    (root / "base" / "stage.json").write_text(json.dumps({"accuracy": {"neutral": neutral, "majority_of_3": 0.8},
                                                          "built_from": {"keys": {"seed": seed}}}))
    (root / "base" / "base_eval.json").write_text(json.dumps({"accuracy": {"neutral": neutral, "majority_of_3": 0.8},
                                                              "round2": {"accuracy": neutral + 0.1,
                                                                         "follows_majority": 0.9}}))
    iv = {"estimate": imad - 0.7, "ci": [imad - 0.75, imad - 0.65], "n": 600, "level": 0.95}
    (root / "report" / "results.json").write_text(json.dumps({
        "seeds": {"preset": seed},
        "table1": [{"method": "Single", "accuracy": 0.7, "transfer": 0.03}, {"method": "IMAD", "accuracy": imad}],
        "table1_paired": {"IMAD−Single": iv},
        "claims": [{"id": "accuracy_vs_debate", "verdict": verdict, "intervals": {"IMAD−Single": iv}},
                   {"id": "evil_suppressed", "verdict": "not reproduced",
                    "intervals": {"IMAD α=0": {"estimate": 30.0}, f"IMAD α={alpha}": {"estimate": 10.0}}}]}))
    return str(root)


@pytest.fixture
def runs(tmp_path):
    return [_run(tmp_path / "s0", 0, 0.74, "reproduced", 0.76, -0.3),
            _run(tmp_path / "s1", 1, 0.70, "not reproduced", 0.72, -0.3),
            _run(tmp_path / "s2", 2, 0.78, "reproduced", 0.74, -0.4)]


def test_numbers_and_verdicts_line_up_per_seed(runs):
    s = seed_spread(runs)
    assert s.seeds == [0, 1, 2]
    imad = s.number("Table 1 IMAD accuracy")
    assert imad.values == (0.74, 0.70, 0.78)
    assert imad.mean == pytest.approx(0.74)
    assert imad.sd == pytest.approx(0.04)  # sample SD of 0.74 ± 0.04
    assert imad.range == pytest.approx(0.08)
    assert s.number("base neutral accuracy").values == (0.76, 0.72, 0.74)
    assert s.number("base round-2 accuracy").values == pytest.approx((0.86, 0.82, 0.84))
    assert s.number("base round-2 follows majority").sd == 0.0
    assert s.number("paired IMAD−Single").values == pytest.approx((0.04, 0.0, 0.08))
    # a claim interval already counted as a paired difference is not repeated under the claim's name
    with pytest.raises(KeyError):
        s.number("accuracy_vs_debate: IMAD−Single")
    # a strength that differs between runs: one row per name, NaN where a run lacks it, ignored by the summary
    odd = s.number("evil_suppressed: IMAD α=-0.4")
    assert math.isnan(odd.values[0]) and odd.values[2] == 10.0 and odd.mean == 10.0 and math.isnan(odd.sd)
    assert s.verdicts["accuracy_vs_debate"] == ["reproduced", "not reproduced", "reproduced"]
    assert s.unstable_claims == ["accuracy_vs_debate"]


def test_markdown_and_files(runs, tmp_path):
    s = seed_spread(runs)
    md = to_markdown(s)
    assert "| Table 1 IMAD accuracy | 0.74 | 0.7 | 0.78 | 0.74 | 0.04 | 0.08 |" in md
    assert "| accuracy_vs_debate | reproduced | not reproduced | reproduced | no |" in md
    assert "| evil_suppressed | not reproduced | not reproduced | not reproduced | yes |" in md
    paths = write_spread(s, tmp_path / "out")
    assert sorted(p.name for p in paths) == ["spread.json", "spread.md", "spread_base.html", "spread_table1.html"]
    saved = json.loads((tmp_path / "out" / "spread.json").read_text())
    assert saved["unstable_claims"] == ["accuracy_vs_debate"]
    row = next(n for n in saved["numbers"] if n["name"] == "evil_suppressed: IMAD α=-0.4")
    assert row["values"] == [None, None, 10.0] and row["sd"] is None
    assert "seed 2" in (tmp_path / "out" / "spread_table1.html").read_text()


def test_a_run_with_only_its_base_adds_the_bases_numbers(runs, tmp_path):
    (tmp_path / "s3" / "base").mkdir(parents=True)
    (tmp_path / "s3" / "base" / "stage.json").write_text(json.dumps({
        "accuracy": {"neutral": 0.70, "majority_of_3": 0.82}, "built_from": {"keys": {"seed": 3}}}))
    s = seed_spread([*runs, str(tmp_path / "s3")])
    assert s.seeds == [0, 1, 2, 3]
    assert s.number("base neutral accuracy").values == (0.76, 0.72, 0.74, 0.70)
    assert s.number("base neutral accuracy").sd == pytest.approx(0.02582, abs=1e-5)
    imad = s.number("Table 1 IMAD accuracy")
    assert math.isnan(imad.values[3]) and imad.mean == pytest.approx(0.74)  # summarised over the runs that have it
    assert s.verdicts["evil_suppressed"] == ["not reproduced"] * 3 + ["–"]
    assert s.unstable_claims == ["accuracy_vs_debate"]  # the base-only run has no verdicts to disagree with
    assert "| evil_suppressed | not reproduced | not reproduced | not reproduced | – | yes |" in to_markdown(s)


def _repaired(run: str, first: float, repairs: int) -> None:
    """The base's provenance as a build with the round-2 check writes it."""
    checks = [{"after_phase": 3 + i, "accuracy": first if i == 0 else 0.9, "follows_majority": 0.9, "n": 200}
              for i in range(repairs + 1)]
    (Path(run) / "base" / "provenance.json").write_text(json.dumps({"round2_checks": checks, "repairs": repairs}))


def test_the_round2_check_and_repairs_join_the_spread_and_the_report(runs):
    from analyses.study_report import base_rows
    from training.toy_base import base_summary

    _repaired(runs[0], 0.92, 0)
    _repaired(runs[1], 0.335, 1)  # run 2 was built before the check existed: its entries are missing
    s = seed_spread(runs)
    assert s.number("base round-2 check before repairs").values[:2] == (0.92, 0.335)
    assert math.isnan(s.number("base round-2 check before repairs").values[2])
    assert s.number("repair phases of the base").values[:2] == (0, 1)
    rows = {r["measure"]: r["value"] for r in base_rows(base_summary(Path(runs[1]) / "base"))}
    assert rows["round-2 check after phase 3 (200 held-out training-partition debates)"] == "33.5%"
    assert rows["round-2 check after phase 4 (200 held-out training-partition debates)"] == "90.0%"
    assert rows["repair phases run"] == "1"
    assert rows["round-2 revisions right (test split, the teacher's round-1 turns)"] == "82.0%"
    assert rows["accuracy: neutral / majority of 3"] == "72.0% / 80.0%"
    assert base_summary(Path(runs[2]) / "nowhere") == {}


def test_cli_prints_the_tables(runs, capsys):
    assert main(["spread", *runs]) == 0
    out = capsys.readouterr().out
    assert out.startswith("| number | seed 0 | seed 1 | seed 2 | mean | SD | range |")


def test_bad_input_is_one_sentence(runs, tmp_path, capsys):
    assert main(["spread", runs[0]]) == 2
    assert "needs at least two run dirs, got 1" in capsys.readouterr().err
    assert main(["spread", runs[0], str(tmp_path / "nowhere")]) == 2
    err = capsys.readouterr().err
    assert "nowhere/report/results.json does not exist" in err and "latent-agents toy base" in err
    with pytest.raises(SpreadError):
        seed_spread([runs[0], str(tmp_path)])


def test_the_report_states_the_presets_measured_seed_spread(tmp_path):
    from analyses.study_report import build
    from training.presets import load_preset

    sentence = "IMAD accuracy 74.5 / 71.0 / 76.5% over seeds 0 / 1 / 2"
    rep, payload = build(load_preset("smoke", [f'report.seed_spread=["{sentence}"]']), tmp_path)
    assert payload["seed_spread"] == [sentence]
    table = next(b for b in rep.blocks if "<caption>Spread over training seeds" in b)
    assert f"<td>{sentence}</td>" in table
    plain_rep, plain = build(load_preset("smoke"), tmp_path)
    assert plain["seed_spread"] == [] and "Spread over training seeds" not in "".join(plain_rep.blocks)
