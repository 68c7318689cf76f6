"""The debate format every part of latent-agents shares: the paper's 10 tags, transcripts, render/parse.

The runner writes it, stage 1 trains on it, and lens finds agent turns in it. Rendering follows the paper's
released traces exactly (``<|Agent 1 Solution|>: text`` blocks separated by blank lines, a consensus line, then
``<|endofdebate|>``), so the paper's own JSON files parse and re-render byte for byte.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Iterable, Iterator, Sequence

from lens.errors import LensInputError
from lens.io import atomic_write_text

ROUND_TAGS = ("<|Round 1 - Initial Solutions|>", "<|Round 2 - Revision|>")
SOLUTION_TAGS = ("<|Agent 1 Solution|>", "<|Agent 2 Solution|>", "<|Agent 3 Solution|>")
REVISION_TAGS = ("<|Agent 1 Revision|>", "<|Agent 2 Revision|>", "<|Agent 3 Revision|>")
CONSENSUS_TAG = "<|Consensus|>"
END_TAG = "<|endofdebate|>"
DEBATE_TAGS: tuple[str, ...] = (*ROUND_TAGS, *SOLUTION_TAGS, *REVISION_TAGS, CONSENSUS_TAG, END_TAG)
MAX_AGENTS = len(SOLUTION_TAGS)
MAX_ROUNDS = len(ROUND_TAGS)

PROBLEM_PREFIX = "Problem: {question}\n\n"
FULL_CONSENSUS = "All agents reached a consensus of \\boxed{{{answer}}}"
MAJORITY_CONSENSUS = "A majority of agents converged on the solution of \\boxed{{{answer}}}"

_TAG_RE = re.compile("|".join(re.escape(t) for t in DEBATE_TAGS))
_BOXED_RE = re.compile(r"\\boxed\{")


class DebateFormatError(LensInputError):
    """A transcript that breaks the debate format; the message names the trace and the problem."""


def agent_tag(agent: int, round_: int) -> str:
    """The tag opening agent ``agent``'s turn (1-based) in round ``round_`` (1-based).

    Args:
        agent: The agent, 1..3.
        round_: The round, 1 or 2.

    Returns:
        The paper's tag.

    Raises:
        DebateFormatError: the agent or round is out of range.

    Example:
        >>> agent_tag(2, 2)
        '<|Agent 2 Revision|>'
    """
    if not 1 <= agent <= MAX_AGENTS:
        raise DebateFormatError(f"agent {agent} is out of range: agents are numbered 1..{MAX_AGENTS}")
    if round_ not in (1, 2):
        raise DebateFormatError(f"round {round_} is out of range: rounds are 1 or 2")
    return (SOLUTION_TAGS if round_ == 1 else REVISION_TAGS)[agent - 1]


def _tag_meaning(tag: str) -> tuple[str, int, int]:
    """(kind, agent, round) for a tag: kind is round/turn/consensus/end."""
    if tag in ROUND_TAGS:
        return "round", 0, ROUND_TAGS.index(tag) + 1
    if tag in SOLUTION_TAGS:
        return "turn", SOLUTION_TAGS.index(tag) + 1, 1
    if tag in REVISION_TAGS:
        return "turn", REVISION_TAGS.index(tag) + 1, 2
    return ("consensus" if tag == CONSENSUS_TAG else "end"), 0, 0


def extract_boxed(text: str) -> str | None:
    r"""The content of the last ``\boxed{...}`` (nested braces allowed; ``\(\boxed{x}\)`` works too).

    Args:
        text: A response.

    Returns:
        The boxed answer, normalised by `normalize_answer`; ``None`` when nothing is boxed.

    Example:
        >>> extract_boxed(r"2+3=5, so \boxed{1,005.} and then \boxed{ 12 }")
        '12'
    """
    found = None
    for m in _BOXED_RE.finditer(text):
        depth, i = 1, m.end()
        while i < len(text) and depth:
            depth += {"{": 1, "}": -1}.get(text[i], 0)
            i += 1
        if depth == 0:
            found = text[m.end() : i - 1]
    return None if found is None else normalize_answer(found)


def normalize_answer(answer: str) -> str:
    """Canonical answer string for exact match: no spaces, no thousands commas, no trailing period, ``-`` minus.

    Args:
        answer: An answer as written.

    Returns:
        The canonical string (numbers lose their commas and trailing period; other answers keep their text).

    Example:
        >>> normalize_answer(" \u22121,234. ")
        '-1234'
    """
    a = answer.strip().strip("$").replace("\u2212", "-").replace(" ", "")
    if re.fullmatch(r"-?[\d,]+(\.\d+)?\.?", a):
        a = a.replace(",", "").rstrip(".")
    return a


def majority(answers: Sequence[str | None]) -> str | None:
    """The answer held by more than half of ``answers`` (``None`` answers count against), else ``None``.

    Args:
        answers: One answer per agent (``None``: the agent gave none).

    Returns:
        The strict-majority answer, or ``None``.

    Example:
        >>> majority(["7", None, "7"]), majority(["7", None, "5"])
        ('7', None)
    """
    counts = Counter(a for a in answers if a is not None)
    if not counts:
        return None
    top, n = counts.most_common(1)[0]
    return top if n * 2 > len(answers) else None


def consensus_line(answers: Sequence[str | None]) -> str | None:
    r"""The paper's consensus sentence for the final-round ``answers``, or ``None`` when there is no majority.

    Args:
        answers: The agents' final-round answers.

    Returns:
        The full-consensus sentence when all agree, the majority sentence when more than half do, else ``None``.

    Example:
        >>> consensus_line(["7", "7", "5"])
        'A majority of agents converged on the solution of \\boxed{7}'
    """
    top = majority(answers)
    if top is None:
        return None
    template = FULL_CONSENSUS if all(a == top for a in answers) else MAJORITY_CONSENSUS
    return template.format(answer=top)


@dataclass(frozen=True)
class Turn:
    """One agent's turn: its round (1 or 2), agent id (1-based), verbatim text and the persona that wrote it."""

    round: int
    agent: int
    text: str
    persona: str | None = None

    @property
    def tag(self) -> str:
        return agent_tag(self.agent, self.round)

    @property
    def answer(self) -> str | None:
        return extract_boxed(self.text)


