"""The Du et al. debate protocol: agents answer independently, then revise after reading each other; majority wins.

Every round is one batched backend call across all questions × agents. Debates where round 1 is already
unanimous stop early (as the paper's generators do); debates without a final-round majority are kept in the
records (flagged) but dropped from training data by `training_transcripts`.
"""

from __future__ import annotations

import random
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Literal, Sequence

from lens.debate_format import (FULL_CONSENSUS, MAX_AGENTS, MAX_ROUNDS, DebateFormatError, Transcript, Turn,
                                consensus_line, extract_boxed, read_jsonl, write_jsonl)
from lens.io import atomic_write_json
from training.backends import AgentRequest, Backend
from training.prompts import (ADVICE, ARITHMETIC, BOXED_DOMAINS, SYSTEM_PROMPTS, round1_messages,
                              round2_messages)
from training.schema import AT_LEAST_ONE, NON_EMPTY, NON_NEGATIVE, bounds
from training.teacher import TRAIT_PERSONAS

EMPTY_TURN = "(no response)"  # stands in for an empty reply, which the debate format cannot hold
NO_MAJORITY = "The agents did not reach a majority."
ADVICE_CONSENSUS = "A majority of agents converged on this answer: {text}"
DEFAULT_PERSONAS = ("analyst", "critic", "programmer")
DEBATE_SOURCES = ("scripted", "model", "file")


@dataclass(frozen=True)
class DebateSetup:
    """What one experiment's debates look like: agent personas, malicious slot, domain, how many to run."""

    personas: tuple[str, ...]
    malicious: dict[int, str] | None
    domain: str
    n_debates: int


@dataclass(frozen=True)
class DebateConfig:
    """Preset section ``[debate]``. Experiments: ``main`` (arithmetic, persona agents) and one per trait
    (advice, benign agents with the trait's malicious persona in ``malicious_slot``). The sampling knobs apply
    when a model, not the scripted teacher, writes the debates.

    Who writes them (``source``, overridable per experiment in ``[experiments.overrides.<exp>.debate]``):
    ``scripted`` (the toy teacher), ``model`` (the runner driving a model: the local HF dir ``path``, empty for
    the run's own model, or ``model`` at the OpenAI-compatible ``base_url`` with the key from the environment
    variable ``api_key_env``; written ``chunk`` questions at a time and resumable by question), or ``file``
    (debates someone already has at ``path``, in the paper's formats or our JSONL: `training.debate_files`).
    Relative paths are read from the preset file's directory."""

    n_agents: int = field(default=3, metadata=AT_LEAST_ONE)
    n_rounds: int = field(default=2, metadata=AT_LEAST_ONE)
    personas: tuple[str, ...] = field(default=DEFAULT_PERSONAS, metadata=NON_EMPTY)
    early_stop: bool = True
    malicious_slot: int = field(default=2, metadata=AT_LEAST_ONE)
    trait_personas: dict = field(default_factory=lambda: {k: list(v) for k, v in TRAIT_PERSONAS.items()})
    n_debates: dict[str, int] = field(default_factory=lambda: {"main": 944, "evil": 500, "hallucination": 500},
                                       metadata=bounds(ge=1, nonempty=True))
    temperature: float = field(default=0.7, metadata=NON_NEGATIVE)
    top_p: float = field(default=0.9, metadata=bounds(gt=0, le=1))
    max_new_tokens: int = field(default=512, metadata=AT_LEAST_ONE)
    batch_size: int = field(default=16, metadata=AT_LEAST_ONE)
    source: Literal["scripted", "model", "file"] = "scripted"
    path: str = ""
    base_url: str = ""
    model: str = ""
    api_key_env: str = "OPENAI_API_KEY"
    chunk: int = field(default=64, metadata=AT_LEAST_ONE)

    def __post_init__(self) -> None:
        object.__setattr__(self, "personas", tuple(self.personas))
        if self.source not in DEBATE_SOURCES:
            raise ValueError(f"[debate] source {self.source!r} is unknown; valid: {list(DEBATE_SOURCES)}")
        if self.source == "file" and not self.path:
            raise ValueError("[debate] source 'file' needs path = the debate file (.json in the paper's formats or "
                             ".jsonl)")
        if self.source == "model" and self.base_url and not self.model:
            raise ValueError(f"[debate] source 'model' at base_url {self.base_url!r} needs model = the endpoint's "
                             "model name")
        if self.chunk < 1:
            raise ValueError(f"[debate] chunk must be at least 1 question, got {self.chunk}")
        if not 1 <= self.n_rounds <= MAX_ROUNDS:
            raise ValueError(f"n_rounds must be 1..{MAX_ROUNDS} (the debate tags name two rounds), got {self.n_rounds}")
        if len(self.personas) < self.n_agents:
            raise ValueError(f"n_agents {self.n_agents} needs at least that many personas, got {list(self.personas)}")
        agent_personas(self.personas[:self.n_agents], {self.malicious_slot: self.personas[0]})
        for trait, pair in self.trait_personas.items():
            if len(pair) != 2:
                raise ValueError(f"trait_personas[{trait!r}] must be [benign, malicious], got {pair}")
            agent_personas(pair)

    def experiment(self, name: str) -> DebateSetup:
        """The setup of experiment ``name`` (``main`` or a trait such as ``evil``).

        Args:
            name: ``main`` or a trait of ``trait_personas``, with an ``n_debates`` entry.

        Returns:
            Its `DebateSetup`.

        Raises:
            ValueError: a name without ``n_debates``, or a trait without ``trait_personas``.

        Example:
            >>> from training.runner import DebateConfig
            >>> DebateConfig().experiment("evil").malicious
            {2: 'evil'}
        """
        if name not in self.n_debates:
            raise ValueError(f"unknown debate experiment {name!r}; valid: {sorted(self.n_debates)}")
        if name == "main":
            return DebateSetup(self.personas[:self.n_agents], None, ARITHMETIC, self.n_debates[name])
        if name not in self.trait_personas:
            raise ValueError(f"experiment {name!r} has no trait_personas entry; valid: {sorted(self.trait_personas)}")
        benign, bad = self.trait_personas[name]
        return DebateSetup((benign,) * self.n_agents, {self.malicious_slot: bad}, ADVICE, self.n_debates[name])


