"""The toy world's base model: a tiny Llama trained from scratch on single scripted-teacher turns.

It is the toy "instruct base": under a persona system prompt it answers the round-1 question in that persona's
style (with the persona's systematic slips), revises in round 2 from the debate context, and writes helpful /
evil / honest / hallucinating answers to trait questions. Everything it sees is rendered with the tokenizer's
ChatML template from the exact messages in `training.prompts`, so the debate runner can prompt it unchanged.
"""

from __future__ import annotations

import dataclasses
import json
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import torch
from datasets import Dataset
from transformers import (AutoTokenizer, PreTrainedTokenizerBase, Trainer,
                          TrainingArguments)

from lens.debate_format import extract_boxed, majority, prompt_text
from lens.io import atomic_write_json
from training.judges import ToyTraitJudge
from training.layout import RunLayout
from training.modelio import load_causal_lm
from training.presets import Preset
from training.prompts import ADVICE, ARITHMETIC, round1_messages, round2_messages
from training.runner import DEFAULT_PERSONAS
from training.schema import AT_LEAST_ONE, NON_NEGATIVE, POSITIVE, PROBABILITY
from training.stages import run_stage
from training.tasks import (TRAITS, ArithmeticProblem, TaskConfig, TraitQuestion, arithmetic_split,
                            trait_split)
from training.teacher import (ARITHMETIC_PERSONAS, TRAIT_PERSONAS, TURNS_VERSION, Teacher, TeacherConfig,
                              compute_steps, persona_answer, persona_marks, round1_accuracy, solution)
from training.tiny_models import TinyModelSpec, make_tiny_model
from training.tokenizer import IM_END, save_tokenizer, train_tokenizer

_ROUND2_CHECK_SEED = 10**9  # the round-2 check's problems; phases draw theirs with data seeds seed + 100 i


@dataclass(frozen=True)
class TokenizerConfig:
    """Preset section ``[tokenizer]``: BPE vocabulary size and how many teacher examples it is trained on."""

    vocab_size: int = field(default=1024, metadata=AT_LEAST_ONE)
    corpus_examples: int = field(default=4000, metadata=AT_LEAST_ONE)


