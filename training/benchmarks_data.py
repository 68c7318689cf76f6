"""The paper's benchmarks, offline: GSM8K, MMLU-Pro and five BBH tasks, from the local HF cache or a local file.

Nothing is downloaded: a dataset that is neither cached nor given as ``data_file`` (json, jsonl or parquet) is one
clear error naming the dataset id and how to fetch it. The cache is read in the Hub's offline mode even when
``transformers`` or ``datasets`` was imported before this module (as in a notebook), unless the environment opts in
to downloads with ``HF_HUB_OFFLINE=0``. Each question knows how its answer is matched (§5.2):
GSM8K compares the number after ``#### ``, MMLU-Pro the option letter, BBH the target with parentheses
stripped, lowercased.
"""

from __future__ import annotations

import contextlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from lens.debate_format import normalize_answer
from training.errors import UserError

BBH_TASKS = ("formal_fallacies", "logical_deduction_five_objects", "tracking_shuffled_objects_five_objects",
             "causal_judgement", "web_of_lies")
LETTERS = "ABCDEFGHIJKLMNOP"


class BenchmarkDataError(UserError, ValueError):
    """A benchmark that cannot be loaded offline; the message says what to fetch."""


@dataclass(frozen=True)
class BenchmarkQuestion:
    """One benchmark item: prompt text (options included), gold answer, and how predictions are matched."""

    question: str
    answer: str
    benchmark: str
    task: str | None = None

    def matches(self, pred: str | None) -> bool:
        """Whether ``pred`` is this item's answer under its benchmark's rule (the module docstring's).

        Args:
            pred: A predicted answer (``None``: no answer).

        Returns:
            True for a match; False for ``None``.

        Example:
            >>> from training.benchmarks_data import BenchmarkQuestion
            >>> BenchmarkQuestion("Which option is valid?", "(A)", "bbh").matches("a")
            True
        """
        return pred is not None and _key(self.benchmark, pred) == _key(self.benchmark, self.answer)


def _key(benchmark: str, answer: str) -> str:
    a = normalize_answer(answer)
    if benchmark == "bbh":
        return a.replace("(", "").replace(")", "").lower()
    if benchmark == "mmlu_pro":
        return a.strip("()").upper()
    return a


def _gsm8k(row: dict, task: str | None) -> BenchmarkQuestion:
    if "####" not in row["answer"]:
        raise BenchmarkDataError(f"GSM8K answer without '#### ': {row['answer'][:60]!r}")
    return BenchmarkQuestion(row["question"], normalize_answer(row["answer"].split("####")[-1]), "gsm8k")


def _mmlu_pro(row: dict, task: str | None) -> BenchmarkQuestion:
    options = "\n".join(f"{LETTERS[i]}) {o}" for i, o in enumerate(row["options"]))
    return BenchmarkQuestion(f"{row['question']}\n\nOptions:\n{options}", str(row["answer"]).strip(), "mmlu_pro",
                             row.get("category"))


def _bbh(row: dict, task: str | None) -> BenchmarkQuestion:
    return BenchmarkQuestion(row["input"], str(row["target"]).strip(), "bbh", row.get("task", task))


@dataclass(frozen=True)
class _Spec:
    hf_ids: tuple[str, ...]
    config: str | None
    split: str
    fields: tuple[str, ...]
    parse: Callable[[dict, str | None], BenchmarkQuestion]


BENCHMARKS = {
    "gsm8k": _Spec(("openai/gsm8k", "gsm8k"), "main", "test", ("question", "answer"), _gsm8k),
    "mmlu_pro": _Spec(("TIGER-Lab/MMLU-Pro",), None, "test", ("question", "options", "answer"), _mmlu_pro),
    "bbh": _Spec(("maveriq/bigbenchhard",), None, "train", ("input", "target"), _bbh),
}


def _read_file(path: Path) -> list[dict]:
    if not path.is_file():
        raise BenchmarkDataError(f"data file {str(path)!r} does not exist")
    if path.suffix == ".parquet":
        import pyarrow.parquet as pq

        return pq.read_table(path).to_pylist()
    text = path.read_text()
    if path.suffix == ".jsonl":
        return [json.loads(line) for line in text.splitlines() if line.strip()]
    if path.suffix == ".json":
        data = json.loads(text)
        if isinstance(data, list):
            return data
        raise BenchmarkDataError(f"{path}: expected a JSON list of records, got {type(data).__name__}")
    raise BenchmarkDataError(f"{path}: unsupported data file type {path.suffix!r}; use .json, .jsonl or .parquet")