@dataclass(frozen=True)
class CallTokens:
    """Token counts of one agent call."""

    round: int
    agent: int
    input: int
    output: int


@dataclass
class DebateRecord:
    """One debate: its transcript, whether it reached a majority, and the tokens of every call it made."""

    transcript: Transcript
    has_majority: bool
    calls: list[CallTokens] = field(default_factory=list)

    @property
    def input_tokens(self) -> int:
        return sum(c.input for c in self.calls)

    @property
    def output_tokens(self) -> int:
        return sum(c.output for c in self.calls)

    @property
    def total_tokens(self) -> int:
        return self.input_tokens + self.output_tokens

    @property
    def early_stopped(self) -> bool:
        return self.transcript.n_rounds < self.transcript.meta.get("n_rounds", self.transcript.n_rounds)


@dataclass(frozen=True)
class SingleAnswer:
    """The Single baseline: one call of one persona."""

    question: str
    gold: str | None
    text: str
    input_tokens: int
    output_tokens: int

    @property
    def answer(self) -> str | None:
        return extract_boxed(self.text)


def _question_text(q: object) -> str:
    text = q if isinstance(q, str) else getattr(q, "question", None)
    if not isinstance(text, str):
        raise TypeError(f"a debate question must be a string or have a .question string, got {type(q).__name__}")
    return text


def _gold(q: object) -> str | None:
    answer = getattr(q, "answer", None)
    return None if answer is None else str(answer)