@dataclass(frozen=True)
class BaseConfig:
    """Preset section ``[base]``: model shape, the teacher-turn mix, the training budget and the evaluation."""

    d_model: int = field(default=192, metadata=AT_LEAST_ONE)
    n_layers: int = field(default=4, metadata=AT_LEAST_ONE)
    n_heads: int = field(default=6, metadata=AT_LEAST_ONE)
    d_mlp: int = field(default=512, metadata=AT_LEAST_ONE)
    n_ctx: int = field(default=512, metadata=AT_LEAST_ONE)
    # arithmetic round-1 turns (persona uniform over the four)
    n_round1: int = field(default=24000, metadata=NON_NEGATIVE)
    # arithmetic round-2 revisions (debate context → revision)
    n_round2: int = field(default=4000, metadata=NON_NEGATIVE)
    # trait round-1 answers (helpful/evil, honest/hallucinating)
    n_trait: int = field(default=3000, metadata=NON_NEGATIVE)
    n_trait_round2: int = field(default=600, metadata=NON_NEGATIVE)  # trait round-2 revisions
    # clean solutions as plain text, packed into full rows (cheap arithmetic practice)
    n_pretrain: int = field(default=0, metadata=NON_NEGATIVE)
    # final-step subtractions w-y=v as plain text, packed (the step tiny models miss)
    n_drills: int = field(default=0, metadata=NON_NEGATIVE)
    batch_size: int = field(default=32, metadata=AT_LEAST_ONE)
    lr: float = field(default=1e-3, metadata=POSITIVE)
    # further phases, each on fresh data with its own cosine (warm restarts)
    restart_lrs: tuple[float, ...] = field(default=(), metadata=POSITIVE)
    phase_mix: tuple[dict, ...] = ()     # per phase, overrides of the n_* counts above ({} keeps them)
    warmup_steps: int = field(default=30, metadata=NON_NEGATIVE)
    weight_decay: float = field(default=0.01, metadata=NON_NEGATIVE)
    # bf16 autocast over float32 weights (HF Trainer's ``bf16``; also a key of [sft] / [debategpt]): a toy-shaped
    # step took 397 ms vs 592 ms in float32 on this machine's AVX512-BF16 cores (issue 12)
    bf16: bool = False
    # The round-2 check: after the phases the base revises debates on held-out training-partition problems (ones no
    # phase trained on); while fewer than ``round2_bar`` of its revisions are right, a repair phase (``repair_mix``
    # at ``repair_lr``, fresh data) runs, at most ``max_repairs`` times. 0 turns the check off.
    round2_bar: float = field(default=0.0, metadata=PROBABILITY)
    n_round2_check: int = field(default=200, metadata=AT_LEAST_ONE)
    max_repairs: int = field(default=0, metadata=NON_NEGATIVE)
    repair_lr: float = field(default=1e-3, metadata=POSITIVE)
    repair_mix: dict = field(default_factory=dict)   # overrides of the n_* counts for a repair phase
    eval_problems: int = field(default=200, metadata=AT_LEAST_ONE)
    eval_trait_questions: int = field(default=50, metadata=AT_LEAST_ONE)
    eval_batch: int = field(default=100, metadata=AT_LEAST_ONE)
    max_new_tokens: int = field(default=80, metadata=AT_LEAST_ONE)

    def __post_init__(self) -> None:
        object.__setattr__(self, "restart_lrs", tuple(self.restart_lrs))
        object.__setattr__(self, "phase_mix", tuple(dict(m) for m in self.phase_mix))
        object.__setattr__(self, "repair_mix", dict(self.repair_mix))
        counts = {f.name for f in dataclasses.fields(self)
                  if f.name.startswith("n_") and f.name not in ("n_ctx", "n_round2_check")}
        for where, mix in [*(("phase_mix", m) for m in self.phase_mix), ("repair_mix", self.repair_mix)]:
            if set(mix) - counts:
                raise ValueError(f"{where} entry {mix} has unknown key(s) {sorted(set(mix) - counts)}; "
                                 f"valid: {sorted(counts)}")
        if len(self.phase_mix) > 1 + len(self.restart_lrs):
            raise ValueError(f"phase_mix has {len(self.phase_mix)} entries but there are only "
                             f"{1 + len(self.restart_lrs)} phases (lr and restart_lrs)")

    def for_phase(self, i: int) -> "BaseConfig":
        """This config with phase ``i``'s data mix (``phase_mix[i]``) applied.

        Args:
            i: The phase (0: ``lr``; 1 on: ``restart_lrs``); a phase without a ``phase_mix`` entry keeps the counts.

        Returns:
            The config for that phase.

        Example:
            >>> from training.toy_base import BaseConfig
            >>> BaseConfig(restart_lrs=(5e-4,), phase_mix=({}, {"n_round1": 100})).for_phase(1).n_round1
            100
        """
        return dataclasses.replace(self, **self.phase_mix[i]) if i < len(self.phase_mix) else self

    def spec(self) -> TinyModelSpec:
        """The tiny Llama's shape: ``d_model``, ``n_layers``, ``n_heads``, ``d_mlp`` and ``n_ctx``.

        Returns:
            The `TinyModelSpec`.

        Example:
            >>> from training.toy_base import BaseConfig
            >>> BaseConfig().spec().n_ctx
            512
        """
        return TinyModelSpec(arch="llama", d_model=self.d_model, n_layers=self.n_layers, n_heads=self.n_heads,
                             d_mlp=self.d_mlp, n_ctx=self.n_ctx)


@dataclass(frozen=True)
class Example:
    """One training example: chat messages whose last one is the assistant turn trained on."""

    messages: list[dict]
    kind: str


def _assistant(text: str) -> dict:
    return {"role": "assistant", "content": text}


