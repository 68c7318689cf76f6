"""Model-written debates: the backend a ``[debate]`` section names, and a resumable run over many questions.

A debate stage at paper scale is hours of generation. `run_resumable` debates the questions a chunk at a time and
appends each finished chunk to a partial JSONL (flushed and synced), so a killed run restarts with the first
question it had not finished; the debate ids depend only on the question's position, never on the chunking.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Callable, Sequence

from lens.debate_format import DebateFormatError, Transcript
from training.backends import Backend, HFBackend, OpenAIBackend
from training.runner import DebateConfig, DebateRecord, record_from_transcript, record_transcript, run_debates


def model_backend(cfg: DebateConfig, model_dir: str | Path, **load) -> Backend:
    """The backend a ``source = "model"`` section names: an OpenAI-compatible endpoint when ``cfg.base_url`` is
    set, else the local HF dir ``cfg.path`` (or ``model_dir``, the run's model), batched with the section's
    sampling knobs.

    Args:
        cfg: the experiment's ``[debate]`` section.
        model_dir: the run's own model, used when ``cfg.path`` is empty.
        **load: passed to `HFBackend` (e.g. ``device``, ``dtype``).

    Returns:
        A `Backend` whose ``generate`` answers `AgentRequest`s.

    Example:
        >>> backend = model_backend(DebateConfig(source="model"), "runs/smoke/base")  # doctest: +SKIP
    """
    if cfg.base_url:
        return OpenAIBackend(cfg.base_url, cfg.model, api_key_env=cfg.api_key_env, max_new_tokens=cfg.max_new_tokens,
                             temperature=cfg.temperature, top_p=cfg.top_p, concurrency=cfg.batch_size)
    return HFBackend(cfg.path or model_dir, max_new_tokens=cfg.max_new_tokens, temperature=cfg.temperature,
                     top_p=cfg.top_p, batch_size=cfg.batch_size, **load)


def append_records(path: str | Path, records: Sequence[DebateRecord]) -> None:
    """Append ``records`` to the JSONL at ``path`` in one write, flushed to disk before returning.

    Args:
        path: The JSONL file (created, with its parent dirs, when missing).
        records: The finished debates, stored as `training.runner.record_transcript` writes them.

    Returns:
        None.

    Example:
        >>> append_records("runs/toy/debates/main.partial/resume/train.partial.jsonl", records)  # doctest: +SKIP
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    text = "".join(json.dumps(record_transcript(r).to_dict()) + "\n" for r in records)
    with path.open("a") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())


def read_partial(path: str | Path) -> dict[str, DebateRecord]:
    """The debates a killed run finished, by id. A last line cut off mid-write is dropped (its chunk reruns);
    a bad line before it is corruption, and an error naming the line.

    Args:
        path: The partial JSONL (`append_records`'); a missing file reads as empty.

    Returns:
        ``{debate id: DebateRecord}``, the first record of each id.

    Raises:
        DebateFormatError: a line other than the last is not a debate record.

    Example:
        >>> len(read_partial("runs/toy/debates/main.partial/resume/train.partial.jsonl"))  # doctest: +SKIP
        128
    """
    path = Path(path)
    if not path.is_file():
        return {}
    lines = path.read_text().splitlines()
    done: dict[str, DebateRecord] = {}
    for i, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            t = Transcript.from_dict(json.loads(line))
        except (json.JSONDecodeError, KeyError, TypeError, DebateFormatError) as e:
            if i == len(lines) - 1:
                break
            raise DebateFormatError(f"{path} line {i + 1}: not a debate record ({e}); delete the file to "
                                    "rewrite every debate") from None
        done.setdefault(str(t.id), record_from_transcript(t))
    return done


def run_resumable(questions: Sequence[object], backend: Backend, partial: str | Path, *, chunk: int,
                  id_prefix: str, seed: int = 0, log: Callable[[str], None] = print,
                  **debate_kwargs) -> list[DebateRecord]:
    """Debate ``questions`` through ``backend`` ``chunk`` questions at a time, skipping those already in
    ``partial`` and appending each new chunk to it; returns every record in question order.

    Args:
        questions: what to debate (strings or question objects).
        backend: who writes the turns.
        partial: the JSONL finished debates are appended to (kept between killed runs).
        chunk: questions per backend call batch (and per append).
        id_prefix: the ids' prefix; debate ``i`` is ``{id_prefix}-{seed}-{i}``.
        seed: the debates' sampling seed.
        log: progress lines.
        **debate_kwargs: `training.runner.run_debates` options (personas, domain, malicious, ...).

    Returns:
        One record per question, in order.

    Example:
        >>> recs = run_resumable(qs, backend, "debates.partial.jsonl", chunk=64, id_prefix="main")  # doctest: +SKIP
    """
    done = read_partial(partial)
    ids = [f"{id_prefix}-{seed}-{i}" for i in range(len(questions))]
    reused = sum(i in done for i in ids)
    if reused:
        log(f"[debates] {reused} of {len(questions)} debates already written to {partial}; continuing")
    for start in range(0, len(questions), chunk):
        if all(i in done for i in ids[start:start + chunk]):
            continue
        records = run_debates(questions[start:start + chunk], backend, id_prefix=id_prefix, seed=seed,
                              first_index=start, **debate_kwargs)
        append_records(partial, records)
        done.update((r.transcript.id, r) for r in records)
        log(f"[debates] {min(start + chunk, len(questions))}/{len(questions)} debates written")
    return [done[i] for i in ids]