def _fetch_hint(name: str, spec: _Spec) -> str:
    return (f"benchmark {name!r} (Hugging Face dataset {spec.hf_ids[0]!r}) is not in the local cache; run "
            f"`huggingface-cli download --repo-type dataset {spec.hf_ids[0]}` on a machine with internet and copy "
            f"the cache here, or pass a local json/jsonl/parquet file as data_file (--data-file)")


@contextlib.contextmanager
def offline_hub():
    """The Hugging Face Hub's offline mode for the duration of the block, whatever was imported before.

    ``huggingface_hub`` and ``datasets`` read ``HF_HUB_OFFLINE`` once, when first imported, so setting the variable
    later (a notebook that imported ``transformers`` first) does not stop ``datasets.load_dataset`` from asking the
    Hub, with five retries, before it reads the cache. This sets both libraries' flags for the block and restores
    them after. A user who set ``HF_HUB_OFFLINE=0`` (or another false value) keeps downloads on.

    Yields:
        None.

    Example:
        >>> from training.benchmarks_data import offline_hub
        >>> import datasets, huggingface_hub.constants as hub
        >>> with offline_hub():
        ...     datasets.config.HF_HUB_OFFLINE and hub.is_offline_mode()
        True
    """
    import datasets
    from huggingface_hub import constants

    if os.environ.get("HF_HUB_OFFLINE", "1").strip().lower() in ("0", "false", "no", "off"):
        yield
        return
    saved = constants.HF_HUB_OFFLINE, datasets.config.HF_HUB_OFFLINE
    constants.HF_HUB_OFFLINE = datasets.config.HF_HUB_OFFLINE = True
    try:
        yield
    finally:
        constants.HF_HUB_OFFLINE, datasets.config.HF_HUB_OFFLINE = saved


def _from_cache(name: str, spec: _Spec, config: str | None, cache_dir: str | None) -> list[dict]:
    import datasets

    with offline_hub():
        for hf_id in spec.hf_ids:
            try:
                return list(datasets.load_dataset(hf_id, config, split=spec.split, cache_dir=cache_dir))
            except (ConnectionError, FileNotFoundError, ValueError, OSError):
                continue
    raise BenchmarkDataError(_fetch_hint(name, spec))


def load_benchmark(name: str, *, data_file: str | Path | None = None, cache_dir: str | None = None,
                   tasks: tuple[str, ...] | None = None) -> list[BenchmarkQuestion]:
    """All items of benchmark ``name`` (``gsm8k``, ``mmlu_pro`` or ``bbh``), from ``data_file`` or the HF cache.

    BBH loads ``tasks`` (default: the paper's five); a BBH file may carry a ``task`` field to filter on.

    Args:
        name: ``gsm8k``, ``mmlu_pro`` or ``bbh``.
        data_file: A local json, jsonl or parquet file of the benchmark's records (``None``: the local HF cache).
        cache_dir: The HF datasets cache to read (``None``: the default one).
        tasks: The BBH tasks (``None``: `BBH_TASKS`); ignored for the other benchmarks.

    Returns:
        One `BenchmarkQuestion` per record, in order.

    Raises:
        BenchmarkDataError: an unknown benchmark, a missing or unsupported file, a dataset not in the cache, no
            items, or records without the benchmark's fields.

    Example:
        >>> import json
        >>> from training.benchmarks_data import load_benchmark
        >>> with open("gsm8k.jsonl", "w") as f:
        ...     _ = f.write(json.dumps({"question": "What is 2+2?", "answer": "2+2=4\\n#### 4"}) + "\\n")
        >>> load_benchmark("gsm8k", data_file="gsm8k.jsonl")[0].answer
        '4'
    """
    if name not in BENCHMARKS:
        raise BenchmarkDataError(f"unknown benchmark {name!r}; valid: {sorted(BENCHMARKS)}")
    spec = BENCHMARKS[name]
    tasks = tuple(tasks or BBH_TASKS) if name == "bbh" else (None,)
    rows: list[tuple[dict, str | None]] = []
    if data_file is not None:
        records = _read_file(Path(data_file))
        rows = [(r, None) for r in records if name != "bbh" or r.get("task") in (None, *tasks)]
    else:
        for task in tasks:
            rows += [(r, task) for r in _from_cache(name, spec, task or spec.config, cache_dir)]
    if not rows:
        raise BenchmarkDataError(f"benchmark {name!r}: no items loaded from {data_file or spec.hf_ids[0]}")
    missing = [f for f in spec.fields if f not in rows[0][0]]
    if missing:
        raise BenchmarkDataError(f"benchmark {name!r}: records lack field(s) {missing}; expected {list(spec.fields)}")
    return [spec.parse(r, task) for r, task in rows]