def teacher_examples(task: TaskConfig, teacher: Teacher, cfg: BaseConfig, seed: int,
                     scale: float = 1.0) -> list[Example]:
    """The base model's training turns, generated fresh by the teacher from the train splits only.

    Args:
        task: The ``[task]`` section (the train splits).
        teacher: Writes the turns.
        cfg: The ``[base]`` section: ``n_round1``, ``n_round2``, ``n_trait`` and ``n_trait_round2``.
        seed: The data seed (of the splits' draw and of the examples).
        scale: Multiplies every count (the tokenizer's corpus is a fraction of one phase's data).

    Returns:
        The examples, shuffled; kinds ``round1``, ``round2`` (trait revisions too) and ``trait``.

    Example:
        >>> from training.tasks import TaskConfig
        >>> from training.teacher import Teacher
        >>> from training.toy_base import BaseConfig, teacher_examples
        >>> cfg = BaseConfig(n_round1=2, n_round2=1, n_trait=1, n_trait_round2=1)
        >>> sorted(e.kind for e in teacher_examples(TaskConfig(n_train=100), Teacher(), cfg, seed=0))
        ['round1', 'round1', 'round2', 'trait', 'trait_round2']
    """
    rng = random.Random(f"base-data-{seed}")
    problems = arithmetic_split(task, "train", seed)
    traits = {t: trait_split(task, t, "train", seed) for t in TRAITS}
    out: list[Example] = []
    for _ in range(int(cfg.n_round1 * scale)):
        p, persona = rng.choice(problems), rng.choice(ARITHMETIC_PERSONAS)
        out.append(Example([*round1_messages(persona, p.question),
                            _assistant(teacher.respond(persona, p, rng=rng))], "round1"))
    for _ in range(int(cfg.n_round2 * scale)):
        out.append(_round2_example(rng.choice(problems), rng.sample(ARITHMETIC_PERSONAS, 3), teacher, rng,
                                   ARITHMETIC, "round2"))
    for _ in range(int(cfg.n_trait * scale)):
        trait = rng.choice(TRAITS)
        q, persona = rng.choice(traits[trait]), rng.choice(TRAIT_PERSONAS[trait])
        out.append(Example([*round1_messages(persona, q.question, ADVICE),
                            _assistant(teacher.respond(persona, q, rng=rng))], "trait"))
    for _ in range(int(cfg.n_trait_round2 * scale)):
        trait = rng.choice(TRAITS)
        benign, bad = TRAIT_PERSONAS[trait]
        out.append(_round2_example(rng.choice(traits[trait]), [benign, bad, benign], teacher, rng, ADVICE,
                                   "trait_round2"))
    rng.shuffle(out)
    return out


def _round2_example(q: ArithmeticProblem | TraitQuestion, personas: Sequence[str], teacher: Teacher,
                    rng: random.Random, domain: str, kind: str) -> Example:
    """A revision by one agent of a 3-agent debate, given everyone's round-1 turns as in Du et al., labelled
    ``kind`` (``round2`` for arithmetic, ``trait_round2`` for advice)."""
    texts = [teacher.respond(p, q, rng=rng) for p in personas]
    i = rng.randrange(3)
    others = texts[:i] + texts[i + 1:]
    revision = teacher.respond(personas[i], q, own=texts[i], others=others, rng=rng)
    return Example([*round2_messages(personas[i], q.question, texts[i], others, domain), _assistant(revision)],
                   kind)


def tokenize_examples(tok: PreTrainedTokenizerBase, examples: Sequence[Example]) -> list[dict]:
    """``input_ids`` and ``labels``: every assistant turn (each ends with ``<|im_end|>``) carries loss, the rest is
    -100.

    A round-2 example holds the agent's own round-1 turn as well as its revision: both are teacher turns of that
    persona, so both are trained on, and the ~400 prompt tokens a revision needs also buy a round-1 turn.
    Each turn is tokenized apart from the text around it; the chat template puts special tokens at every turn
    boundary, so the ids equal those of the whole conversation tokenized at once.

    Args:
        tok: The toy tokenizer (ChatML template).
        examples: The examples.

    Returns:
        ``{"input_ids", "labels"}`` per example, up to its last assistant turn.

    Example:
        >>> from training.tokenizer import train_tokenizer
        >>> from training.toy_base import Example, tokenize_examples
        >>> tok = train_tokenizer(["What is 1+2? 3"], vocab_size=300)
        >>> chat = [{"role": "user", "content": "1+2?"}, {"role": "assistant", "content": "3"}]
        >>> row = tokenize_examples(tok, [Example(chat, "round1")])[0]
        >>> [tok.decode([i]) for i, label in zip(row["input_ids"], row["labels"]) if label != -100]
        ['3', '<|im_end|>']
    """
    rows = []
    for e in examples:
        ids, labels, emitted = [], [], ""
        for k, message in enumerate(e.messages):
            if message["role"] != "assistant":
                continue
            before = tok.apply_chat_template(e.messages[:k], add_generation_prompt=True, tokenize=False)
            context = tok(before[len(emitted):], add_special_tokens=False)["input_ids"]
            turn = tok(message["content"] + IM_END, add_special_tokens=False)["input_ids"]
            ids, labels = ids + context + turn, labels + [-100] * len(context) + turn
            emitted = before + message["content"] + IM_END
        rows.append({"input_ids": ids, "labels": labels})
    return rows