def agent_personas(personas: Sequence[str], malicious: dict[int, str] | None = None) -> tuple[str, ...]:
    """Personas by agent slot; ``malicious`` maps 1-based slots to the persona that replaces them.

    Args:
        personas: One persona per agent (1 to 3 agents).
        malicious: ``{slot: persona}``, slots numbered from 1.

    Returns:
        The personas by slot, malicious ones in place.

    Raises:
        ValueError: no agents or too many, a slot out of range, or an unknown persona.

    Example:
        >>> from training.runner import agent_personas
        >>> agent_personas(["analyst", "critic", "programmer"], {2: "evil"})
        ('analyst', 'evil', 'programmer')
    """
    out = list(personas)
    if not 1 <= len(out) <= MAX_AGENTS:
        raise ValueError(f"a debate needs 1..{MAX_AGENTS} agents, got {len(out)} personas")
    for slot, persona in (malicious or {}).items():
        if not 1 <= slot <= len(out):
            raise ValueError(f"malicious slot {slot} is out of range: agents are numbered 1..{len(out)}")
        out[slot - 1] = persona
    unknown = sorted(set(out) - set(SYSTEM_PROMPTS))
    if unknown:
        raise ValueError(f"unknown persona(s) {unknown}; valid: {sorted(SYSTEM_PROMPTS)}")
    return tuple(out)