@dataclass(frozen=True)
class TurnSpan:
    """Where a turn sits in a rendered text: character offsets of its text (``end`` is exclusive)."""

    turn: Turn
    start: int
    end: int


@dataclass
class Transcript:
    """A whole debate: question, turns in order, the consensus sentence, gold answer and agent personas."""

    question: str
    turns: list[Turn]
    consensus: str
    gold: str | None = None
    personas: tuple[str, ...] | None = None
    id: str | None = None
    meta: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.personas is not None:
            self.personas = tuple(self.personas)
        validate(self)

    @property
    def name(self) -> str:
        return self.id if self.id is not None else repr(self.question[:40])

    @property
    def agents(self) -> tuple[int, ...]:
        return tuple(sorted({t.agent for t in self.turns}))

    @property
    def n_rounds(self) -> int:
        return max(t.round for t in self.turns)

    @property
    def consensus_answer(self) -> str | None:
        return extract_boxed(self.consensus)

    @property
    def correct(self) -> bool | None:
        return None if self.gold is None else self.consensus_answer == normalize_answer(self.gold)

    def round_turns(self, round_: int) -> list[Turn]:
        """The turns of one round, in agent order.

        Args:
            round_: The round (1 = the first).

        Returns:
            Its turns (empty when the debate stopped earlier).

        Example:
            >>> [t.agent for t in transcript.round_turns(2)]  # doctest: +SKIP
            [1, 2, 3]
        """
        return [t for t in self.turns if t.round == round_]

    def persona_of(self, agent: int) -> str | None:
        """The persona an agent was given.

        Args:
            agent: The agent (1 = the first).

        Returns:
            Its persona, or ``None`` when the transcript records no personas or none for this agent.

        Example:
            >>> transcript.persona_of(2)  # doctest: +SKIP
            'critic'
        """
        return None if self.personas is None or agent > len(self.personas) else self.personas[agent - 1]

    def to_dict(self) -> dict:
        d = asdict(self)
        d["personas"] = list(self.personas) if self.personas is not None else None
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "Transcript":
        turns = [Turn(**t) for t in d["turns"]]
        return cls(question=d["question"], turns=turns, consensus=d["consensus"], gold=d.get("gold"),
                   personas=d.get("personas"), id=d.get("id"), meta=d.get("meta") or {})


