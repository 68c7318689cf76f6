"""Debate sources: the paper's released file formats, our JSONL, model-written debates (HF dir and endpoint), and
resuming a killed generation by question."""

import json
from pathlib import Path

import pytest

from lens.debate_format import DebateFormatError, render_trace
from training.backends import HFBackend, OpenAIBackend, TeacherBackend
from training.debate_files import read_debate_file
from training.debate_sources import model_backend, read_partial, run_resumable
from training.runner import DebateConfig, run_debates, save_debates
from training.serve import ChatServer
from training.tasks import TaskConfig, arithmetic_split
from training.teacher import Teacher

PAPER = Path(__file__).parent / "data" / "paper"


def test_paper_list_format_round_trips():
    raw = json.loads((PAPER / "arithmetic_3_2.json").read_text())
    records = read_debate_file(PAPER / "arithmetic_3_2.json")
    assert len(records) == len(raw) > 0
    for rec, r in zip(records, raw):
        t = rec.transcript
        assert t.question == r["question"] and t.gold == r["gold_answer"]
        assert render_trace(t) == r["debate_trace"]
        assert rec.has_majority and t.consensus_answer is not None
    assert len({r.transcript.id for r in records}) == len(records)


def test_malicious_format_keeps_consensus_fields_and_has_no_gold(tmp_path):
    raw = json.loads((PAPER / "evil_debate.json").read_text())
    records = read_debate_file(PAPER / "evil_debate.json")
    assert [r.transcript.meta["consensus_type"] for r in records] == [r["consensus_type"] for r in raw]
    assert records[0].transcript.meta["consensus_explanation"] == raw[0]["consensus_explanation"]
    assert all(r.transcript.gold is None and r.has_majority for r in records)
    assert {len(r.transcript.agents) for r in records} == {3}
    raw[1]["consensus_type"] = "disagreement"
    (tmp_path / "d.json").write_text(json.dumps(raw))
    assert [r.has_majority for r in read_debate_file(tmp_path / "d.json")][:3] == [True, False, True]


def test_task_mixture_marks_cnn_dailymail_sft_only():
    raw = json.loads((PAPER / "debate_combined.json").read_text())
    records = read_debate_file(PAPER / "debate_combined.json")
    assert len(records) == sum(len(v) for v in raw.values())
    by_task = {}
    for r in records:
        by_task.setdefault(r.transcript.meta["task"], []).append(r.transcript)
    assert set(by_task) == {"arithmetic", "cnn_dailymail"}
    assert all(t.meta.get("sft_only") and t.gold is None for t in by_task["cnn_dailymail"])
    assert all(not t.meta.get("sft_only") and t.gold == r["answer"]
               for t, r in zip(by_task["arithmetic"], raw["arithmetic"]))


def test_our_jsonl_reads_back(tmp_path, tiny_tokenizer):
    problems = arithmetic_split(TaskConfig(n_train=40), "train", 0)[:4]
    recs = run_debates(problems, TeacherBackend(Teacher(), tiny_tokenizer), seed=0)
    back = read_debate_file(save_debates(recs, tmp_path / "t.jsonl"))
    assert [r.transcript.to_dict() for r in back] == [r.transcript.to_dict() for r in recs]
    assert [r.input_tokens for r in back] == [r.input_tokens for r in recs]


@pytest.mark.parametrize("damage, message", [
    (lambda recs: recs[2].pop("debate_trace"), r"record 2: field\(s\) \['debate_trace'\] missing"),
    (lambda recs: recs.__setitem__(3, "just a string"), "record 3: expected an object"),
    (lambda recs: recs[1].__setitem__("debate_trace", recs[1]["debate_trace"].replace("<|endofdebate|>", "")),
     "record 1: .*missing tag <\\|endofdebate\\|>"),
])
def test_malformed_record_names_file_and_index(tmp_path, damage, message):
    recs = json.loads((PAPER / "arithmetic_3_2.json").read_text())
    damage(recs)
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(recs))
    with pytest.raises(DebateFormatError, match=f"{bad}.*{message}"):
        read_debate_file(bad)


def test_mixture_error_names_task_and_index(tmp_path):
    raw = json.loads((PAPER / "debate_combined.json").read_text())
    raw["cnn_dailymail"][1]["trace"] = "no tags here"
    bad = tmp_path / "mix.json"
    bad.write_text(json.dumps(raw))
    with pytest.raises(DebateFormatError, match="task 'cnn_dailymail' record 1: .*text before the first tag"):
        read_debate_file(bad)