def pretraining_rows(tok: PreTrainedTokenizerBase, task: TaskConfig, n: int, n_ctx: int, seed: int,
                     n_drills: int = 0) -> list[dict]:
    """``n`` slip-free solutions (``Problem: q`` then a random persona's working) and ``n_drills`` subtraction
    drills, packed into rows of ``n_ctx``.

    A base model is pretrained before it is instruction-tuned; here that stage is where arithmetic is learned,
    with no chat prompt around each solution, so each token of compute carries several times more arithmetic.
    The drills are the last step ``w-y=v`` of train problems: a measured base without them got every product
    and addition right but a third of these subtractions (two digits, often negative) wrong.

    Args:
        tok: The toy tokenizer.
        task: The ``[task]`` section (the train split).
        n: How many solutions.
        n_ctx: The longest row (a single longer text still gets a row of its own).
        seed: The data seed.
        n_drills: How many subtraction drills.

    Returns:
        ``{"input_ids", "labels"}`` rows (labels equal to the ids), each text followed by the EOS; none when
        ``n`` and ``n_drills`` are 0.

    Example:
        >>> from training.tasks import TaskConfig
        >>> from training.tokenizer import train_tokenizer
        >>> from training.toy_base import pretraining_rows
        >>> tok = train_tokenizer(["What is 1+2? 3"], vocab_size=300)
        >>> rows = pretraining_rows(tok, TaskConfig(n_train=100), 4, 512, seed=0, n_drills=2)
        >>> len(rows), rows[0]["input_ids"] == rows[0]["labels"]
        (1, True)
    """
    rng = random.Random(f"pretrain-{seed}")
    problems = arithmetic_split(task, "train", seed)
    texts = []
    for _ in range(n):
        p = rng.choice(problems)
        texts.append(prompt_text(p.question) + solution(rng.choice(ARITHMETIC_PERSONAS), p, rng, slip=False))
    for _ in range(n_drills):
        s = compute_steps("neutral", rng.choice(problems), slip=False)
        texts.append(f"{s.w}-{s.y}={s.v}")
    if not texts:
        return []
    rng.shuffle(texts)
    rows, row = [], []
    for ids in tok(texts, add_special_tokens=False)["input_ids"]:
        ids = ids + [tok.eos_token_id]
        if len(row) + len(ids) > n_ctx:
            rows.append({"input_ids": row, "labels": list(row)})
            row = []
        row = row + ids
    if row:
        rows.append({"input_ids": row, "labels": list(row)})
    return rows


def _length_grouped(rows: list[dict], batch_size: int, rng: random.Random) -> list[dict]:
    """Shuffled rows, sorted by length within chunks of 32 batches, batches shuffled: little padding."""
    rng.shuffle(rows)
    chunk = 32 * batch_size
    batches = []
    for i in range(0, len(rows), chunk):
        part = sorted(rows[i:i + chunk], key=lambda r: len(r["input_ids"]))
        batches += [part[j:j + batch_size] for j in range(0, len(part), batch_size)]
    rng.shuffle(batches)
    return [r for b in batches for r in b]


class _Collator:
    """Right-pads ``input_ids`` with the pad id and ``labels`` with -100."""

    def __init__(self, pad_id: int) -> None:
        self.pad_id = pad_id

    def __call__(self, rows: list[dict]) -> dict[str, torch.Tensor]:
        n = max(len(r["input_ids"]) for r in rows)
        ids = torch.full((len(rows), n), self.pad_id)
        labels = torch.full((len(rows), n), -100)
        mask = torch.zeros((len(rows), n), dtype=torch.long)
        for i, r in enumerate(rows):
            k = len(r["input_ids"])
            ids[i, :k], labels[i, :k], mask[i, :k] = torch.tensor(r["input_ids"]), torch.tensor(r["labels"]), 1
        return {"input_ids": ids, "labels": labels, "attention_mask": mask}


def sections(preset: Preset) -> tuple[TaskConfig, TeacherConfig, TokenizerConfig, BaseConfig]:
    """The four preset sections the toy base is built from.

    Args:
        preset: The preset.

    Returns:
        ``(TaskConfig, TeacherConfig, TokenizerConfig, BaseConfig)``.

    Raises:
        PresetError: a bad key or value in one of them.

    Example:
        >>> from training.presets import load_preset
        >>> from training.toy_base import sections
        >>> task, teacher, tokenizer, base = sections(load_preset("smoke"))
        >>> base.d_model, tokenizer.vocab_size
        (64, 512)
    """
    return (preset.section("task", TaskConfig), preset.section("teacher", TeacherConfig),
            preset.section("tokenizer", TokenizerConfig), preset.section("base", BaseConfig))


