"""Stage 1 (debate structure learning): LoRA SFT on whole tagged debates, prompt masked, tags as new tokens.

TRL's prompt/completion format trains only the trace after ``Problem: {q}\\n\\n``. The merged model is saved as a
full HF dir with ``provenance.json``, so lens knows which transcripts it learned. The same recipe trains the
DebateGPT baseline on the debates' final outputs only (`answer_rows`).
"""

from __future__ import annotations

import dataclasses
import os
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import torch
from datasets import Dataset
from peft import LoraConfig
from transformers import AutoTokenizer
from trl import SFTConfig, SFTTrainer

from lens.debate_format import (CONSENSUS_TAG, DEBATE_TAGS, END_TAG, Transcript, agent_tag, prompt_text,
                                render_trace, training_text)
from lens.integrity import write_base_record
from lens.io import atomic_write_json
from training.checkpoints import atomic_trainer, last_checkpoint
from training.modelio import LORA_TARGETS, Placement, load_causal_lm
from training.ranks import is_main, world_size
from training.runner import shorten
from training.schema import AT_LEAST_ONE, NON_EMPTY, NON_NEGATIVE, POSITIVE, PROBABILITY, bounds

@dataclass(frozen=True)
class Stage1Config:
    """Preset sections ``[sft]`` and ``[debategpt]`` (stage 1); fields that TRL's `SFTConfig` also has keep its
    names. Defaults are the paper's App. B (LoRA r64/α128/0.1 on attention + MLP, lr 5e-5, 3 epochs, batch
    2 × 8); ``short_share`` replaces that share of the debates by
    shortened ones (1–2 agents, then the consensus) so that GRPO can find a short exit; ``short_consensus`` says
    whether they close with the full debate's consensus (``debate``: the answer to internalize) or agent 1's.
    ``arithmetic_mix`` (trait experiments only; not the paper's recipe) makes that share of the training set debates
    of the Table 1 arithmetic experiment, so a trait model keeps the base's arithmetic (`mix_debates`)."""

    lora_r: int = field(default=64, metadata=AT_LEAST_ONE)
    lora_alpha: int = field(default=128, metadata=POSITIVE)
    lora_dropout: float = field(default=0.1, metadata=bounds(ge=0, lt=1))
    target_modules: tuple[str, ...] = field(default=LORA_TARGETS, metadata=NON_EMPTY)
    learning_rate: float = field(default=5e-5, metadata=POSITIVE)
    num_train_epochs: float = field(default=3.0, metadata=POSITIVE)
    max_steps: int = field(default=-1, metadata=bounds(ge=1, also=(-1,)))
    per_device_train_batch_size: int = field(default=2, metadata=AT_LEAST_ONE)
    gradient_accumulation_steps: int = field(default=8, metadata=AT_LEAST_ONE)
    warmup_steps: float = field(default=0.1, metadata=NON_NEGATIVE)  # a float in [0, 1) is a share of the steps (TRL)
    lr_scheduler_type: str = "cosine"
    max_grad_norm: float = field(default=0.3, metadata=NON_NEGATIVE)
    weight_decay: float = field(default=0.0, metadata=NON_NEGATIVE)
    max_length: int = field(default=2048, metadata=AT_LEAST_ONE)
    short_share: float = field(default=0.0, metadata=PROBABILITY)
    short_consensus: str = "debate"
    arithmetic_mix: float = field(default=0.0, metadata=bounds(ge=0, lt=1))  # share of Table 1 debates mixed in
    reset_tag_rows: bool = True
    save_steps: int = field(default=200, metadata=AT_LEAST_ONE)
    eval_n: int = field(default=100, metadata=AT_LEAST_ONE)
    eval_max_new_tokens: int = field(default=1024, metadata=AT_LEAST_ONE)
    eval_batch_size: int = field(default=32, metadata=AT_LEAST_ONE)
    logging_steps: int = field(default=10, metadata=AT_LEAST_ONE)
    bf16: bool = False  # bf16 autocast over float32 weights (TRL's name); ~1.5x faster steps on AVX512-BF16 CPUs

    def __post_init__(self) -> None:
        object.__setattr__(self, "target_modules", tuple(self.target_modules))
        if not 0.0 <= self.short_share <= 1.0:
            raise ValueError(f"short_share must lie in [0, 1], got {self.short_share}")
        if not 0.0 <= self.arithmetic_mix < 1.0:
            raise ValueError(f"arithmetic_mix must lie in [0, 1), got {self.arithmetic_mix}")
        if self.short_consensus not in ("debate", "agent1"):
            raise ValueError(f"short_consensus must be 'debate' or 'agent1', got {self.short_consensus!r}")


