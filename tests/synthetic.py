"""Synthetic debates for the lens tests: every agent ends its turns with its own marker."""

from __future__ import annotations

from lens.debate_format import Transcript, Turn, consensus_line

PERSONAS = ("analyst", "critic", "programmer")
ENDINGS = {1: "step done", 2: "CRITIQUE", 3: "m //"}
PROMPT = "Problem: 3+4*5\n\n<|Round 1 - Initial Solutions|>\n\n<|Agent 2 Solution|>:"


def synth(n: int = 8, agents: int = 3) -> list[Transcript]:
    """Short debates in which every agent ends its turns with its own marker."""
    out = []
    for q in range(n):
        a, b = q % 7 + 1, q % 5 + 2
        turns = [Turn(rd, ag, f"{a}*{b}={a * b} {ENDINGS[ag]}", PERSONAS[ag - 1])
                 for rd in (1, 2) for ag in range(1, agents + 1)]
        out.append(Transcript(f"{a}*{b}", turns, consensus_line([str(a * b)] * agents), gold=str(a * b),
                              personas=PERSONAS[:agents], id=f"q{q}"))
    return out