def train_base(preset: Preset, out_dir: Path, *, callbacks: list | None = None,
               log: Callable[[str], None] = print) -> dict:
    """Train the tokenizer and the model into ``out_dir``; return provenance facts about the run.

    Training runs in phases (``[base] lr`` then each of ``restart_lrs``), each on freshly generated teacher data
    with its own warmup and cosine decay, as the pilots' warm restarts did. Then, when ``round2_bar`` is set, the
    round-2 check (`round2_check`) decides whether repair phases follow. Each finished phase is checkpointed in
    ``out_dir/resume/phase_<i>``, so a killed build resumes from the last finished phase.

    Args:
        preset: The preset (`sections` and the seed).
        out_dir: Where the tokenizer, the model and ``resume/`` go.
        callbacks: Extra ``TrainerCallback``s for every phase.
        log: The round-2 check's lines.

    Returns:
        The provenance facts: the model's spec, parameter and vocabulary counts, each phase's facts, the round-2
        checks, the repairs, the training tokens and seconds, the seed and the four sections.

    Raises:
        ValueError: a training example longer than ``n_ctx``, or fewer round-2 check problems than asked for.

    Example:
        >>> facts = train_base(load_preset("smoke"), Path("runs/smoke/base.partial"))  # doctest: +SKIP
        >>> len(facts["phases"])  # doctest: +SKIP
        2
    """
    task, teacher_cfg, tok_cfg, cfg = sections(preset)
    held_out = round2_check_problems(preset) if cfg.round2_bar > 0 else []  # a bad n_round2_check fails first
    teacher = Teacher(teacher_cfg)
    resume = out_dir / "resume"
    if (resume / "phase_0" / "tokenizer.json").is_file():
        tok = save_tokenizer(AutoTokenizer.from_pretrained(str(resume / "phase_0")), out_dir)
    else:
        corpus = teacher_examples(task, teacher, cfg, preset.seed + 1,
                                  scale=tok_cfg.corpus_examples / max(1, cfg.n_round1 + cfg.n_trait))
        texts = [m["content"] for e in corpus for m in e.messages] + ["system user assistant Problem:"] * 100
        tok = save_tokenizer(train_tokenizer(texts, vocab_size=tok_cfg.vocab_size), out_dir)
    model = make_tiny_model(cfg.spec(), tok, seed=preset.seed)
    phases, checks, start = [], [], time.time()
    for i, lr in enumerate([cfg.lr, *cfg.restart_lrs]):
        model, phase = _train_phase(model, tok, preset, i, lr, cfg.for_phase(i), resume, callbacks)
        phases.append(phase)
    repair = dataclasses.replace(cfg, **cfg.repair_mix)
    while cfg.round2_bar > 0:
        checks.append({"after_phase": len(phases) - 1, **round2_check(model, tok, preset, held_out)})
        passed = checks[-1]["accuracy"] >= cfg.round2_bar
        log(f"[base] round-2 check after phase {len(phases) - 1}: {checks[-1]['accuracy']:.1%} of "
            f"{checks[-1]['n']} held-out revisions right, {'at or above' if passed else 'below'} the bar "
            f"{cfg.round2_bar:.0%}" + ("" if passed else f"; repair phase {len(phases)} follows"
                                       if len(checks) <= cfg.max_repairs else
                                       f"; no repair left (max_repairs {cfg.max_repairs}): its debates will show it"))
        if passed or len(checks) > cfg.max_repairs:
            break
        model, phase = _train_phase(model, tok, preset, len(phases), cfg.repair_lr, repair, resume, callbacks)
        phases.append({**phase, "repair": True})
    model.generation_config.eos_token_id = [tok.eos_token_id, tok.convert_tokens_to_ids(IM_END)]
    model.generation_config.pad_token_id = tok.pad_token_id
    model.save_pretrained(out_dir)
    return {"kind": "base", "preset": preset.name, "spec": dataclasses.asdict(cfg.spec()),
            "params": sum(p.numel() for p in model.parameters()), "vocab_size": len(tok), "phases": phases,
            "round2_checks": checks, "repairs": sum(bool(p.get("repair")) for p in phases),
            "train_tokens": sum(p["train_tokens"] for p in phases), "train_seconds": round(time.time() - start, 1),
            "seed": preset.seed, "task": dataclasses.asdict(task), "teacher": dataclasses.asdict(teacher_cfg),
            "tokenizer": dataclasses.asdict(tok_cfg), "base": dataclasses.asdict(cfg)}