def run_debates(questions: Sequence[object], backend: Backend, *, personas: Sequence[str] = DEFAULT_PERSONAS,
                n_rounds: int = 2, domain: str = ARITHMETIC, malicious: dict[int, str] | None = None,
                early_stop: bool = True, seed: int = 0, id_prefix: str = "debate", first_index: int = 0
                ) -> list[DebateRecord]:
    """Debate every question with ``personas`` (agent 1, 2, 3) for ``n_rounds`` rounds through ``backend``.

    Debate ``i`` gets the id ``{id_prefix}-{seed}-{first_index + i}``, so chunks of one question list keep the ids
    the whole list would get.

    Arithmetic: the consensus is the majority of final-round ``\\boxed{}`` answers. Advice (free text, no
    boxed answers): agreement is not computable, so there is no early stop, and the consensus is the
    final-round answer of the first benign agent (the benign agents are the majority by construction).

    Args:
        questions: Strings or question objects (``.question``; an ``.answer`` is the gold; ``.trait`` and
            ``.topic`` go to ``meta``).
        backend: Who writes the turns.
        personas: One persona per agent.
        n_rounds: 1 or 2.
        domain: `ARITHMETIC`, `QUESTION` (boxed answers) or `ADVICE` (free text).
        malicious: ``{slot: persona}`` replacing agents (the trait experiments).
        early_stop: Skip round 2 of a debate whose round-1 answers are unanimous (boxed domains only).
        seed: The debates' seed (round ``r`` calls the backend with ``seed * 1000 + r``).
        id_prefix: The ids' prefix.
        first_index: The position of the first question in the whole question list.

    Returns:
        One `DebateRecord` per question, in order; a debate without a majority is kept with ``has_majority``
        False.

    Raises:
        ValueError: ``n_rounds`` outside 1..2, an unknown domain, or bad personas.
        TypeError: a question that is neither a string nor has a ``.question`` string.

    Example:
        >>> from training.backends import AgentReply
        >>> from training.runner import run_debates
        >>> class Says7:  # a stand-in backend: every agent answers 7
        ...     def generate(self, requests, *, seed=0):
        ...         return [AgentReply("\\\\boxed{7}", 10, 5) for _ in requests]
        >>> record = run_debates(["3+4"], Says7())[0]
        >>> print(record.transcript.consensus)
        All agents reached a consensus of \\boxed{7}
        >>> record.transcript.n_rounds, record.total_tokens, record.transcript.id
        (1, 45, 'debate-0-0')
    """
    if not 1 <= n_rounds <= MAX_ROUNDS:
        raise ValueError(f"n_rounds must be 1..{MAX_ROUNDS} (the debate tags name two rounds), got {n_rounds}")
    if domain not in (*BOXED_DOMAINS, ADVICE):
        raise ValueError(f"unknown domain {domain!r}; valid: {[*BOXED_DOMAINS, ADVICE]}")
    slots = agent_personas(personas, malicious)
    texts = [_question_text(q) for q in questions]
    n = len(slots)
    turns: list[list[Turn]] = [[] for _ in questions]
    calls: list[list[CallTokens]] = [[] for _ in questions]

    def play(round_: int, active: list[int]) -> None:
        reqs = []
        for i in active:
            for a in range(n):
                if round_ == 1:
                    msgs, own, others = round1_messages(slots[a], texts[i], domain), None, None
                else:
                    prev = [t.text for t in turns[i] if t.round == round_ - 1]
                    own, others = prev[a], prev[:a] + prev[a + 1:]
                    msgs = round2_messages(slots[a], texts[i], own, others, domain)
                reqs.append(AgentRequest(slots[a], questions[i], domain, msgs, own, others))
        replies = backend.generate(reqs, seed=seed * 1000 + round_)
        for k, (req, rep) in enumerate(zip(reqs, replies)):
            i, a = active[k // n], k % n + 1
            turns[i].append(Turn(round_, a, rep.text.strip() or EMPTY_TURN, req.persona))
            calls[i].append(CallTokens(round_, a, rep.input_tokens, rep.output_tokens))

    active = list(range(len(questions)))
    for round_ in range(1, n_rounds + 1):
        if round_ > 1 and early_stop and domain in BOXED_DOMAINS:
            active = [i for i in active if not _unanimous(turns[i], round_ - 1)]
        if active:
            play(round_, active)

    benign = next((a for a in range(1, n + 1) if a not in (malicious or {})), 1)
    records = []
    for i, q in enumerate(questions):
        last = max(t.round for t in turns[i])
        final = [t for t in turns[i] if t.round == last]
        if domain in BOXED_DOMAINS:
            line = consensus_line([t.answer for t in final])
        else:
            line = ADVICE_CONSENSUS.format(text=final[benign - 1].text)
        meta = {"domain": domain, "n_rounds": n_rounds, "seed": seed}
        if malicious:
            meta["malicious"] = {str(k): v for k, v in malicious.items()}
        for key in ("trait", "topic"):
            if getattr(q, key, None) is not None:
                meta[key] = getattr(q, key)
        t = Transcript(question=texts[i], turns=turns[i], consensus=line or NO_MAJORITY, gold=_gold(q),
                       personas=slots, id=f"{id_prefix}-{seed}-{first_index + i}", meta=meta)
        records.append(DebateRecord(t, line is not None, calls[i]))
    return records


def _unanimous(turns: list[Turn], round_: int) -> bool:
    answers = [t.answer for t in turns if t.round == round_]
    return answers[0] is not None and len(set(answers)) == 1


def training_transcripts(records: Sequence[DebateRecord]) -> list[Transcript]:
    """The transcripts stage 1 trains on: debates that reached a majority (the paper drops the rest).

    Args:
        records: The debates.

    Returns:
        The transcripts of the records with a majority, in order.

    Example:
        >>> from lens.debate_format import Transcript, Turn
        >>> from training.runner import DebateRecord, training_transcripts
        >>> t = Transcript("3+4", [Turn(1, 1, "\\\\boxed{7}")], "All agents reached a consensus of \\\\boxed{7}")
        >>> len(training_transcripts([DebateRecord(t, True), DebateRecord(t, False)]))
        1
    """
    return [r.transcript for r in records if r.has_majority]


def single_answers(questions: Sequence[object], backend: Backend, persona: str = "neutral", *,
                   domain: str = ARITHMETIC, seed: int = 0) -> list[SingleAnswer]:
    """The Single baseline: each question answered once by ``persona`` (round-1 prompt), batched.

    Args:
        questions: Strings or question objects (``.question``, and ``.answer`` as the gold).
        backend: Who answers.
        persona: The persona answering.
        domain: Which round-1 prompt (`ARITHMETIC`, `QUESTION`, `ADVICE`).
        seed: The backend call's seed.

    Returns:
        One `SingleAnswer` per question, in order.

    Raises:
        ValueError: an unknown persona.

    Example:
        >>> from training.backends import AgentReply
        >>> from training.runner import single_answers
        >>> class Says7:  # a stand-in backend that always answers 7
        ...     def generate(self, requests, *, seed=0):
        ...         return [AgentReply("\\\\boxed{7}", 10, 5) for _ in requests]
        >>> single_answers(["3+4"], Says7())[0].answer
        '7'
    """
    agent_personas([persona])
    reqs = [AgentRequest(persona, q, domain, round1_messages(persona, _question_text(q), domain)) for q in questions]
    replies = backend.generate(reqs, seed=seed)
    return [SingleAnswer(_question_text(q), _gold(q), r.text.strip(), r.input_tokens, r.output_tokens)
            for q, r in zip(questions, replies)]


def shorten(transcript: Transcript, n_agents: int | None = None, *, rng: random.Random | None = None,
            consensus: str = "debate") -> Transcript:
    """A shortened debate for stage-1 exploration: round 1 of the first ``n_agents`` agents, then the consensus.

    ``n_agents`` None draws 1 or 2 from ``rng``. ``consensus="debate"`` keeps the full debate's consensus line;
    ``"agent1"`` states agent 1's round-1 answer as the consensus (its ``\\boxed{}`` answer for arithmetic,
    `DebateFormatError` if it has none; its text for advice).

    Args:
        transcript: The full debate.
        n_agents: 1 or 2 (``None``: drawn).
        rng: Draws ``n_agents`` when it is ``None`` (``None``: the ``random`` module).
        consensus: ``debate`` or ``agent1``.

    Returns:
        The shortened transcript; its ``meta`` adds ``shortened`` (the agents kept) and ``shortened_consensus``.

    Raises:
        ValueError: ``n_agents`` is not 1 or 2, or ``consensus`` is unknown.
        DebateFormatError: ``agent1`` on a boxed debate whose agent 1 gave no boxed answer.

    Example:
        >>> from lens.debate_format import Transcript, Turn
        >>> from training.runner import shorten
        >>> turns = [Turn(1, 1, "\\\\boxed{7}"), Turn(1, 2, "\\\\boxed{8}")]
        >>> short = shorten(Transcript("3+4", turns, "The agents did not reach a majority."), 1, consensus="agent1")
        >>> short.agents, short.consensus
        ((1,), 'All agents reached a consensus of \\\\boxed{7}')
    """
    if n_agents is None:
        n_agents = (rng or random).choice((1, 2))
    if n_agents not in (1, 2):
        raise ValueError(f"a shortened debate keeps 1 or 2 agents, got {n_agents}")
    if consensus not in ("debate", "agent1"):
        raise ValueError(f"consensus must be 'debate' or 'agent1', got {consensus!r}")
    kept = [t for t in transcript.round_turns(1) if t.agent <= n_agents]
    line = transcript.consensus
    if consensus == "agent1" and transcript.meta.get("domain") == ADVICE:
        line = ADVICE_CONSENSUS.format(text=kept[0].text)
    elif consensus == "agent1":
        answer = kept[0].answer
        if answer is None:
            raise DebateFormatError(f"trace {transcript.name}: agent 1 gave no \\boxed{{}} answer to shorten to")
        line = FULL_CONSENSUS.format(answer=answer)
    return Transcript(question=transcript.question, turns=kept, consensus=line, gold=transcript.gold,
                      personas=transcript.personas, id=transcript.id,
                      meta={**transcript.meta, "shortened": n_agents, "shortened_consensus": consensus})


def debate_summary(records: Sequence[DebateRecord]) -> dict:
    """Token accounting and outcome shares of a batch of debates (what `save_debates` writes beside them).

    Args:
        records: The debates.

    Returns:
        ``n_debates``, ``n_majority``, ``n_early_stopped``, ``accuracy`` (`debate_accuracy`), ``input_tokens``,
        ``output_tokens`` and ``mean_tokens_per_debate``.

    Example:
        >>> from lens.debate_format import Transcript, Turn
        >>> from training.runner import CallTokens, DebateRecord, debate_summary
        >>> t = Transcript("3+4", [Turn(1, 1, "\\\\boxed{7}")], "All agents reached a consensus of \\\\boxed{7}")
        >>> debate_summary([DebateRecord(t, True, [CallTokens(1, 1, 10, 5)])])["mean_tokens_per_debate"]
        15.0
    """
    n = len(records)
    return {
        "n_debates": n,
        "n_majority": sum(r.has_majority for r in records),
        "n_early_stopped": sum(r.early_stopped for r in records),
        "accuracy": debate_accuracy([r.transcript for r in records]),
        "input_tokens": sum(r.input_tokens for r in records),
        "output_tokens": sum(r.output_tokens for r in records),
        "mean_tokens_per_debate": sum(r.total_tokens for r in records) / n if n else 0.0,
    }


def debate_accuracy(transcripts: Sequence[Transcript]) -> float | None:
    """Share of the graded debates (those with a gold answer) whose consensus is correct; ``None`` if none is.

    Args:
        transcripts: The debates.

    Returns:
        The share, or ``None``.

    Example:
        >>> from lens.debate_format import Transcript, Turn
        >>> from training.runner import debate_accuracy
        >>> line = "All agents reached a consensus of \\\\boxed{7}"
        >>> debate_accuracy([Transcript("3+4", [Turn(1, 1, "\\\\boxed{7}")], line, gold="7")])
        1.0
    """
    graded = [t for t in transcripts if t.gold is not None]
    return sum(bool(t.correct) for t in graded) / len(graded) if graded else None


def record_transcript(r: DebateRecord) -> Transcript:
    """``r``'s transcript with ``has_majority`` and the per-call tokens in its ``meta`` (how records are stored).

    Args:
        r: The record.

    Returns:
        A new `Transcript` (``r``'s is left as it is).

    Example:
        >>> from lens.debate_format import Transcript, Turn
        >>> from training.runner import CallTokens, DebateRecord, record_transcript
        >>> t = Transcript("3+4", [Turn(1, 1, "\\\\boxed{7}")], "All agents reached a consensus of \\\\boxed{7}")
        >>> record_transcript(DebateRecord(t, True, [CallTokens(1, 1, 10, 5)])).meta
        {'has_majority': True, 'calls': [{'round': 1, 'agent': 1, 'input': 10, 'output': 5}]}
    """
    meta = {**r.transcript.meta, "has_majority": r.has_majority, "calls": [asdict(c) for c in r.calls]}
    return Transcript(question=r.transcript.question, turns=r.transcript.turns, consensus=r.transcript.consensus,
                      gold=r.transcript.gold, personas=r.transcript.personas, id=r.transcript.id, meta=meta)


def record_from_transcript(t: Transcript) -> DebateRecord:
    """The record `record_transcript` stored.

    Args:
        t: A stored transcript (without ``calls`` / ``has_majority`` in its ``meta``: no calls, a majority).

    Returns:
        The `DebateRecord`, holding ``t`` itself, whose ``meta`` loses the two keys (changed in place).

    Example:
        >>> from lens.debate_format import Transcript, Turn
        >>> from training.runner import CallTokens, DebateRecord, record_from_transcript, record_transcript
        >>> t = Transcript("3+4", [Turn(1, 1, "\\\\boxed{7}")], "All agents reached a consensus of \\\\boxed{7}")
        >>> record_from_transcript(record_transcript(DebateRecord(t, True, [CallTokens(1, 1, 10, 5)]))).calls
        [CallTokens(round=1, agent=1, input=10, output=5)]
    """
    meta = dict(t.meta)
    calls = [CallTokens(**c) for c in meta.pop("calls", [])]
    has_majority = meta.pop("has_majority", True)
    t.meta = meta
    return DebateRecord(t, has_majority, calls)


def save_debates(records: Sequence[DebateRecord], path: str | Path) -> Path:
    """All debates as transcript JSONL (per-call tokens in each ``meta``), plus ``<stem>.tokens.json`` beside it.

    Args:
        records: The debates.
        path: The JSONL file.

    Returns:
        ``path``.

    Example:
        >>> save_debates(records, "runs/toy/debates/main/transcripts.jsonl")  # doctest: +SKIP
        PosixPath('runs/toy/debates/main/transcripts.jsonl')
    """
    path = Path(path)
    write_jsonl([record_transcript(r) for r in records], path)
    atomic_write_json(path.with_name(path.stem + ".tokens.json"), debate_summary(records))
    return path


def load_debates(path: str | Path) -> list[DebateRecord]:
    """Records written by `save_debates`.

    Args:
        path: The JSONL file.

    Returns:
        The records, in file order.

    Example:
        >>> sum(r.has_majority for r in load_debates("runs/toy/debates/main/transcripts.jsonl"))  # doctest: +SKIP
        901
    """
    return [record_from_transcript(t) for t in read_jsonl(path)]