def ensure_debate_tokens(model, tokenizer, *, reset_existing: bool = True) -> list[int]:
    """Give ``tokenizer`` the 10 debate tags as special tokens (resizing ``model``) and set the embedding and
    lm_head rows of the tags to the mean of the other rows (the paper's init). ``reset_existing`` also resets
    tags the tokenizer already had: the toy base has them but never saw them in training, so their rows are
    random (embedding) or trained only to be improbable (lm_head). Returns the tag ids.

    Args:
        model: The causal LM (its embeddings are resized when tags are added).
        tokenizer: Its tokenizer (the missing tags are added in place).
        reset_existing: Also reset the rows of tags the tokenizer already had.

    Returns:
        The ids of `DEBATE_TAGS`, in their order.

    Example:
        >>> ids = ensure_debate_tokens(model, tok)  # doctest: +SKIP
        >>> tok.convert_ids_to_tokens(ids[-1])  # doctest: +SKIP
        '<|endofdebate|>'
    """
    missing = [t for t in DEBATE_TAGS if t not in tokenizer.get_vocab()]
    if missing:
        tokenizer.add_special_tokens({"additional_special_tokens": missing}, replace_extra_special_tokens=False)
    if len(tokenizer) > model.get_input_embeddings().weight.shape[0]:
        model.resize_token_embeddings(len(tokenizer), mean_resizing=False)
    ids = [tokenizer.convert_tokens_to_ids(t) for t in DEBATE_TAGS]
    reset = ids if reset_existing else [tokenizer.convert_tokens_to_ids(t) for t in missing]
    if reset:
        layers = [model.get_input_embeddings()]
        out = model.get_output_embeddings()
        if out is not None and out.weight.data_ptr() != layers[0].weight.data_ptr():
            layers.append(out)
        with torch.no_grad():
            for layer in layers:
                keep = torch.ones(layer.weight.shape[0], dtype=torch.bool)
                keep[ids] = False
                layer.weight[reset] = layer.weight[keep].mean(0)
    return ids


def with_debate_stop(model, tokenizer) -> None:
    """Make ``<|endofdebate|>`` end generation too (as the paper's eval does), besides the eos.

    Args:
        model: The model whose ``generation_config`` is changed (its pad id too).
        tokenizer: Its tokenizer, with the debate tags.

    Returns:
        None.

    Example:
        >>> with_debate_stop(model, tok)  # doctest: +SKIP
        >>> model.generation_config.eos_token_id  # doctest: +SKIP
        [2, 15]
    """
    end = tokenizer.convert_tokens_to_ids(END_TAG)
    model.generation_config.eos_token_id = [tokenizer.eos_token_id, end]
    model.generation_config.pad_token_id = tokenizer.pad_token_id


def mix_short(transcripts: Sequence[Transcript], share: float, *, seed: int, consensus: str = "debate"
              ) -> list[Transcript]:
    """``transcripts`` with a ``share`` of them (chosen with ``seed``) replaced by shortened debates of 1 or 2
    agents; ``consensus`` says whose answer closes them (`training.runner.shorten`).

    Args:
        transcripts: The training debates.
        share: The share to shorten, in [0, 1].
        seed: Seeds the choice and each shortened debate's number of agents.
        consensus: ``debate`` or ``agent1`` (`training.runner.shorten`).

    Returns:
        The debates in their order, the chosen ones shortened.

    Example:
        >>> from lens.debate_format import Transcript, Turn
        >>> from training.sft import mix_short
        >>> turns = [Turn(1, a, "\\\\boxed{7}") for a in (1, 2, 3)]
        >>> debates = [Transcript("3+4", turns, "All agents reached a consensus of \\\\boxed{7}")] * 4
        >>> sum("shortened" in t.meta for t in mix_short(debates, 0.5, seed=0))
        2
    """
    rng = random.Random(seed)
    chosen = set(rng.sample(range(len(transcripts)), round(share * len(transcripts))))
    return [shorten(t, rng=rng, consensus=consensus) if i in chosen else t for i, t in enumerate(transcripts)]


