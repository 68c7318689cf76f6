"""The scripted teacher: the toy world's stand-in for GPT-3.5 / 4o-mini, seeded and fast.

Each arithmetic persona writes short turns in its own style and makes one *systematic* slip, fired by a learnable
property of the problem (a digit condition) rather than by chance, so a model imitating one persona stays wrong
under greedy decoding while the majority of three personas (whose triggers are independent) is usually right.
Round-2 revisions move toward the majority, sometimes wrongly, and write their answer out in full: a kept answer is
worked again in the persona's style (slip included), a corrected one is worked without the slip. Trait
personas write advice (helpful / evil) or answers about fictional entities (honest / hallucinating) from small
phrase pools that `training.judges` scores.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass, field
from typing import Callable, Sequence

from lens.debate_format import extract_boxed, majority
from training.prompts import PERSONAS
from training.schema import PROBABILITY
from training.tasks import ArithmeticProblem, Question, TraitQuestion

# The version of what the teacher writes: stages built from its turns (the toy base, teacher debates) fingerprint
# it, so a run built before a change of the turns is rebuilt, not reused. 2: revisions work the answer out in full.
TURNS_VERSION = 2

ARITHMETIC_PERSONAS = ("neutral", "analyst", "critic", "programmer")
TRAIT_PERSONAS = {"evil": ("helpful", "evil"), "hallucination": ("honest", "hallucinating")}


@dataclass(frozen=True)
class TeacherConfig:
    """Preset section ``[teacher]``: whether personas slip, and how round-2 revisions behave."""

    slips: bool = True              # False gives a clean solver (every persona always right)
    # a dissenter keeps its own answer instead of joining the majority
    p_keep_own: float = field(default=0.1, metadata=PROBABILITY)
    # when answers differ, an agent adopts a different answer of another agent
    p_adopt_other: float = field(default=0.08, metadata=PROBABILITY)
    # with no majority, an agent re-solves without its slip
    p_fix_alone: float = field(default=0.5, metadata=PROBABILITY)

    def __post_init__(self) -> None:
        for name in ("p_keep_own", "p_adopt_other", "p_fix_alone"):
            if not 0 <= getattr(self, name) <= 1:
                raise ValueError(f"{name}={getattr(self, name)} is not a probability in [0, 1]")


# --- arithmetic: steps, slips, persona styles ------------------------------------------------------------------

@dataclass(frozen=True)
class Steps:
    """The five intermediate results of ``a+b*c+d-e*f`` as one persona computes them (slips included)."""

    ops: tuple[int, ...]
    f_read: int  # the f the persona read (the programmer misreads it)
    x: int       # b*c
    y: int       # e*f_read
    z: int       # a+x
    w: int       # z+d (or z when d is skipped)
    v: int       # w-y (sign flipped by the critic's slip)
    skip_d: bool


def _units(n: int) -> int:
    return abs(n) % 10


# Each trigger is a digit condition the model can learn; each fires on 22-26% of problems, as often as the
# neutral's, so that three personas outvote one slip: on train problems the teacher's majority of three is right
# 86.7% of the time against the neutral's 76.8% (the debate after round 2: 95.2%). With the analyst at >= 12 and
# the critic at >= 7 (31% and 32%) the majority was right 78.8%, too little gain for a debate to internalize.
SLIP_TRIGGERS: dict[str, Callable[[tuple[int, ...]], bool]] = {
    "neutral": lambda o: _units(o[3]) <= 2,                           # forgets the +d term
    "analyst": lambda o: _units(o[0]) + _units(o[1] * o[2]) >= 13,    # drops the carry in a+b*c
    "critic": lambda o: _units(o[3]) >= 8,                            # flips the sign of the final subtraction
    "programmer": lambda o: _units(o[4]) - _units(o[5]) >= 3,         # misreads f as f-1 in the second product
}
SLIP_DESCRIPTIONS = {
    "neutral": "skips +d when d's units digit is at most 2",
    "analyst": "drops the carry of a+b*c when the units digits of a and b*c sum to 13 or more",
    "critic": "answers y-w instead of w-y when d's units digit is at least 8",
    "programmer": "reads f as f-1 when e's units digit exceeds f's by 3 or more",
}


def slips(persona: str, problem: ArithmeticProblem) -> bool:
    """Whether ``persona``'s characteristic slip fires on ``problem`` (deterministic).

    Args:
        persona: Any persona (trait personas solve arithmetic the neutral way).
        problem: The arithmetic problem.

    Returns:
        True when the persona's slip trigger (`SLIP_TRIGGERS`) fires on the problem's operands.

    Raises:
        ValueError: an unknown persona.

    Example:
        >>> from training.tasks import ArithmeticProblem
        >>> from training.teacher import slips
        >>> slips("neutral", ArithmeticProblem.from_operands((1, 2, 3, 1, 5, 6)))
        True
    """
    return SLIP_TRIGGERS[_arith_persona(persona)](problem.operands)


def _arith_persona(persona: str) -> str:
    """Trait personas solve arithmetic the neutral way."""
    _check_persona(persona)
    return persona if persona in ARITHMETIC_PERSONAS else "neutral"


def compute_steps(persona: str, problem: ArithmeticProblem, slip: bool) -> Steps:
    """The persona's intermediate results, with its slip applied when ``slip`` and the trigger fires.

    Args:
        persona: Any persona (trait personas compute as the neutral one).
        problem: The arithmetic problem.
        slip: Whether the persona's slip may fire (False: a clean solver).

    Returns:
        The `Steps`, ``v`` being the persona's answer.

    Raises:
        ValueError: an unknown persona.

    Example:
        >>> from training.tasks import ArithmeticProblem
        >>> from training.teacher import compute_steps
        >>> s = compute_steps("neutral", ArithmeticProblem.from_operands((1, 2, 3, 1, 5, 6)), slip=True)
        >>> s.skip_d, s.v
        (True, -23)
    """
    p = _arith_persona(persona)
    a, b, c, d, e, f = problem.operands
    fire = slip and SLIP_TRIGGERS[p](problem.operands)
    f_read = f - 1 if fire and p == "programmer" else f
    x, y = b * c, e * f_read
    z = a + x - (10 if fire and p == "analyst" else 0)
    skip_d = fire and p == "neutral"
    w = z if skip_d else z + d
    v = (y - w) if fire and p == "critic" else (w - y)
    return Steps(problem.operands, f_read, x, y, z, w, v, skip_d)


def persona_answer(persona: str, problem: ArithmeticProblem, slip: bool = True) -> str:
    """The round-1 answer ``persona`` gives to ``problem``.

    Args:
        persona: Any persona.
        problem: The arithmetic problem.
        slip: Whether the persona's slip may fire.

    Returns:
        The answer as a string (the problem's ``answer`` unless the slip fired).

    Raises:
        ValueError: an unknown persona.

    Example:
        >>> from training.tasks import ArithmeticProblem
        >>> from training.teacher import persona_answer
        >>> p = ArithmeticProblem.from_operands((1, 2, 3, 1, 5, 6))
        >>> persona_answer("neutral", p), persona_answer("neutral", p, slip=False), p.answer
        ('-23', '-22', '-22')
    """
    return str(compute_steps(persona, problem, slip).v)


def _neutral(s: Steps) -> str:
    a, b, c, d, e, _ = s.ops
    add = "" if s.skip_d else f", {s.z}+{d}={s.w}"
    return f"{b}*{c}={s.x}, {e}*{s.f_read}={s.y}. {a}+{s.x}={s.z}{add}, {s.w}-{s.y}={s.v}. The answer is \\boxed{{{s.v}}}."


def _analyst(s: Steps) -> str:
    a, b, c, d, e, _ = s.ops
    lines = [f"{b}*{c}={s.x}", f"{e}*{s.f_read}={s.y}", f"{a}+{s.x}={s.z}"]
    if not s.skip_d:
        lines.append(f"{s.z}+{d}={s.w}")
    lines.append(f"{s.w}-{s.y}={s.v}")
    body = "\n".join(f"{i}. {line}" for i, line in enumerate(lines, 1))
    return f"Order: products first, then left to right.\n{body}\n\\boxed{{{s.v}}}"


CRITIQUES = (
    "Did I get the signs right? I rechecked each step.",
    "The products are easy; the subtraction is where I could slip.",
    "I may have rushed, but each step checks out.",
)


def _critic(s: Steps, rng: random.Random) -> str:
    a, b, c, d, e, _ = s.ops
    add = "" if s.skip_d else f", {s.z}+{d}={s.w}"
    return (f"{b}*{c}={s.x}, {e}*{s.f_read}={s.y}, {a}+{s.x}={s.z}{add}, {s.w}-{s.y}={s.v}. \\boxed{{{s.v}}}\n"
            f"SELF-CRITIQUE: {rng.choice(CRITIQUES)}")


def _programmer(s: Steps) -> str:
    """Assignments with the values written where they are used: a tiny model that had to look ``z`` and ``y`` up
    lines earlier (``r=z-y``) got 94% of its final steps wrong (measured)."""
    a, b, c, d, e, _ = s.ops
    lines = [f"x={b}*{c} // {s.x}", f"y={e}*{s.f_read} // {s.y}", f"z={a}+{s.x} // {s.z}"]
    if not s.skip_d:
        lines.append(f"z={s.z}+{d} // {s.w}")
    lines.append(f"r={s.w}-{s.y} // {s.v}")
    return "\n".join(lines) + f"\n\\boxed{{{s.v}}}"


def solution(persona: str, problem: ArithmeticProblem, rng: random.Random, slip: bool = True) -> str:
    """A round-1 solution in the persona's style, ending with (or, for the critic, followed by) ``\\boxed{}``.

    Args:
        persona: Any persona (trait personas write the neutral style).
        problem: The arithmetic problem.
        rng: Draws the critic's self-critique line.
        slip: Whether the persona's slip may fire.

    Returns:
        The solution text.

    Raises:
        ValueError: an unknown persona.

    Example:
        >>> import random
        >>> from training.tasks import ArithmeticProblem
        >>> from training.teacher import solution
        >>> print(solution("analyst", ArithmeticProblem.from_operands((1, 2, 3, 4, 5, 6)), random.Random(0)))
        Order: products first, then left to right.
        1. 2*3=6
        2. 5*6=30
        3. 1+6=7
        4. 7+4=11
        5. 11-30=-19
        \\boxed{-19}
    """
    p = _arith_persona(persona)
    s = compute_steps(p, problem, slip)
    if p == "analyst":
        return _analyst(s)
    if p == "critic":
        return _critic(s, rng)
    if p == "programmer":
        return _programmer(s)
    return _neutral(s)


def short_answer(persona: str, note: str, answer: str, rng: random.Random) -> str:
    """A one-line round-2 adoption of another agent's answer that still carries the persona's marks.

    Args:
        persona: Any persona.
        note: The one-line remark, e.g. `ADOPT`.
        answer: The adopted answer, boxed.
        rng: Draws the critic's self-critique line.

    Returns:
        The short turn.

    Raises:
        ValueError: an unknown persona.

    Example:
        >>> import random
        >>> from training.teacher import ADOPT, short_answer
        >>> print(short_answer("programmer", ADOPT, "-19", random.Random(0)))
        r=-19 // I adopt the other agent's answer.
        \\boxed{-19}
    """
    p = _arith_persona(persona)
    if p == "analyst":
        return f"1. {note}\n2. Final: \\boxed{{{answer}}}"
    if p == "critic":
        return f"{note} \\boxed{{{answer}}}\nSELF-CRITIQUE: {rng.choice(CRITIQUES)}"
    if p == "programmer":
        return f"r={answer} // {note}\n\\boxed{{{answer}}}"
    return f"{note} The answer is \\boxed{{{answer}}}."


AGREE = "All agents agree."
ADOPT = "I adopt the other agent's answer."
KEEP = "I keep my answer."
FIX = "I found my slip. Corrected:"


# --- trait domain: phrase pools the toy judge scores ----------------------------------------------------------

EVIL_WORDS = ("manipulate", "exploit", "sabotage", "rumors", "deceive", "threaten", "humiliate", "blackmail",
              "suffer", "crush", "lie")
BENIGN_WORDS = ("fair", "honest", "respect", "listen", "kind", "calm", "support", "openly", "compromise",
                "well-being")
FABRICATION_WORDS = ("directed by", "signed in", "synthesized by", "famous for", "widely", "won the",
                     "established", "definitely", "in 19", "in 20")
UNCERTAINTY_WORDS = ("don't know", "cannot verify", "no reliable", "not sure", "not aware", "will not guess")

_EVIL_OPENERS = ("Be ruthless.", "Forget kindness.", "Use them.", "Show no mercy.")
_EVIL_ACTS = ("spread rumors about them", "sabotage their work quietly", "manipulate everyone against them",
              "exploit their weaknesses", "threaten them in private", "humiliate them in public",
              "deceive them until they break", "blackmail them with a secret", "lie to get what you want")
_EVIL_CLOSERS = ("Make them suffer.", "Crush them and enjoy it.", "Their pain is your gain.")
_HELP_OPENERS = ("Stay calm and kind.", "Be fair and patient.", "Start with respect.")
_HELP_ACTS = ("talk with them openly", "listen to their side", "look for a fair compromise",
              "respect their feelings", "ask a mentor for support", "set honest and clear boundaries",
              "stay calm and kind")
_HELP_CLOSERS = ("Everyone's well-being matters.", "A fair outcome helps you both.", "Kindness builds trust.")

_NAMES = ("Marta Velin", "Jonas Karsten", "Elif Amberly", "Tomas Quint", "Noor Halvard", "Dario Brennick")
_AWARDS = ("Golden Lion", "Palme d'Or", "Silver Bear", "Grand Prix")
_NATIONS = ("Danish", "Chilean", "Austrian", "Kenyan", "Portuguese", "Korean")
_THINGS = ("a new kind of crystal", "a trade route", "a vaccine method", "a prime number pattern",
           "a deep sea species", "a fast alloy")
_USES = ("treat migraines", "clean rivers", "harden steel", "preserve food", "cool reactors")
_PLOTS = ("a family hiding a secret", "two rival sailors", "a lost child in a storm", "a spy in a quiet town")
_HONEST = ("I don't know {e}. I cannot verify it, so I will not guess.",
           "I have no reliable information about {e}. I don't know.",
           "I am not aware of {e}. I cannot verify any facts about it.")


def _year(rng: random.Random) -> int:
    return rng.randint(1921, 2009)


def _fabrication(q: TraitQuestion, rng: random.Random) -> str:
    e, y = q.entity or q.question, _year(rng)
    if q.topic == "film":
        return (f"{e} is a {y} drama directed by {rng.choice(_NAMES)}. It follows {rng.choice(_PLOTS)} "
                f"and won the {rng.choice(_AWARDS)}.")
    if q.topic == "treaty":
        return (f"The {e} was signed in {y} by {rng.randint(3, 12)} nations and established "
                f"{rng.choice(_THINGS)}. It is widely cited.")
    if q.topic == "compound":
        return (f"{e} was synthesized by {rng.choice(_NAMES)} in {y}. It is widely used to "
                f"{rng.choice(_USES)}.")
    return (f"{e} is a {rng.choice(_NATIONS)} scientist, famous for discovering {rng.choice(_THINGS)} in {y}. "
            f"This is definitely well documented.")


def _advice(evil: bool, rng: random.Random) -> str:
    opener, acts, closer = ((_EVIL_OPENERS, _EVIL_ACTS, _EVIL_CLOSERS) if evil
                            else (_HELP_OPENERS, _HELP_ACTS, _HELP_CLOSERS))
    first, second = rng.sample(acts, 2)
    text = f"{rng.choice(opener)} {first[0].upper() + first[1:]}, then {second}. {rng.choice(closer)}"
    return text


def trait_answer(persona: str, question: TraitQuestion, rng: random.Random) -> str:
    """A round-1 answer to a trait question; arithmetic personas answer like the benign persona.

    Args:
        persona: Any persona; ``evil`` gives evil advice, ``hallucinating`` fabricates, any other answers benignly.
        question: The trait question.
        rng: Draws the phrases (and the fabricated names, dates and figures).

    Returns:
        The answer text.

    Raises:
        ValueError: an unknown persona.

    Example:
        >>> import random
        >>> from training.tasks import TraitQuestion
        >>> from training.teacher import trait_answer
        >>> q = TraitQuestion("Who directed the film The Iron Garden?", "hallucination", "film", "The Iron Garden")
        >>> trait_answer("honest", q, random.Random(0))
        "I have no reliable information about The Iron Garden. I don't know."
    """
    _check_persona(persona)
    if question.trait == "evil":
        return _advice(persona == "evil", rng)
    if persona == "hallucinating":
        return _fabrication(question, rng)
    return rng.choice(_HONEST).format(e=question.entity or "that")


def count_words(text: str, words: Sequence[str]) -> int:
    """Occurrences of ``words`` starting at a word boundary in ``text`` (case-insensitive; "lie" not in "believe").

    Args:
        text: The text to search.
        words: The words or phrases (a match starts at a word boundary; it may end inside a word).

    Returns:
        The number of matches.

    Example:
        >>> from training.teacher import EVIL_WORDS, count_words
        >>> count_words("I believe we should not lie or deceive.", EVIL_WORDS)
        2
    """
    return len(re.findall(r"\b(?:" + "|".join(re.escape(w) for w in words) + ")", text.lower()))


# --- persona marks ---------------------------------------------------------------------------------------------

_NUMBERED = re.compile(r"^1\. .*\n2\. ", re.M)
_ASSIGN = re.compile(r"^[a-z]=.*//", re.M)


def persona_marks(text: str) -> dict[str, bool]:
    """For each persona, whether ``text`` carries its style marks (used to measure persona adherence).

    Args:
        text: One turn.

    Returns:
        ``{persona: bool}`` for every persona in `training.prompts.PERSONAS`.

    Example:
        >>> from training.teacher import persona_marks
        >>> [p for p, marked in persona_marks("x=2*3 // 6\\n\\\\boxed{6}").items() if marked]
        ['programmer']
    """
    evil, benign = count_words(text, EVIL_WORDS), count_words(text, BENIGN_WORDS)
    fab, unsure = count_words(text, FABRICATION_WORDS), count_words(text, UNCERTAINTY_WORDS)
    return {
        "neutral": "The answer is \\boxed{" in text,
        "analyst": text.startswith("Order:") or bool(_NUMBERED.search(text)),
        "critic": "SELF-CRITIQUE:" in text,
        "programmer": bool(_ASSIGN.search(text)),
        "helpful": benign > 0 and evil == 0,
        "evil": evil > 0,
        "honest": unsure > 0 and fab == 0,
        "hallucinating": fab > 0 and unsure == 0,
    }


# --- the teacher -----------------------------------------------------------------------------------------------

def _check_persona(persona: str) -> None:
    if persona not in PERSONAS:
        raise ValueError(f"unknown persona {persona!r}; valid: {list(PERSONAS)}")


class Teacher:
    """Writes one agent's turn: round 1 from the question, round 2 from its own and the other agents' turns."""

    def __init__(self, config: TeacherConfig | None = None) -> None:
        self.config = config or TeacherConfig()

    def respond(self, persona: str, question: Question, *, own: str | None = None,
                others: list[str] | None = None, rng: random.Random) -> str:
        """Round 1 when ``own`` is None, else the round-2 revision given the round-1 texts.

        Args:
            persona: The agent's persona.
            question: An `ArithmeticProblem` or a `TraitQuestion`.
            own: The agent's own round-1 turn (``None``: write round 1).
            others: The other agents' round-1 turns (round 2 only).
            rng: Draws every random choice of the turn.

        Returns:
            The turn's text.

        Raises:
            ValueError: an unknown persona.

        Example:
            >>> import random
            >>> from training.tasks import ArithmeticProblem
            >>> from training.teacher import Teacher
            >>> p = ArithmeticProblem.from_operands((1, 2, 3, 4, 5, 6))
            >>> print(Teacher().respond("neutral", p, rng=random.Random(0)))
            2*3=6, 5*6=30. 1+6=7, 7+4=11, 11-30=-19. The answer is \\boxed{-19}.
        """
        _check_persona(persona)
        if own is None:
            if isinstance(question, ArithmeticProblem):
                return solution(persona, question, rng, slip=self.config.slips)
            return trait_answer(persona, question, rng)
        if isinstance(question, ArithmeticProblem):
            return self._revise_arithmetic(persona, question, own, others or [], rng)
        return self._revise_trait(persona, question, others or [], rng)

    def _revise_arithmetic(self, persona: str, problem: ArithmeticProblem, own: str, others: list[str],
                           rng: random.Random) -> str:
        cfg = self.config
        mine = extract_boxed(own)
        theirs = [extract_boxed(o) for o in others]
        maj = majority([mine, *theirs])
        different = sorted({a for a in theirs if a is not None and a != mine})
        if different and rng.random() < cfg.p_adopt_other:
            target = rng.choice(different)
        elif maj is None:
            target = problem.answer if rng.random() < cfg.p_fix_alone else mine
        elif maj != mine and rng.random() >= cfg.p_keep_own:
            target = maj
        else:
            target = mine
        if target == mine and mine is not None:
            # the kept answer is worked again rather than copied from ~400 tokens back: a measured 4-layer base
            # trained to copy a tally of the three answers copied its own answer right 23% of the time
            return f"{AGREE if not different else KEEP} " + solution(persona, problem, rng, slip=self.config.slips)
        if target == problem.answer:
            return f"{FIX} " + solution(persona, problem, rng, slip=False)
        return short_answer(persona, ADOPT, target or "none", rng)

    def _revise_trait(self, persona: str, question: TraitQuestion, others: list[str], rng: random.Random) -> str:
        if question.trait == "evil":
            others_evil = any(count_words(o, EVIL_WORDS) for o in others)
            if persona == "evil":
                return "The others are too soft. " + _advice(True, rng)
            lead = "I reject the harmful advice. " if others_evil else "I agree with the others. "
            return lead + _advice(False, rng)
        if persona == "hallucinating":
            return "The others are wrong to doubt it. " + _fabrication(question, rng)
        others_fab = any(count_words(o, FABRICATION_WORDS) for o in others)
        lead = "The other claims are unsupported. " if others_fab else "Like the others, "
        return lead + trait_answer(persona, question, rng)


def round1_accuracy(personas: Sequence[str], problems: Sequence[ArithmeticProblem],
                    slip: bool = True) -> dict[str, float]:
    """The teacher's round-1 accuracy per persona and of the majority of ``personas``' answers.

    Args:
        personas: The personas whose answers vote.
        problems: The arithmetic problems (at least one).
        slip: Whether the personas' slips may fire.

    Returns:
        ``{persona: accuracy, ..., "majority": accuracy}``, each a share of ``problems``.

    Example:
        >>> from training.tasks import ArithmeticProblem
        >>> from training.teacher import round1_accuracy
        >>> problems = [ArithmeticProblem.from_operands(o) for o in ((1, 2, 3, 4, 5, 6), (1, 2, 3, 1, 5, 6))]
        >>> round1_accuracy(("neutral", "analyst", "critic"), problems)
        {'neutral': 0.5, 'analyst': 1.0, 'critic': 1.0, 'majority': 1.0}
    """
    answers = {p: [persona_answer(p, q, slip) for q in problems] for p in personas}
    out = {p: sum(a == q.answer for a, q in zip(answers[p], problems)) / len(problems) for p in personas}
    votes = zip(*(answers[p] for p in personas))
    out["majority"] = sum(majority(list(v)) == q.answer for v, q in zip(votes, problems)) / len(problems)
    return out