def test_unknown_file_type_and_missing_file(tmp_path):
    with pytest.raises(DebateFormatError, match="does not exist"):
        read_debate_file(tmp_path / "nope.json")
    (tmp_path / "d.csv").write_text("a,b\n")
    with pytest.raises(DebateFormatError, match="unsupported type '.csv'"):
        read_debate_file(tmp_path / "d.csv")


class _Dies:
    """A backend that raises on call ``die_at`` (a killed generation) and counts the questions it was asked."""

    def __init__(self, inner, die_at: int | None):
        self.inner, self.die_at, self.calls, self.questions = inner, die_at, 0, []

    def generate(self, requests, *, seed=0):
        self.calls += 1
        if self.calls == self.die_at:
            raise KeyboardInterrupt
        self.questions += [r.question.question for r in requests]
        return self.inner.generate(requests, seed=seed)


def test_killed_generation_resumes_by_question(tmp_path, tiny_tokenizer):
    problems = arithmetic_split(TaskConfig(n_train=60), "train", 1)[:10]
    teacher = TeacherBackend(Teacher(), tiny_tokenizer)
    kw = dict(chunk=4, id_prefix="main", seed=3, log=lambda _: None, early_stop=False)
    whole = run_resumable(problems, teacher, tmp_path / "a.jsonl", **kw)
    part = tmp_path / "b.jsonl"
    with pytest.raises(KeyboardInterrupt):  # dies in the second chunk's first round (calls: 2 per chunk)
        run_resumable(problems, _Dies(teacher, die_at=3), part, **kw)
    assert len(read_partial(part)) == 4
    again = _Dies(teacher, die_at=None)
    resumed = run_resumable(problems, again, part, **kw)
    assert {q for q in again.questions} == {p.question for p in problems[4:]}
    assert [r.transcript.to_dict() for r in resumed] == [r.transcript.to_dict() for r in whole]
    assert [r.transcript.id for r in resumed] == [f"main-3-{i}" for i in range(10)]


def test_partial_file_tolerates_a_cut_last_line_only(tmp_path, tiny_tokenizer):
    problems = arithmetic_split(TaskConfig(n_train=60), "train", 1)[:4]
    part = tmp_path / "p.jsonl"
    run_resumable(problems, TeacherBackend(Teacher(), tiny_tokenizer), part, chunk=2, id_prefix="x",
                  log=lambda _: None)
    lines = part.read_text().splitlines()
    part.write_text("\n".join(lines[:3]) + "\n" + lines[3][:50])
    assert sorted(read_partial(part)) == ["x-0-0", "x-0-1", "x-0-2"]
    part.write_text(lines[0][:50] + "\n" + "\n".join(lines[1:]) + "\n")
    with pytest.raises(DebateFormatError, match="line 1: not a debate record"):
        read_partial(part)


def test_model_source_through_hf_dir_and_endpoint(smoke_base_dir, tmp_path):
    problems = arithmetic_split(TaskConfig(n_train=40), "train", 0)[:2]
    cfg = DebateConfig(source="model", max_new_tokens=6, batch_size=8)
    hf = model_backend(cfg, smoke_base_dir)
    assert isinstance(hf, HFBackend)
    local = run_resumable(problems, hf, tmp_path / "hf.jsonl", chunk=2, id_prefix="m", log=lambda _: None)
    assert all(r.output_tokens > 0 and len(r.calls) >= 3 for r in local)
    with ChatServer(HFBackend(smoke_base_dir, max_new_tokens=6), model_name="tiny") as server:
        api = model_backend(DebateConfig(source="model", base_url=server.url, model="tiny", max_new_tokens=6),
                            "unused")
        assert isinstance(api, OpenAIBackend)
        remote = run_resumable(problems, api, tmp_path / "api.jsonl", chunk=2, id_prefix="m", log=lambda _: None)
    assert [len(r.calls) for r in remote] == [len(r.calls) for r in local]
    assert all(c.output > 0 for r in remote for c in r.calls)


@pytest.mark.parametrize("kw, message", [
    (dict(source="teacher"), "source 'teacher' is unknown"),
    (dict(source="file"), "source 'file' needs path"),
    (dict(source="model", base_url="http://127.0.0.1:1/v1"), "needs model = the endpoint's model name"),
])
def test_debate_source_settings_are_validated(kw, message):
    with pytest.raises(ValueError, match=message):
        DebateConfig(**kw)