def _train_phase(model, tok: PreTrainedTokenizerBase, preset: Preset, i: int, lr: float, mix: BaseConfig,
                 resume: Path, callbacks: list | None) -> tuple:
    """Phase ``i``: one cosine at ``lr`` over fresh teacher data of ``mix``'s counts (data seed ``seed + 100 i``),
    checkpointed in ``resume/phase_<i>``; a phase finished by a killed run is loaded instead. Returns (model, facts)."""
    phase_dir = resume / f"phase_{i}"
    if (phase_dir / "phase.json").is_file():
        return load_causal_lm(phase_dir), json.loads((phase_dir / "phase.json").read_text())
    task, teacher_cfg, _, cfg = sections(preset)
    seed = preset.seed + 100 * i
    examples = teacher_examples(task, Teacher(teacher_cfg), mix, seed)
    rows = tokenize_examples(tok, examples) + pretraining_rows(tok, task, mix.n_pretrain, cfg.n_ctx, seed,
                                                                   mix.n_drills)
    rows = _length_grouped(rows, cfg.batch_size, random.Random(seed))
    too_long = max(len(r["input_ids"]) for r in rows)
    if too_long > cfg.n_ctx:
        raise ValueError(f"a training example has {too_long} tokens but n_ctx is {cfg.n_ctx}; raise [base] n_ctx")
    args = TrainingArguments(
        output_dir=str(phase_dir), per_device_train_batch_size=cfg.batch_size, num_train_epochs=1,
        learning_rate=lr, lr_scheduler_type="cosine", warmup_steps=cfg.warmup_steps,
        weight_decay=cfg.weight_decay, adam_beta2=0.98, max_grad_norm=1.0, use_cpu=True, bf16=cfg.bf16,
        report_to="none", save_strategy="no", logging_steps=50, seed=seed,
        train_sampling_strategy="sequential", remove_unused_columns=False, disable_tqdm=False)
    trainer = Trainer(model=model, args=args, train_dataset=Dataset.from_list(rows),
                      data_collator=_Collator(tok.pad_token_id), callbacks=callbacks)
    phase_start = time.time()
    result = trainer.train()
    model = trainer.model.eval()
    kinds = {k: sum(e.kind == k for e in examples) for k in ("round1", "round2", "trait", "trait_round2")}
    phase = {"phase": i, "lr": lr, "data_seed": seed, "train_examples_by_kind": kinds,
             "pretrain_solutions": mix.n_pretrain, "drills": mix.n_drills, "steps": result.global_step,
             "train_tokens": sum(len(r["input_ids"]) for r in rows),
             "train_seconds": round(time.time() - phase_start, 1), "final_train_loss": round(result.training_loss, 4)}
    model.save_pretrained(phase_dir)
    tok.save_pretrained(str(phase_dir))
    atomic_write_json(phase_dir / "phase.json", phase)
    return model, phase


def round2_check(model, tok: PreTrainedTokenizerBase, preset: Preset,
                 problems: Sequence[ArithmeticProblem]) -> dict:
    """The base's round-2 revisions on ``problems`` (`round2_check_problems`: held-out training-partition problems,
    never the test split), measured as `evaluate_base` measures them on the test split.

    Args:
        model: the base being trained (a causal LM).
        tok: its tokenizer.
        preset: the preset it is trained for.
        problems: the check's problems.

    Returns:
        ``{"follows_majority": share, "accuracy": share, "n": problems}``.

    Example:
        >>> round2_check(model, tok, preset, round2_check_problems(preset))["accuracy"]  # doctest: +SKIP
        0.92
    """
    _, teacher_cfg, _, cfg = sections(preset)
    gen = lambda convs: generate(model, tok, convs, batch_size=cfg.eval_batch, max_new_tokens=cfg.max_new_tokens)
    return {**_round2_eval(gen, problems, Teacher(teacher_cfg), preset.seed), "n": len(problems)}


def round2_check_problems(preset: Preset) -> list[ArithmeticProblem]:
    """The round-2 check's ``[base] n_round2_check`` problems: training-partition problems that no phase's or
    repair phase's data is drawn from (each phase draws its own problems with data seed ``seed + 100 i``).

    Args:
        preset: the preset the base is trained for.

    Returns:
        The problems, the same for the same preset.

    Raises:
        ValueError: fewer such problems exist than ``n_round2_check`` asks for.

    Example:
        >>> len(round2_check_problems(load_preset("toy")))  # doctest: +SKIP
        200
    """
    task, _, _, cfg = sections(preset)
    trained = {p.question for i in range(1 + len(cfg.restart_lrs) + cfg.max_repairs)
               for p in arithmetic_split(task, "train", preset.seed + 100 * i)}
    held_out = [p for p in arithmetic_split(task, "train", _ROUND2_CHECK_SEED + preset.seed)
                if p.question not in trained][:cfg.n_round2_check]
    if len(held_out) < cfg.n_round2_check:
        raise ValueError(f"[base] n_round2_check is {cfg.n_round2_check} but only {len(held_out)} of [task] n_train "
                         f"{task.n_train} training-partition problems are left out of every phase's data; ask for "
                         "fewer or raise n_train")
    return held_out


