"""Debates someone already has: the paper's released files and our own JSONL, read into `DebateRecord`s.

Formats (PAPER.md §2, §5.4, §7.1), told apart by their shape:

- ``.jsonl``: our own debates (`training.runner.save_debates`), one transcript per line.
- a JSON list of ``{question, debate_trace, gold_answer}`` (``data/arithmetic_3_2*.json``);
- the same list with ``consensus_type`` / ``consensus_explanation`` and no gold (the malicious debates,
  ``data/{evil,hallu}_debate.json``): both fields are kept in each transcript's ``meta``, and a
  ``disagreement`` consensus counts as no majority;
- a JSON dict keyed by task, each a list of ``{task, question, trace, answer}`` (the multi-task mixture
  ``data/debate_combined.json``): the task goes to ``meta["task"]``; CNN/DailyMail traces are marked
  ``meta["sft_only"]``, since the paper leaves them out of RL (no computable reward).

A malformed record is one `DebateFormatError` naming the file and the record's index (and task).
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from lens.debate_format import DebateFormatError, Transcript, parse_trace
from training.runner import DebateRecord, load_debates

SFT_ONLY_TASK = re.compile(r"cnn|dailymail|daily_mail", re.IGNORECASE)
NO_MAJORITY_TYPES = ("disagreement", "no consensus", "none")


def read_debate_file(path: str | Path) -> list[DebateRecord]:
    """Every debate in ``path`` (any format above) as records, in file order.

    Args:
        path: a ``.jsonl`` file of our transcripts or a ``.json`` file in one of the paper's formats.

    Returns:
        One `DebateRecord` per debate; ``has_majority`` is False only for a consensus the record says was none.

    Example:
        >>> records = read_debate_file("data/arithmetic_3_2.json")  # doctest: +SKIP
        >>> records[0].transcript.gold  # doctest: +SKIP
        '-982'
    """
    path = Path(path)
    if not path.is_file():
        raise DebateFormatError(f"debate file {str(path)!r} does not exist; [debate] path must name a .json or "
                                ".jsonl file of debates")
    if path.suffix == ".jsonl":
        return load_debates(path)
    if path.suffix != ".json":
        raise DebateFormatError(f"debate file {path}: unsupported type {path.suffix!r}; use the paper's .json "
                                "formats or our .jsonl")
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as e:
        raise DebateFormatError(f"debate file {path} is not readable JSON ({e})") from None
    if isinstance(data, list):
        return [_list_record(path, i, rec) for i, rec in enumerate(data)]
    if isinstance(data, dict):
        out = []
        for task, records in data.items():
            if not isinstance(records, list):
                raise DebateFormatError(f"debate file {path}: task {task!r} holds a {type(records).__name__}, "
                                        "expected a list of {task, question, trace, answer} records")
            out += [_task_record(path, task, i, rec) for i, rec in enumerate(records)]
        return out
    raise DebateFormatError(f"debate file {path}: expected a JSON list of debates or a dict keyed by task, got "
                            f"{type(data).__name__}")


def _fields(path: Path, where: str, rec: object, required: tuple[str, ...]) -> dict:
    if not isinstance(rec, dict):
        raise DebateFormatError(f"{path} {where}: expected an object with fields {list(required)}, got "
                                f"{type(rec).__name__}")
    missing = [k for k in required if not isinstance(rec.get(k), str) or not rec[k].strip()]
    if missing:
        raise DebateFormatError(f"{path} {where}: field(s) {missing} missing or not a non-empty string; a record "
                                f"needs {list(required)}")
    return rec


def _parse(path: Path, where: str, trace: str, question: str, gold: object, id: str) -> Transcript:
    try:
        return parse_trace(trace, question=question, gold=None if gold in (None, "") else str(gold), id=id)
    except DebateFormatError as e:
        raise DebateFormatError(f"{path} {where}: {e}") from None


def _list_record(path: Path, i: int, rec: object) -> DebateRecord:
    where = f"record {i}"
    rec = _fields(path, where, rec, ("question", "debate_trace"))
    t = _parse(path, where, rec["debate_trace"], rec["question"], rec.get("gold_answer"), f"{path.stem}-{i}")
    t.meta = {"source_file": path.name, "source_index": i}
    majority = t.consensus_answer is not None if t.gold is not None else True
    if "consensus_type" in rec:
        t.meta["consensus_type"] = rec["consensus_type"]
        t.meta["consensus_explanation"] = rec.get("consensus_explanation")
        majority = str(rec["consensus_type"]).strip().lower() not in NO_MAJORITY_TYPES
    return DebateRecord(t, majority)


def _task_record(path: Path, task: str, i: int, rec: object) -> DebateRecord:
    where = f"task {task!r} record {i}"
    rec = _fields(path, where, rec, ("question", "trace"))
    name = str(rec.get("task") or task)
    t = _parse(path, where, rec["trace"], rec["question"], rec.get("answer"), f"{path.stem}-{task}-{i}")
    t.meta = {"source_file": path.name, "source_index": i, "task": name}
    sft_only = bool(SFT_ONLY_TASK.search(name))
    if sft_only:
        t.meta["sft_only"] = True
        t.gold = None  # a summary is not an exact-match answer
    return DebateRecord(t, sft_only or t.gold is None or t.consensus_answer is not None)