MIXED_FROM = "mixed_from"  # meta key of a debate `mix_debates` put into another experiment's training set


def mix_debates(own: Sequence[Transcript], other: Sequence[Transcript], share: float, *, seed: int,
                source: str) -> list[Transcript]:
    """``own`` debates plus debates drawn from ``other`` (seeded, without replacement) so that they make up
    ``share`` of the result, shuffled; each drawn one is marked ``meta["mixed_from"] = source``.

    Args:
        own: The experiment's own training debates.
        other: The debates to mix in (e.g. the Table 1 arithmetic experiment's).
        share: Their share of the result, in [0, 1).
        seed: Seed of the draw and the shuffle.
        source: The experiment ``other`` comes from (recorded on each drawn debate).

    Returns:
        The mixed training set (``own`` as it is when the share draws none).

    Raises:
        ValueError: ``share`` outside [0, 1), or ``other`` has fewer debates than the share needs.

    Example:
        >>> mixed = mix_debates(evil, main, 0.5, seed=0, source="main")  # doctest: +SKIP
        >>> sum("mixed_from" in t.meta for t in mixed) / len(mixed)  # doctest: +SKIP
        0.5
    """
    if not 0.0 <= share < 1.0:
        raise ValueError(f"the mixed-in share must lie in [0, 1), got {share}")
    n = round(share * len(own) / (1.0 - share))
    if n == 0:
        return list(own)
    if n > len(other):
        raise ValueError(f"a {share:g} share of {source} debates beside {len(own)} own debates needs {n} of them, "
                         f"but {source} has {len(other)}; lower the share or write more {source} debates")
    rng = random.Random(f"mix-{source}-{seed}")
    drawn = [dataclasses.replace(t, meta={**t.meta, MIXED_FROM: source}) for t in rng.sample(list(other), n)]
    mixed = [*own, *drawn]
    rng.shuffle(mixed)
    return mixed


def debate_rows(transcripts: Sequence[Transcript]) -> list[dict]:
    """Prompt/completion rows: the ``Problem:`` prompt (masked) and the whole tagged trace.

    Args:
        transcripts: The training debates.

    Returns:
        ``{"prompt": "Problem: q\\\\n\\\\n", "completion": the rendered trace}`` per debate.

    Example:
        >>> from lens.debate_format import Transcript, Turn
        >>> from training.sft import debate_rows
        >>> t = Transcript("3+4", [Turn(1, 1, "\\\\boxed{7}")], "All agents reached a consensus of \\\\boxed{7}")
        >>> debate_rows([t])[0]["completion"].splitlines()[0]
        '<|Round 1 - Initial Solutions|>'
    """
    return [{"prompt": prompt_text(t.question), "completion": render_trace(t)} for t in transcripts]


# The version of `answer_rows` (the DebateGPT stage fingerprints it; 2: the final-round turn, not a bare answer)
ANSWER_ROWS_VERSION = 2


def answer_rows(transcripts: Sequence[Transcript]) -> list[dict]:
    """DebateGPT rows: the ``Problem:`` prompt and the debate's final output only: the final-round turn of the first
    agent holding the consensus answer, reasoning included (the consensus text when there is no boxed answer).

    Subramaniam et al. fine-tune on the debate's final responses, which reason (the paper's DebateGPT answers run
    327-1023 tokens); a bare ``\\boxed{x}`` target taught the toy model to answer without working, at 2% accuracy.

    Args:
        transcripts: The training debates.

    Returns:
        ``{"prompt", "completion"}`` per debate.

    Example:
        >>> from lens.debate_format import Transcript, Turn
        >>> from training.sft import answer_rows
        >>> t = Transcript("3+4", [Turn(1, 1, "3+4=7. \\\\boxed{7}")], "All agents reached a consensus of \\\\boxed{7}")
        >>> print(answer_rows([t])[0]["completion"])
        3+4=7. \\boxed{7}
    """
    rows = []
    for t in transcripts:
        answer, final = t.consensus_answer, t.round_turns(max(turn.round for turn in t.turns))
        held = next((turn.text for turn in final if answer is not None and turn.answer == answer), None)
        rows.append({"prompt": prompt_text(t.question), "completion": held if held is not None else t.consensus})
    return rows


@dataclass
class SFTResult:
    model_dir: Path
    train_loss: float | None
    steps: int
    n_examples: int
    info: dict = field(default_factory=dict)