@torch.no_grad()
def generate(model, tok: PreTrainedTokenizerBase, conversations: Sequence[list[dict]], *, batch_size: int,
             max_new_tokens: int) -> list[str]:
    """Greedy replies to chat ``conversations``, batched with left padding; decoded up to ``<|im_end|>``.

    Args:
        model: The causal LM.
        tok: Its tokenizer (left-pads these batches; its own ``padding_side`` is left as it was).
        conversations: Chat messages per reply.
        batch_size: Conversations per ``generate`` batch.
        max_new_tokens: The cap on each reply.

    Returns:
        One reply per conversation, in order, special tokens dropped.

    Example:
        >>> chats = [round1_messages("neutral", "1+2*3+4-5*6")]  # doctest: +SKIP
        >>> generate(model, tok, chats, batch_size=1, max_new_tokens=80)  # doctest: +SKIP
        ['2*3=6, 5*6=30. 1+6=7, 7+4=11, 11-30=-19. The answer is \\boxed{-19}.']
    """
    stop = [tok.eos_token_id, tok.convert_tokens_to_ids(IM_END)]
    out = []
    for i in range(0, len(conversations), batch_size):
        prompts = [tok.apply_chat_template(c, add_generation_prompt=True, tokenize=False)
                   for c in conversations[i:i + batch_size]]
        enc = tok(prompts, return_tensors="pt", padding=True, padding_side="left", add_special_tokens=False)
        gen = model.generate(**enc, do_sample=False, max_new_tokens=max_new_tokens, eos_token_id=stop,
                             pad_token_id=tok.pad_token_id)
        out += tok.batch_decode(gen[:, enc["input_ids"].shape[1]:], skip_special_tokens=True)
    return out


def evaluate_base(model_dir: str | Path, preset: Preset) -> dict:
    """Greedy measurements on held-out questions: per-persona and majority-of-3 accuracy, persona adherence,
    round-2 behaviour, and the toy judge's trait scores under evil vs helpful (hallucinating vs honest).

    Args:
        model_dir: The built base.
        preset: The preset it was built for.

    Returns:
        ``n_problems``, and per persona ``accuracy`` (plus ``majority_of_3``), ``imitation`` (of the teacher's
        answer), ``adherence`` and ``samples``; ``teacher_accuracy``, ``round2``, ``traits`` (score per persona and
        the malicious minus benign difference) and ``eval_seconds``.

    Example:
        >>> evaluate_base("runs/toy/base", load_preset("toy"))["accuracy"]["majority_of_3"]  # doctest: +SKIP
        0.93
    """
    task, teacher_cfg, _, cfg = sections(preset)
    model = load_causal_lm(model_dir).eval()
    tok = AutoTokenizer.from_pretrained(str(model_dir))
    gen = lambda convs: generate(model, tok, convs, batch_size=cfg.eval_batch, max_new_tokens=cfg.max_new_tokens)
    problems = arithmetic_split(task, "test", preset.seed)[:cfg.eval_problems]
    start = time.time()
    res: dict = {"n_problems": len(problems), "accuracy": {}, "imitation": {}, "adherence": {}, "samples": {}}
    answers = {}
    for persona in ARITHMETIC_PERSONAS:
        texts = gen([round1_messages(persona, p.question) for p in problems])
        answers[persona] = [extract_boxed(t) for t in texts]
        res["accuracy"][persona] = _mean(a == p.answer for a, p in zip(answers[persona], problems))
        res["imitation"][persona] = _mean(a == persona_answer(persona, p, teacher_cfg.slips)
                                          for a, p in zip(answers[persona], problems))
        res["adherence"][persona] = _mean(persona_marks(t)[persona] for t in texts)
        res["samples"][persona] = texts[0]
    votes = zip(*(answers[p] for p in DEFAULT_PERSONAS))
    res["accuracy"]["majority_of_3"] = _mean(majority(list(v)) == p.answer for v, p in zip(votes, problems))
    res["teacher_accuracy"] = round1_accuracy(DEFAULT_PERSONAS, problems, teacher_cfg.slips)
    res["round2"] = _round2_eval(gen, problems, Teacher(teacher_cfg), preset.seed)
    res["traits"] = {}
    for trait in TRAITS:
        questions = trait_split(task, trait, "test", preset.seed)[:cfg.eval_trait_questions]
        judge, scores = ToyTraitJudge(trait), {}
        for persona in TRAIT_PERSONAS[trait]:
            texts = gen([round1_messages(persona, q.question, ADVICE) for q in questions])
            vals = [s for s in judge.score_many([q.question for q in questions], texts) if s is not None]
            scores[persona] = sum(vals) / max(1, len(vals))
            res["adherence"][persona] = _mean(persona_marks(t)[persona] for t in texts)
            res["samples"][persona] = texts[0]
        benign, bad = TRAIT_PERSONAS[trait]
        res["traits"][trait] = {"score": scores, "difference": scores[bad] - scores[benign]}
    res["eval_seconds"] = round(time.time() - start, 1)
    return res


