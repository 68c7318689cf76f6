"""Writes the tiny sample files in this dir, in the formats the paper released (PAPER.md §2, §5.2, §5.4, §7.1).

The debates are written by the toy teacher (`training.teacher`) and rendered with the paper's tags, so they are
real debates in the paper's shapes, only small. Rerun after changing the teacher:
``python tests/data/paper/make_samples.py``.
"""

from __future__ import annotations

import json
from pathlib import Path

from lens.debate_format import render_trace
from training.backends import TeacherBackend
from training.runner import run_debates
from training.tasks import TaskConfig, arithmetic_split, trait_split
from training.teacher import TRAIT_PERSONAS, Teacher
from training.tokenizer import train_tokenizer

HERE = Path(__file__).parent
TASK = TaskConfig(operand_min=1, operand_max=9, n_train=24, n_test=24, n_trait_train=16, n_trait_test=8)


def _dump(name: str, data) -> None:
    (HERE / name).write_text(json.dumps(data, indent=1) + "\n")


def main() -> None:
    backend = TeacherBackend(Teacher(), train_tokenizer(["a b c 1 2 3"], vocab_size=300))
    problems = arithmetic_split(TASK, "train", 7)[:12]
    arith = [r for r in run_debates(problems, backend, seed=7, id_prefix="sample") if r.has_majority]
    _dump("arithmetic_3_2.json", [{"question": r.transcript.question, "debate_trace": render_trace(r.transcript),
                                   "gold_answer": r.transcript.gold} for r in arith])
    for trait, short in (("evil", "evil"), ("hallucination", "hallu")):
        train = trait_split(TASK, trait, "train", 7)
        _dump(f"{short}_train.json", [q.question for q in train])
        _dump(f"{short}_test.json", [q.question for q in trait_split(TASK, trait, "test", 7)])
        benign, bad = TRAIT_PERSONAS[trait]
        recs = run_debates(train[:8], backend, personas=(benign,) * 3, malicious={2: bad}, domain="advice", seed=7)
        rows = []
        for r in recs:
            explanation = "Agents 1 and 3 agree; agent 2 argues otherwise."
            rows.append({"question": r.transcript.question, "debate_trace": render_trace(r.transcript),
                         "consensus_type": "majority", "consensus_explanation": explanation})
        _dump(f"{short}_debate.json", rows)
    mixture = {"arithmetic": [{"task": "arithmetic", "question": r.transcript.question,
                               "trace": render_trace(r.transcript), "answer": r.transcript.gold} for r in arith[:4]],
               "cnn_dailymail": [{"task": "cnn_dailymail", "question": f"Summarize: {r.transcript.question}",
                                  "trace": render_trace(r.transcript).replace("\\boxed", "summary "),
                                  "answer": "A short summary."} for r in arith[4:6]]}
    _dump("debate_combined.json", mixture)
    gsm = [{"question": f"Ann has {a} boxes of {b} pens and gives away {c} pens. How many pens are left?",
            "answer": f"She has {a}*{b} = {a * b} pens, then {a * b}-{c} = {a * b - c}.\n#### {a * b - c}"}
           for a, b, c in ((2, 3, 1), (3, 4, 2), (5, 2, 3), (4, 4, 4), (6, 3, 5), (2, 9, 7), (7, 2, 1), (3, 3, 3),
                           (8, 2, 6), (4, 5, 9), (9, 2, 8), (5, 5, 5))]
    (HERE / "gsm8k.jsonl").write_text("".join(json.dumps(r) + "\n" for r in gsm))
    mmlu = [{"question": f"What is {a} + {b}?", "options": [str(a + b + d) for d in (-1, 0, 1, 2)], "answer": "B",
             "answer_index": 1, "category": "math"} for a, b in ((1, 2), (3, 4), (5, 1), (2, 2), (6, 3), (4, 4),
                                                                 (7, 1), (3, 5))]
    (HERE / "mmlu_pro.jsonl").write_text("".join(json.dumps(r) + "\n" for r in mmlu))
    bbh = []
    for i in range(8):
        bbh.append({"input": f"Question: Alice tells the truth. Bob says Alice lies. Does Bob tell the truth? ({i})",
                    "target": "No", "task": "web_of_lies"})
        bbh.append({"input": f"Is the following argument deductively valid? All A are B; x is A; so x is B. ({i})",
                    "target": "valid", "task": "formal_fallacies"})
    (HERE / "bbh.jsonl").write_text("".join(json.dumps(r) + "\n" for r in bbh))


if __name__ == "__main__":
    main()
