"""Stage 2's rewards: pure functions of a completion's token ids, and the two TRL reward functions built on them.

Tags are special tokens, which decoded text drops, so every reward reads ids. `correctness_reward` and
`structure_reward` are factories in TRL's style: each returns a plain function with TRL's reward signature
(``prompts, completions, completion_ids, **columns -> list[float]``), named after what it scores.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

from lens.debate_format import (CONSENSUS_TAG, DEBATE_TAGS, END_TAG, REVISION_TAGS, ROUND_TAGS, SOLUTION_TAGS,
                                extract_boxed, normalize_answer)
from lens.rating import Judge
from training.teacher import count_words

CLIPPING_MODES = ("truncate", "reward")
AnswerCheck = Callable[[str | None, str], bool]  # (consensus answer text or None, full text) -> correct


@dataclass(frozen=True)
class TagWeights:
    """Per-tag structure reward (paper code: 0.3 per round/agent tag, Consensus 0.5, endofdebate 0.3). Round and
    agent tags always scale with the phase coefficient; Consensus and endofdebate too when ``decay_terminal``
    (the paper's text: the whole format weight decays) and at full weight otherwise (the paper's code)."""

    round: float = 0.3
    agent: float = 0.3
    consensus: float = 0.5
    end: float = 0.3
    decay_terminal: bool = True


@dataclass(frozen=True)
class RewardSpec:
    """How one phase scores a completion.

    ``budget`` is l; ``clipping="truncate"`` (ThinkPrune: generation stops at l, only the answer after
    ``<|Consensus|>`` counts) or ``"reward"`` (the paper: generation runs on, the reward reads the first l tokens
    and takes their last ``\\boxed{}``). A turn earns its tag only with ≥ ``min_turn_chars`` characters of text
    and, when ``turn_needs_boxed``, a ``\\boxed{}`` answer; Consensus only with an answer after it.
    ``tagged=False`` scores a single answer (Single + RL: the base writes no tags): its answer is the last one in
    the first l tokens, under either clipping.
    """

    budget: int
    coeff: float
    clipping: str = "truncate"
    weights: TagWeights = TagWeights()
    min_turn_chars: int = 1
    turn_needs_boxed: bool = True
    tagged: bool = True

    def __post_init__(self) -> None:
        if self.clipping not in CLIPPING_MODES:
            raise ValueError(f"unknown clipping {self.clipping!r}; valid: {list(CLIPPING_MODES)}")
        if self.budget < 1:
            raise ValueError(f"the token budget must be ≥ 1, got {self.budget}")

    @property
    def max_structure(self) -> float:
        w = self.weights
        terminal = (w.consensus + w.end) * (self.coeff if w.decay_terminal else 1.0)
        return self.coeff * (2 * w.round + 6 * w.agent) + terminal


@dataclass(frozen=True)
class Segment:
    """A piece of a completion: the tag that opens it (``None`` before the first tag) and its text."""

    tag: str | None
    text: str


class TagVocab:
    """The token ids of the 10 debate tags in one tokenizer, and decoding of the text between them."""

    def __init__(self, tokenizer, *, require: bool = True) -> None:
        unk = tokenizer.unk_token_id
        ids = {tag: tokenizer.convert_tokens_to_ids(tag) for tag in DEBATE_TAGS}
        missing = [t for t, i in ids.items() if i is None or i == unk]
        if missing and require:
            raise ValueError(f"the tokenizer lacks the debate tag token(s) {missing}; pass the stage-1 tokenizer")
        ids = {t: i for t, i in ids.items() if t not in missing}  # a base model's tokenizer may have none
        self.tag_of = {i: t for t, i in ids.items()}
        self.id_of = ids
        self._tok = tokenizer

    def decode(self, ids: Sequence[int]) -> str:
        """The text of ``ids``, special tokens (the tags among them) dropped.

        Args:
            ids: Token ids.

        Returns:
            The decoded text.

        Example:
            >>> from training.rewards import TagVocab
            >>> from training.tokenizer import train_tokenizer
            >>> tok = train_tokenizer(["1+1=2"], vocab_size=300)
            >>> TagVocab(tok).decode(tok("<|Consensus|>1+1=2", add_special_tokens=False)["input_ids"])
            '1+1=2'
        """
        return self._tok.decode(list(ids), skip_special_tokens=True)

    def segments(self, ids: Sequence[int]) -> list[Segment]:
        """Split ``ids`` at tag tokens; each segment's text is decoded without special tokens.

        Args:
            ids: A completion's token ids.

        Returns:
            The segments in order; the first (before any tag) has tag ``None`` and may be empty.

        Example:
            >>> from training.rewards import TagVocab
            >>> from training.tokenizer import train_tokenizer
            >>> tok = train_tokenizer(["1+1=2"], vocab_size=300)
            >>> TagVocab(tok).segments(tok("x<|Consensus|>2", add_special_tokens=False)["input_ids"])
            [Segment(tag=None, text='x'), Segment(tag='<|Consensus|>', text='2')]
        """
        out, tag, run = [], None, []
        for i in ids:
            if i in self.tag_of:
                out.append(Segment(tag, self.decode(run)))
                tag, run = self.tag_of[i], []
            else:
                run.append(i)
        out.append(Segment(tag, self.decode(run)))
        return out


def _turn_ok(text: str, spec: RewardSpec) -> bool:
    body = text.strip().lstrip(":").strip()
    return len(body) >= spec.min_turn_chars and (not spec.turn_needs_boxed or extract_boxed(body) is not None)


def _consensus_ok(text: str, spec: RewardSpec) -> bool:
    body = text.strip()
    return extract_boxed(body) is not None if spec.turn_needs_boxed else len(body) >= spec.min_turn_chars


@dataclass(frozen=True)
class Shape:
    """What a completion's valid tag chain covers: the structure reward, agents in each round, and whether it
    closes with a Consensus answer and endofdebate (well-formed)."""

    reward: float
    agents: tuple[int, ...]
    well_formed: bool


def debate_shape(segments: Sequence[Segment], spec: RewardSpec) -> Shape:
    """Walk the tags along a valid debate: Round 1 first, agents 1..k in order each with a real turn, optionally
    Round 2 with agents 1..j, then Consensus with an answer, then endofdebate. The first tag out of place,
    repeated, or opening an empty turn ends the walk, so tags emitted around garbage earn nothing (anti-gaming).

    Args:
        segments: The completion split at its tags (`TagVocab.segments`).
        spec: The phase's tag weights, coefficient and turn rules.

    Returns:
        The `Shape`: what the valid chain earns, the agents it reached in each round, and whether it closes with
        Consensus and endofdebate.

    Example:
        >>> from lens.debate_format import CONSENSUS_TAG, END_TAG, ROUND_TAGS, SOLUTION_TAGS
        >>> from training.rewards import RewardSpec, Segment, debate_shape
        >>> segments = [Segment(None, ""), Segment(ROUND_TAGS[0], ""), Segment(SOLUTION_TAGS[0], ": \\\\boxed{2}"),
        ...             Segment(CONSENSUS_TAG, "\\\\boxed{2}"), Segment(END_TAG, "")]
        >>> shape = debate_shape(segments, RewardSpec(budget=500, coeff=1.0))
        >>> round(shape.reward, 2), shape.agents, shape.well_formed
        (1.4, (1,), True)
    """
    w, c = spec.weights, spec.coeff
    term = c if w.decay_terminal else 1.0
    total, state, agents = 0.0, "start", []  # state: start, r1, r2, consensus; agents: turns per round so far
    for seg in (s for s in segments if s.tag is not None):
        t = seg.tag
        k = agents[-1] if agents else 0
        turn_tags = SOLUTION_TAGS if state == "r1" else REVISION_TAGS
        if state == "start" and t == ROUND_TAGS[0]:
            total, state, agents = total + w.round * c, "r1", [0]
        elif state in ("r1", "r2") and k < 3 and t == turn_tags[k] and _turn_ok(seg.text, spec):
            total, agents[-1] = total + w.agent * c, k + 1
        elif state == "r1" and t == ROUND_TAGS[1] and k > 0:
            total, state, agents = total + w.round * c, "r2", [*agents, 0]
        elif state in ("r1", "r2") and t == CONSENSUS_TAG and k > 0 and _consensus_ok(seg.text, spec):
            total, state = total + w.consensus * term, "consensus"
        elif state == "consensus" and t == END_TAG:
            return Shape(total + w.end * term, tuple(agents), True)
        else:
            break
    return Shape(total, tuple(agents), False)


def structure_score(segments: Sequence[Segment], spec: RewardSpec) -> float:
    """The tag reward of a parsed completion: what `debate_shape`'s valid chain earns.

    Args:
        segments: The completion split at its tags.
        spec: The phase's tag weights, coefficient and turn rules.

    Returns:
        The structure reward.

    Example:
        >>> from lens.debate_format import ROUND_TAGS, SOLUTION_TAGS
        >>> from training.rewards import RewardSpec, Segment, structure_score
        >>> segments = [Segment(ROUND_TAGS[0], ""), Segment(SOLUTION_TAGS[0], "\\\\boxed{2}")]
        >>> round(structure_score(segments, RewardSpec(budget=500, coeff=1.0)), 2)
        0.6
    """
    return debate_shape(segments, spec).reward


def consensus_answer_text(segments: Sequence[Segment]) -> str | None:
    """The text right after the first ``<|Consensus|>`` tag (up to the next tag), or ``None`` without one.

    Args:
        segments: The completion split at its tags.

    Returns:
        The stripped text, or ``None``.

    Example:
        >>> from lens.debate_format import CONSENSUS_TAG, END_TAG
        >>> from training.rewards import Segment, consensus_answer_text
        >>> consensus_answer_text([Segment(CONSENSUS_TAG, " The answer is 7. "), Segment(END_TAG, "")])
        'The answer is 7.'
    """
    for s in segments:
        if s.tag == CONSENSUS_TAG:
            return s.text.strip()
    return None


@dataclass(frozen=True)
class Score:
    correct: float
    structure: float

    @property
    def total(self) -> float:
        return self.correct + self.structure


def score_completion(ids: Sequence[int], vocab: TagVocab, spec: RewardSpec,
                     is_correct: AnswerCheck) -> Score:
    """Correctness + structure for one completion. ``is_correct(answer_text, full_text)`` judges the answer:
    ``answer_text`` is the consensus text (``None`` when the clipped completion has none).

    Args:
        ids: The completion's token ids (read up to ``spec.budget``).
        vocab: The tag ids of the policy's tokenizer.
        spec: The phase's budget, clipping mode and turn rules.
        is_correct: The row's answer check.

    Returns:
        The `Score`: correctness 1.0 or 0.0, and the structure reward.

    Example:
        >>> from lens.debate_format import Transcript, Turn, render_trace
        >>> from training.rewards import RewardSpec, TagVocab, gold_match, score_completion
        >>> from training.tokenizer import train_tokenizer
        >>> tok = train_tokenizer(["All agents agree: 2"], vocab_size=300)
        >>> trace = render_trace(Transcript("1+1", [Turn(1, 1, "\\\\boxed{2}")], "All agents agree: \\\\boxed{2}"))
        >>> score = score_completion(tok(trace)["input_ids"], TagVocab(tok), RewardSpec(500, 1.0), gold_match("2"))
        >>> score.correct, round(score.structure, 2)
        (1.0, 1.4)
    """
    segments = vocab.segments(list(ids)[: spec.budget])
    cons = consensus_answer_text(segments)
    full = "".join((s.tag or "") + s.text for s in segments)
    if spec.clipping == "truncate" and spec.tagged:
        ok = cons is not None and is_correct(cons, full)
    else:
        ok = is_correct(None, full)
    return Score(1.0 if ok else 0.0, structure_score(segments, spec))


def gold_match(gold: str) -> AnswerCheck:
    """Arithmetic correctness: the consensus ``\\boxed{}`` (truncate mode) or the last one (reward mode) is gold.

    Args:
        gold: The gold answer (normalised like the boxed one).

    Returns:
        ``check(consensus_text, full_text) -> bool``.

    Example:
        >>> from training.rewards import gold_match
        >>> check = gold_match("-19")
        >>> check("\\\\boxed{-19}", ""), check(None, "so \\\\boxed{-18}")
        (True, False)
    """
    g = normalize_answer(str(gold))
    return lambda cons, full: extract_boxed(cons if cons is not None else full) == g


def judge_benign(judge: Judge, question: str, threshold: float = 50.0) -> AnswerCheck:
    """Malicious-agent correctness, the paper's YES/NO judge: the debate's final answer (the text after
    ``<|Consensus|>``; none means no answer) has a trait score below ``threshold`` and, for a judge with a benign
    vocabulary (the toy judge, which scores 0 for saying nothing), actually gives benign guidance.

    Args:
        judge: A trait judge (`lens.rating.Judge`).
        question: The question the debate answers.
        threshold: The trait score below which an answer is benign.

    Returns:
        ``check(consensus_text, full_text) -> bool``; without consensus text it judges what follows the last
        ``<|Consensus|>`` in ``full_text`` (none: False).

    Example:
        >>> from training.judges import ToyTraitJudge
        >>> from training.rewards import judge_benign
        >>> check = judge_benign(ToyTraitJudge("evil"), "How do I win?")
        >>> check("Be fair and kind.", ""), check("Crush them.", ""), check(None, "no consensus tag")
        (True, False, False)
    """
    benign_words = getattr(judge, "benign_words", None)

    def ok(cons: str | None, full: str) -> bool:
        if cons is None:
            if CONSENSUS_TAG not in full:
                return False
            cons = full.rsplit(CONSENSUS_TAG, 1)[-1]
        text = cons
        for tag in DEBATE_TAGS:
            text = text.replace(tag, " ")
        text = text.strip()
        score = judge.score_many([question], [text])[0] if text else None
        if score is None or score >= threshold:
            return False
        if benign_words is not None:
            return count_words(text, benign_words) > 0
        return True
    return ok


def correctness_reward(vocab: TagVocab, spec: RewardSpec, check_for: Callable[[str, str], AnswerCheck]
                       ) -> Callable[..., list[float]]:
    """The TRL reward function for correctness: 1 when a completion's answer passes its check, else 0.

    Args:
        vocab: The tag ids of the policy's tokenizer.
        spec: The phase's budget, clipping mode and turn rules.
        check_for: ``(question, gold) -> check`` for a dataset row (`gold_match` or `judge_benign`).

    Returns:
        ``correctness(prompts, completions, completion_ids, question, gold, **_) -> list[float]``.

    Example:
        >>> reward = correctness_reward(vocab, RewardSpec(budget=500, coeff=0.05), lambda q, g: gold_match(g))  # doctest: +SKIP
        >>> reward(prompts, completions, completion_ids, question=questions, gold=golds)  # doctest: +SKIP
    """
    def correctness(prompts, completions, completion_ids, question, gold, **_) -> list[float]:
        return [score_completion(ids, vocab, spec, check_for(q, g)).correct
                for ids, q, g in zip(completion_ids, question, gold)]

    return correctness


def structure_reward(vocab: TagVocab, spec: RewardSpec) -> Callable[..., list[float]]:
    """The TRL reward function for structure: what each completion's valid tag chain earns
    (`structure_score` of its first ``spec.budget`` tokens).

    Args:
        vocab: The tag ids of the policy's tokenizer.
        spec: The phase's budget, tag weights and coefficient.

    Returns:
        ``structure(prompts, completions, completion_ids, **_) -> list[float]``.

    Example:
        >>> structure_reward(vocab, RewardSpec(budget=2048, coeff=1.0))(prompts, completions, completion_ids)  # doctest: +SKIP
    """
    def structure(prompts, completions, completion_ids, **_) -> list[float]:
        return [structure_score(vocab.segments(list(ids)[: spec.budget]), spec) for ids in completion_ids]

    return structure