def validate(t: Transcript) -> None:
    """Raise `DebateFormatError` unless rounds and agents come in order, and no turn or consensus is empty.

    Args:
        t: The transcript (`Transcript` validates itself when built, so this matters for one changed in place).

    Raises:
        DebateFormatError: one sentence naming the trace and the problem.

    Example:
        >>> validate(transcript)  # doctest: +SKIP
    """
    if not t.turns:
        raise DebateFormatError(f"trace {t.name}: has no agent turns; a debate needs at least Agent 1's solution")
    expected_round, last_agent = 1, 0
    for turn in t.turns:
        if turn.round not in (1, 2):
            raise DebateFormatError(f"trace {t.name}: round {turn.round} is invalid; rounds are 1 or 2")
        if turn.round != expected_round:
            if turn.round == expected_round + 1 and last_agent > 0:
                expected_round, last_agent = turn.round, 0
            else:
                raise DebateFormatError(f"trace {t.name}: round {turn.round} turn appears out of order")
        if turn.agent != last_agent + 1:
            raise DebateFormatError(
                f"trace {t.name}: agent {turn.agent} out of order in round {turn.round} "
                f"(expected agent {last_agent + 1})")
        if turn.agent > MAX_AGENTS:
            raise DebateFormatError(f"trace {t.name}: agent {turn.agent} exceeds the {MAX_AGENTS} agents the tags name")
        if not turn.text.strip():
            raise DebateFormatError(f"trace {t.name}: agent {turn.agent}'s round-{turn.round} turn is empty")
        last_agent = turn.agent
    if not t.consensus.strip():
        raise DebateFormatError(f"trace {t.name}: the consensus is empty")


def render_trace(t: Transcript) -> str:
    r"""The paper's trace text for ``t`` (no ``Problem:`` prefix).

    Args:
        t: The transcript.

    Returns:
        Tagged text exactly as the paper's released traces are written; `parse_trace` reads it back.

    Example:
        >>> t = Transcript("1+1", [Turn(1, 1, "\\boxed{2}")], "All agents reached a consensus of \\boxed{2}")
        >>> print(render_trace(t))
        <|Round 1 - Initial Solutions|>
        <BLANKLINE>
        <|Agent 1 Solution|>: \boxed{2}
        <BLANKLINE>
        <|Consensus|>
        All agents reached a consensus of \boxed{2}
        <BLANKLINE>
        <|endofdebate|>
    """
    return "".join(_render_parts(t))


def _render_parts(t: Transcript) -> Iterator[str]:
    for round_ in range(1, t.n_rounds + 1):
        yield ROUND_TAGS[round_ - 1] + "\n\n"
        for turn in t.round_turns(round_):
            yield turn.tag + ": "
            yield turn.text
            yield "\n\n"
    yield CONSENSUS_TAG + "\n"
    yield t.consensus
    yield "\n\n" + END_TAG


def prompt_text(question: str) -> str:
    r"""The prompt stage 1, stage 2 and steering share: ``Problem: {q}\n\n``.

    Args:
        question: The question.

    Returns:
        The prompt text.

    Example:
        >>> prompt_text("2+3*4")
        'Problem: 2+3*4\n\n'
    """
    return PROBLEM_PREFIX.format(question=question)


def training_text(t: Transcript) -> str:
    """Prompt plus trace: what stage 1 trains on (the prompt part is masked).

    Args:
        t: The transcript.

    Returns:
        `prompt_text` of its question followed by `render_trace`.

    Example:
        >>> training_text(transcript).startswith("Problem: ")  # doctest: +SKIP
        True
    """
    return prompt_text(t.question) + render_trace(t)