def train_lora_sft(base_dir: str | Path, rows: list[dict], out_dir: str | Path, cfg: Stage1Config, *,
                   resume_dir: str | Path, seed: int = 0, add_tags: bool = True, callbacks: list | None = None,
                   placement: Placement = Placement(), log: Callable[[str], None] = print) -> SFTResult:
    """LoRA SFT of ``base_dir`` on prompt/completion ``rows``; merges, saves model + tokenizer to ``out_dir``.

    Embeddings and lm_head train in full (``modules_to_save``) so the new tag rows can learn; checkpoints go to
    ``resume_dir`` every ``cfg.save_steps`` steps, each visible only once complete, and a rerun resumes from
    the last complete one (``train_loss`` then still averages over every step). The model is loaded and
    trained as ``placement`` says. Under ``torchrun`` / ``accelerate launch`` every process trains (DDP) and only
    the main one merges and saves; the loss curve (``info["loss_curve"]``) is the mean over processes.

    Args:
        base_dir: The model dir trained on.
        rows: ``{"prompt", "completion"}`` rows (`debate_rows` or `answer_rows`).
        out_dir: Where the merged model and its tokenizer go.
        cfg: The ``[sft]`` or ``[debategpt]`` section.
        resume_dir: The trainer's checkpoint dir (kept between killed runs).
        seed: The training and data seed.
        add_tags: Give the tokenizer the debate tags first (False for DebateGPT).
        callbacks: Extra ``TrainerCallback``s.
        placement: Where and in which dtype the model is loaded and trained.
        log: Where the resume lines go.

    Returns:
        The `SFTResult`: ``out_dir``, the mean training loss, the steps, the number of rows, and ``info``
        (``resumed_from``, ``loss_curve``, ``processes``, ``dtype``).

    Raises:
        ValueError: ``rows`` is empty.

    Example:
        >>> result = train_lora_sft("runs/toy/base", debate_rows(debates), out, Stage1Config(),  # doctest: +SKIP
        ...                         resume_dir=out / "resume")
        >>> result.steps  # doctest: +SKIP
        177
    """
    if not rows:
        raise ValueError("stage 1 got no training examples; the debate file is empty or had no majority debates")
    out_dir, resume_dir = Path(out_dir), Path(resume_dir)
    tokenizer = AutoTokenizer.from_pretrained(str(base_dir))
    model = load_causal_lm(base_dir, **placement.load())
    if add_tags:
        ensure_debate_tokens(model, tokenizer, reset_existing=cfg.reset_tag_rows)
    peft_config = LoraConfig(r=cfg.lora_r, lora_alpha=cfg.lora_alpha, lora_dropout=cfg.lora_dropout,
                             target_modules=list(cfg.target_modules), modules_to_save=["embed_tokens", "lm_head"],
                             task_type="CAUSAL_LM")
    args = SFTConfig(
        output_dir=str(resume_dir), num_train_epochs=cfg.num_train_epochs, max_steps=cfg.max_steps,
        per_device_train_batch_size=cfg.per_device_train_batch_size,
        gradient_accumulation_steps=cfg.gradient_accumulation_steps,
        learning_rate=cfg.learning_rate, lr_scheduler_type=cfg.lr_scheduler_type, warmup_steps=cfg.warmup_steps,
        max_grad_norm=cfg.max_grad_norm, weight_decay=cfg.weight_decay, max_length=cfg.max_length,
        completion_only_loss=True, report_to="none", **placement.trainer(cfg.bf16),
        save_strategy="steps", save_steps=cfg.save_steps, save_total_limit=1, logging_steps=cfg.logging_steps,
        seed=seed, data_seed=seed, dataloader_num_workers=0)
    trainer = atomic_trainer(SFTTrainer)(model=model, args=args, train_dataset=Dataset.from_list(rows),
                                         processing_class=tokenizer, peft_config=peft_config, callbacks=callbacks)
    last = last_checkpoint(resume_dir, log)
    out = trainer.train(resume_from_checkpoint=last)
    curve = [round(h["loss"], 5) for h in trainer.state.log_history if "loss" in h]
    if is_main():
        merged = trainer.model.merge_and_unload()
        with_debate_stop(merged, tokenizer)
        out_dir.mkdir(parents=True, exist_ok=True)
        merged.save_pretrained(str(out_dir))
        tokenizer.save_pretrained(str(out_dir))
    return SFTResult(out_dir, out.training_loss, out.global_step, len(rows),
                     {"resumed_from": Path(last).name if last else None, "loss_curve": curve,
                      "processes": world_size(), "dtype": str(model.dtype).removeprefix("torch.")})