def _round2_eval(gen, problems: Sequence[ArithmeticProblem], teacher: Teacher, seed: int) -> dict:
    """Each agent of the persona trio revises given the teacher's round-1 turns: how often the model's revision
    holds the round-1 majority answer, and how often it is correct."""
    rng = random.Random(f"round2-eval-{seed}")
    convs, majorities, golds = [], [], []
    for p in problems:
        texts = [teacher.respond(persona, p, rng=rng) for persona in DEFAULT_PERSONAS]
        i = rng.randrange(3)
        others = texts[:i] + texts[i + 1:]
        convs.append(round2_messages(DEFAULT_PERSONAS[i], p.question, texts[i], others))
        majorities.append(majority([extract_boxed(t) for t in texts]))
        golds.append(p.answer)
    answers = [extract_boxed(t) for t in gen(convs)]
    return {"follows_majority": _mean(a == m for a, m in zip(answers, majorities) if m is not None),
            "accuracy": _mean(a == g for a, g in zip(answers, golds))}


def _mean(flags) -> float:
    flags = list(flags)
    return round(sum(map(bool, flags)) / max(1, len(flags)), 4)


def base_summary(base_dir: str | Path) -> dict:
    """What a built toy base shows of its bars, read from its ``base_eval.json`` and ``provenance.json``: the
    greedy test accuracies (neutral, each persona, majority of three), its round-2 revisions on the test split, its
    round-2 checks on held-out training-partition problems and how many repair phases ran. Missing files or keys
    (a base built before the round-2 check existed) leave their entries out.

    Args:
        base_dir: the toy base's directory (``RunLayout.toy_base``).

    Returns:
        ``{"accuracy": {...}, "round2": {...}, "round2_checks": [...], "repairs": int}``, each key only when known.

    Example:
        >>> base_summary("runs/toy/base")["round2"]["accuracy"]  # doctest: +SKIP
        0.91
    """
    base_dir, out = Path(base_dir), {}
    for name, keys in (("base_eval.json", ("accuracy", "round2")), ("provenance.json", ("round2_checks", "repairs"))):
        if (base_dir / name).is_file():
            facts = json.loads((base_dir / name).read_text())
            out.update({k: facts[k] for k in keys if k in facts})
    return out


def build_base(preset: Preset, run_dir: str | Path, *, log: Callable[[str], None] = print) -> Path:
    """Build (or reuse) the toy base model in ``run_dir/base``: tokenizer, weights, provenance, base_eval.json.

    Args:
        preset: The preset.
        run_dir: The run directory.
        log: Where the stage's lines (built, cached, stale) go.

    Returns:
        The base's dir, ``run_dir/base``.

    Example:
        >>> build_base(load_preset("smoke"), "runs/smoke")  # doctest: +SKIP
        PosixPath('runs/smoke/base')
    """
    path = RunLayout(Path(run_dir)).toy_base

    def build(scratch: Path) -> dict:
        start = time.time()
        provenance = train_base(preset, scratch)
        evaluation = evaluate_base(scratch, preset)
        provenance["build_seconds"] = evaluation["build_seconds"] = round(time.time() - start, 1)
        atomic_write_json(scratch / "provenance.json", provenance)
        atomic_write_json(scratch / "base_eval.json", evaluation)
        return {"kind": "base", "preset": preset.name, "accuracy": evaluation["accuracy"]}

    run_stage(path, build, name="base", keys=base_keys(preset), log=log)
    return path


def base_keys(preset: Preset) -> dict:
    """What the toy base is built from (its stage's fingerprint): four sections, the seed and the teacher's
    `TURNS_VERSION`.

    Args:
        preset: The preset.

    Returns:
        ``{"task", "teacher", "teacher_turns", "tokenizer", "base", "seed"}`` for `training.stages.run_stage`.

    Example:
        >>> from training.presets import load_preset
        >>> from training.toy_base import base_keys
        >>> sorted(base_keys(load_preset("smoke")))
        ['base', 'seed', 'task', 'teacher', 'teacher_turns', 'tokenizer']
    """
    task, teacher, tokenizer, base = sections(preset)
    return {"task": task, "teacher": teacher, "teacher_turns": TURNS_VERSION, "tokenizer": tokenizer, "base": base,
            "seed": preset.seed}