def turn_spans(t: Transcript, *, with_prompt: bool = True) -> list[TurnSpan]:
    r"""Character spans of every turn's text within `training_text` (or `render_trace` without the prompt).

    Args:
        t: The transcript.
        with_prompt: Offsets into `training_text` (default) or into `render_trace`.

    Returns:
        One `TurnSpan` per turn, in order; ``text[span.start:span.end] == span.turn.text``.

    Example:
        >>> t = Transcript("1+1", [Turn(1, 1, "\\boxed{2}")], "All agents reached a consensus of \\boxed{2}")
        >>> s = turn_spans(t)[0]
        >>> training_text(t)[s.start:s.end]
        '\\boxed{2}'
    """
    pos = len(prompt_text(t.question)) if with_prompt else 0
    spans, turns = [], iter(t.turns)
    parts = list(_render_parts(t))
    for i, part in enumerate(parts):
        if i > 0 and parts[i - 1].endswith(": ") and parts[i - 1][:-2] in DEBATE_TAGS:
            spans.append(TurnSpan(next(turns), pos, pos + len(part)))
        pos += len(part)
    return spans


def parse_trace(trace: str, *, question: str, gold: str | None = None, personas: Sequence[str] | None = None,
                id: str | None = None) -> Transcript:
    """Parse the paper's trace text back into a `Transcript`; `render_trace` gives ``trace`` back exactly.

    Args:
        trace: The tagged trace (the paper's ``debate_trace``).
        question: The question it debates.
        gold: The gold answer, if known.
        personas: The agents' personas, if known (agent 1 first).
        id: A name for error messages and for the transcript.

    Returns:
        The transcript.

    Raises:
        DebateFormatError: text outside the tags, missing or misplaced tags, or turns out of order, naming the trace.

    Example:
        >>> t = parse_trace(render_trace(transcript), question=transcript.question)  # doctest: +SKIP
        >>> render_trace(t) == render_trace(transcript)  # doctest: +SKIP
        True
    """
    name = id if id is not None else repr(question[:40])
    pieces = _TAG_RE.split(trace)
    tags = _TAG_RE.findall(trace)
    if pieces[0].strip():
        raise DebateFormatError(f"trace {name}: text before the first tag: {pieces[0][:40]!r}")
    if not tags or tags[0] != ROUND_TAGS[0]:
        raise DebateFormatError(f"trace {name}: missing tag {ROUND_TAGS[0]} at the start")
    for required in (CONSENSUS_TAG, END_TAG):
        if required not in tags:
            raise DebateFormatError(f"trace {name}: missing tag {required}")
    if tags[-1] != END_TAG or pieces[-1].strip():
        raise DebateFormatError(f"trace {name}: {END_TAG} must close the trace")
    turns, consensus, round_ = [], None, 0
    for tag, body in zip(tags, pieces[1:]):
        kind, agent, r = _tag_meaning(tag)
        if kind == "round":
            round_ = r
        elif kind == "turn":
            if r != round_:
                raise DebateFormatError(f"trace {name}: {tag} appears outside round {r}")
            text = body[1:] if body.startswith(":") else body
            text = text[1:] if text.startswith(" ") else text
            text = text[:-2] if text.endswith("\n\n") else text
            persona = personas[agent - 1] if personas is not None and agent <= len(personas) else None
            turns.append(Turn(r, agent, text, persona))
        elif kind == "consensus":
            if consensus is not None:
                raise DebateFormatError(f"trace {name}: more than one {CONSENSUS_TAG}")
            body = body[1:] if body.startswith("\n") else body
            consensus = body[:-2] if body.endswith("\n\n") else body
    return Transcript(question=question, turns=turns, consensus=consensus or "", gold=gold,
                      personas=tuple(personas) if personas is not None else None, id=id)