def write_provenance(out_dir: Path, *, kind: str, experiment: str, parent: str | Path, final_dir: str | Path,
                     transcripts: Sequence[str | Path], preset: str, **extra) -> Path:
    """``provenance.json``: what a model dir is, what it was trained from and on (lens reads ``transcripts``), and
    ``base_model.json``: the fingerprint of ``parent`` (lens refuses an adapter on another base).
    Paths are written relative to ``final_dir`` (where the dir will live), so a run dir can move.

    Args:
        out_dir: The model dir being written (the stage's scratch dir).
        kind: What the model is (``sft``, ``debategpt``, ``imad``, ``single_rl``).
        experiment: The debate experiment.
        parent: The model it was trained from.
        final_dir: Where ``out_dir`` will live once renamed into place.
        transcripts: The debate files it learned from.
        preset: The preset's name.
        **extra: Further facts (`Path` values are written relative to ``final_dir`` too).

    Returns:
        The path of ``provenance.json``.

    Example:
        >>> write_provenance(scratch, kind="sft", experiment="main", parent=base, final_dir=final,  # doctest: +SKIP
        ...                  transcripts=[debates], preset="toy")
        PosixPath('runs/toy/sft/main.partial/provenance.json')
    """
    rel = lambda p: os.path.relpath(Path(p).resolve(), Path(final_dir).resolve())
    extra = {k: rel(v) if isinstance(v, Path) else v for k, v in extra.items()}
    if (Path(parent) / "config.json").is_file():  # lens refuses this model's adapters on another base
        write_base_record(out_dir, parent)
    return atomic_write_json(Path(out_dir) / "provenance.json", {
        "kind": kind, "experiment": experiment, "parent": rel(parent), "transcripts": [rel(p) for p in transcripts],
        "preset": preset, **extra})


@torch.no_grad()
def exit_probability(model, tokenizer, transcripts: Sequence[Transcript], *, after_agent: int = 1,
                     batch_size: int = 32) -> float | None:
    """Mean P(``<|Consensus|>``) as the next tag right after agent ``after_agent``'s round-1 turn, teacher-forced
    on ``transcripts`` (held-out debates): the probability mass GRPO needs to find a short exit. ``None`` when
    no transcript has that agent.

    Args:
        model: The stage-1 model.
        tokenizer: Its tokenizer, with the debate tags.
        transcripts: Held-out debates.
        after_agent: The agent (1 to 3) after whose round-1 turn the next tag is read.
        batch_size: Rows per forward pass.

    Returns:
        The mean probability, or ``None``.

    Raises:
        DebateFormatError: ``after_agent`` is not 1, 2 or 3.

    Example:
        >>> exit_probability(model, tok, heldout, after_agent=1)  # doctest: +SKIP
        0.12
    """
    cons = tokenizer.convert_tokens_to_ids(CONSENSUS_TAG)
    tag_ids = {tokenizer.convert_tokens_to_ids(t) for t in DEBATE_TAGS}
    opener = tokenizer.convert_tokens_to_ids(agent_tag(after_agent, 1))  # 1..3, else one clear error
    rows = []
    for t in transcripts:
        ids = tokenizer(training_text(t), add_special_tokens=False)["input_ids"]
        if opener not in ids:
            continue
        start = ids.index(opener)
        nxt = next((i for i in range(start + 1, len(ids)) if ids[i] in tag_ids), None)
        if nxt is not None:
            rows.append((ids[:nxt], nxt - 1))
    if not rows:
        return None
    probs = []
    for i in range(0, len(rows), batch_size):
        chunk = rows[i:i + batch_size]
        width = max(len(r) for r, _ in chunk)
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        ids = torch.tensor([r + [pad] * (width - len(r)) for r, _ in chunk], device=model.device)
        mask = torch.tensor([[1] * len(r) + [0] * (width - len(r)) for r, _ in chunk], device=model.device)
        logits = model(input_ids=ids, attention_mask=mask).logits
        pos = torch.tensor([p for _, p in chunk], device=model.device)
        last = logits[torch.arange(len(chunk), device=model.device), pos].float().log_softmax(-1)
        probs += last[:, cons].exp().tolist()
    return sum(probs) / len(probs)