def _read_text(path: Path, expected: str) -> str:
    """The file's text, or one sentence naming the file and the problem (missing, empty, not UTF-8 at line N)."""
    if not path.is_file():
        raise DebateFormatError(f"{path}: no such file; expected {expected}")
    data = path.read_bytes()
    if not data.strip():
        raise DebateFormatError(f"{path}: the file is empty; expected {expected}")
    for i, line in enumerate(data.split(b"\n")):
        try:
            line.decode("utf-8")
        except UnicodeDecodeError as e:
            raise DebateFormatError(f"{path} line {i + 1}: not valid UTF-8 (byte 0x{line[e.start]:02x} at column "
                                    f"{e.start + 1}); save the file as UTF-8") from None
    return data.decode("utf-8")


def read_paper_json(path: str | Path) -> list[Transcript]:
    """Read the paper's debate file (a JSON list of ``{question, debate_trace, gold_answer}``).

    Args:
        path: The JSON file.

    Returns:
        One `Transcript` per record, with id ``"<file name>#<index>"``.

    Raises:
        DebateFormatError: a missing, empty, non-UTF-8 or malformed file, or a record that is not a debate, named
            by file and line or record.

    Example:
        >>> read_paper_json("llama_debates.json")[0].agents  # doctest: +SKIP
        (1, 2, 3)
    """
    path = Path(path)
    text = _read_text(path, "a JSON list of debate records")
    try:
        records = json.loads(text)
    except json.JSONDecodeError as e:
        raise DebateFormatError(f"{path} line {e.lineno}: not valid JSON ({e.msg}, column {e.colno})") from None
    if not isinstance(records, list):
        raise DebateFormatError(f"{path}: expected a JSON list of debate records, got {type(records).__name__}")
    out = []
    for i, rec in enumerate(records):
        if not isinstance(rec, dict):
            raise DebateFormatError(f"{path} record {i}: expected an object with question and debate_trace, got "
                                    f"{type(rec).__name__}")
        missing = {"question", "debate_trace"} - set(rec)
        if missing:
            raise DebateFormatError(f"{path} record {i}: missing field(s) {sorted(missing)}")
        gold = rec.get("gold_answer")
        out.append(parse_trace(rec["debate_trace"], question=rec["question"],
                               gold=None if gold is None else str(gold), id=f"{path.name}#{i}"))
    return out


def write_jsonl(transcripts: Iterable[Transcript], path: str | Path) -> Path:
    """Write transcripts as JSONL atomically (temp file, then rename).

    Args:
        transcripts: The transcripts.
        path: The file to write.

    Returns:
        The path written (`read_jsonl` reads it back).

    Example:
        >>> write_jsonl(transcripts, "debates.jsonl")  # doctest: +SKIP
        PosixPath('debates.jsonl')
    """
    return atomic_write_text(path, "".join(json.dumps(t.to_dict()) + "\n" for t in transcripts))


def read_jsonl(path: str | Path) -> list[Transcript]:
    """Read transcripts written by `write_jsonl` (one JSON object per line; blank lines are skipped).

    Args:
        path: The JSONL file.

    Returns:
        The transcripts, in file order.

    Raises:
        DebateFormatError: a missing, empty, non-UTF-8 file, or a line that is not a transcript record, named by
            file and line.

    Example:
        >>> [t.id for t in read_jsonl("debates.jsonl")][:2]  # doctest: +SKIP
        ['q0', 'q1']
    """
    path = Path(path)
    text = _read_text(path, "one JSON transcript record per line")
    out = []
    for i, line in enumerate(text.splitlines()):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as e:
            raise DebateFormatError(f"{path} line {i + 1}: not valid JSON ({e.msg}, column {e.colno})") from None
        try:
            out.append(Transcript.from_dict(record))
        except DebateFormatError as e:
            raise DebateFormatError(f"{path} line {i + 1}: {e}") from None
        except (KeyError, TypeError, AttributeError) as e:
            raise DebateFormatError(f"{path} line {i + 1}: not a transcript record ({type(e).__name__}: {e})") from None
    return out
