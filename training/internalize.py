"""Stage 2 (IMAD internalization): GRPO phases, each a fresh LoRA on the previous phase's merged model.

Each phase trains under a shorter token budget (`training.schedules`) with a clipped correctness reward and a
decaying, gaming-proof tag reward (`training.rewards`), then merges, so the budget anneals from the SFT model's
own length distribution down to one short exit. Held-out checks after each phase use
`training.evaluate.evaluate_model`.
"""

from __future__ import annotations

import importlib.util
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

from datasets import Dataset
from peft import LoraConfig
from transformers import AutoTokenizer, TrainerCallback
from trl import GRPOConfig, GRPOTrainer

from lens.io import atomic_write_json
from training.checkpoints import atomic_trainer
from training.evaluate import EvalItem, evaluate_model, quantile, sample_lengths
from training.modelio import LORA_TARGETS, Placement, load_causal_lm
from training.rewards import (CLIPPING_MODES, AnswerCheck, RewardSpec, TagVocab, TagWeights, correctness_reward,
                              structure_reward)
from training.schedules import Phase, PhaseSpec, resolve_phases
from training.schema import AT_LEAST_ONE, NON_EMPTY, NON_NEGATIVE, POSITIVE, bounds
from training.stages import read_json


@dataclass(frozen=True)
class Stage2Config:
    """Preset section ``[internalize]`` (stage 2); fields that TRL's `GRPOConfig` also has keep its names. Defaults
    follow the paper's code (lr 5e-6, β 0.02, 4 generations, ε 0.1, μ 3, bnpo, T 0.7, LoRA r32/α64/0.1,
    budgets 2048 → 1274 → 500, each 2 epochs of 944 prompts at 1 prompt/step). ``phases`` is the schedule as
    data: a list of ``{budget, steps, tag_weight?}`` tables. ``use_vllm``: generate through TRL's vLLM
    integration (colocated) when vLLM is installed and the run is on CUDA; HF ``generate`` otherwise.
    ``keep_phase_models``: keep every phase's merged weights (by default only the final IMAD model and each
    phase's LoRA adapter stay on disk)."""

    phases: tuple = field(default=({"budget": 2048, "steps": 1888}, {"budget": 1274, "steps": 1888},
                                   {"budget": 500, "steps": 1888}), metadata=NON_EMPTY)
    clipping: str = "truncate"
    generation_cap: int = field(default=2048, metadata=AT_LEAST_ONE)
    learning_rate: float = field(default=5e-6, metadata=POSITIVE)
    beta: float = field(default=0.02, metadata=NON_NEGATIVE)
    num_generations: int = field(default=4, metadata=bounds(ge=2))
    per_device_train_batch_size: int = field(default=4, metadata=AT_LEAST_ONE)
    temperature: float = field(default=0.7, metadata=POSITIVE)
    top_p: float = field(default=0.9, metadata=bounds(gt=0, le=1))
    scale_rewards: str = "group"
    loss_type: str = "bnpo"
    epsilon: float = field(default=0.1, metadata=POSITIVE)
    num_iterations: int = field(default=3, metadata=AT_LEAST_ONE)
    lr_scheduler_type: str = "constant"
    lora_r: int = field(default=32, metadata=AT_LEAST_ONE)
    lora_alpha: int = field(default=64, metadata=POSITIVE)
    lora_dropout: float = field(default=0.1, metadata=bounds(ge=0, lt=1))
    target_modules: tuple[str, ...] = field(default=LORA_TARGETS, metadata=NON_EMPTY)
    tag_round: float = field(default=0.3, metadata=NON_NEGATIVE)
    tag_agent: float = field(default=0.3, metadata=NON_NEGATIVE)
    tag_consensus: float = field(default=0.5, metadata=NON_NEGATIVE)
    tag_end: float = field(default=0.3, metadata=NON_NEGATIVE)
    decay_terminal_tags: bool = True
    min_turn_chars: int = field(default=1, metadata=NON_NEGATIVE)
    judge_threshold: float = field(default=50.0, metadata=bounds(ge=0, le=100))
    n_prompts: int = field(default=944, metadata=AT_LEAST_ONE)
    ref_samples: int = field(default=64, metadata=AT_LEAST_ONE)
    ref_quantile: float = field(default=0.95, metadata=bounds(gt=0, le=1))
    probe_steps: int = field(default=2, metadata=NON_NEGATIVE)
    eval_n: int = field(default=100, metadata=AT_LEAST_ONE)
    eval_max_new_tokens: int = field(default=1024, metadata=AT_LEAST_ONE)
    eval_batch_size: int = field(default=32, metadata=AT_LEAST_ONE)
    select: str = "last"
    use_vllm: bool = True
    keep_phase_models: bool = False

    def __post_init__(self) -> None:
        object.__setattr__(self, "phases", tuple(self.phases))
        object.__setattr__(self, "target_modules", tuple(self.target_modules))
        if self.clipping not in CLIPPING_MODES:
            raise ValueError(f"unknown clipping {self.clipping!r}; valid: {list(CLIPPING_MODES)}")
        if self.select not in ("last", "best"):
            raise ValueError(f"unknown select {self.select!r}; valid: ['last', 'best']")
        if self.per_device_train_batch_size % self.num_generations:
            raise ValueError(f"per_device_train_batch_size {self.per_device_train_batch_size} must be a multiple of "
                             f"num_generations "
                             f"{self.num_generations} (the batch counts completions)")
        self.phase_specs()

    def phase_specs(self) -> list[PhaseSpec]:
        """The ``phases`` tables as `PhaseSpec`s.

        Returns:
            One `PhaseSpec` per entry of ``phases``, in order.

        Raises:
            ValueError: an entry with a missing or unknown key.

        Example:
            >>> from training.internalize import Stage2Config
            >>> Stage2Config().phase_specs()[0]
            PhaseSpec(budget=2048, steps=1888, tag_weight=None)
        """
        try:
            return [PhaseSpec(**p) for p in self.phases]
        except TypeError as e:
            raise ValueError(f"a [[internalize.phases]] entry is invalid ({e}); keys: budget, steps, "
                             "tag_weight") from None

    @property
    def weights(self) -> TagWeights:
        return TagWeights(self.tag_round, self.tag_agent, self.tag_consensus, self.tag_end, self.decay_terminal_tags)


def _probe_callback(steps: int):
    """Stops a phase whose first ``steps`` steps were all truncated with zero reward variance (no signal, only
    drift); ``cb.skipped`` tells the caller to discard the phase."""
    class ProbeStop(TrainerCallback):
        def __init__(self) -> None:
            self.dead: list[bool] = []
            self.skipped = False

        def on_log(self, args, state, control, logs=None, **kwargs):
            if logs and "reward_std" in logs and len(self.dead) < steps:
                self.dead.append(logs.get("completions/clipped_ratio", 0.0) >= 0.999 and logs["reward_std"] < 1e-6)
                if len(self.dead) == steps and all(self.dead):
                    self.skipped = True
                    control.should_training_stop = True

    return ProbeStop()


ADAPTER = "adapter"
CURVE_KEYS = {"reward": "reward", "reward_std": "reward_std", "rewards/correctness/mean": "correctness",
              "rewards/structure/mean": "structure", "completions/mean_length": "mean_length",
              "completions/clipped_ratio": "clipped_ratio", "kl": "kl", "frac_reward_zero_std": "frac_zero_std"}


def vllm_args(cfg: Stage2Config, placement: Placement) -> dict:
    """TRL's vLLM generation arguments when ``cfg.use_vllm``, vLLM is importable and the run is on CUDA; else
    none (HF ``generate``).

    Args:
        cfg: The ``[internalize]`` section (its ``use_vllm``).
        placement: Where the run trains (its ``device``).

    Returns:
        ``{"use_vllm": True, "vllm_mode": "colocate"}``, or ``{}``.

    Example:
        >>> from training.internalize import Stage2Config, vllm_args
        >>> from training.modelio import Placement
        >>> vllm_args(Stage2Config(), Placement(device="cpu"))
        {}
    """
    if cfg.use_vllm and placement.device.startswith("cuda") and importlib.util.find_spec("vllm") is not None:
        return {"use_vllm": True, "vllm_mode": "colocate"}
    return {}


def train_phase(model_dir: Path, out_dir: Path, phase: Phase, cfg: Stage2Config, rows: list[dict],
                check_for: Callable[[str, str], AnswerCheck], *, needs_boxed: bool, seed: int, trl_dir: Path,
                placement: Placement = Placement(), tagged: bool = True) -> dict:
    """One GRPO phase: a fresh LoRA on ``model_dir`` (the previous phase's merged model), trained at
    ``phase.budget``; its adapter goes to ``out_dir/adapter`` and the merged model to ``out_dir`` unless the
    probe skipped it. ``tagged=False`` (Single + RL) rewards correctness alone, read from the single answer.
    Returns the phase log.

    Args:
        model_dir: The model the LoRA is trained on (the previous phase's merged model, or the SFT model).
        out_dir: Where the merged model and ``adapter/`` go.
        phase: The resolved phase (budget, tag coefficient, steps).
        cfg: The ``[internalize]`` section.
        rows: The GRPO dataset, ``{"prompt", "question", "gold"}`` per training question.
        check_for: ``(question, gold) -> check`` (`training.rewards.gold_match` or `judge_benign`).
        needs_boxed: Whether a turn needs a ``\\boxed{}`` answer to earn its tag (arithmetic).
        seed: The phase's training and data seed.
        trl_dir: TRL's output dir (removed afterwards).
        placement: Where and in which dtype the model is loaded and trained.
        tagged: False for Single + RL (correctness only, no tag reward).

    Returns:
        The phase log: the `Phase` fields, ``skipped``, ``steps_run``, ``train_wall_s`` and the per-step ``curve``.

    Example:
        >>> log = train_phase(sft_dir, work / "phase0", phase, cfg, rows, check_for,  # doctest: +SKIP
        ...                   needs_boxed=True, seed=0, trl_dir=work / "trl")
        >>> log["skipped"], log["steps_run"]  # doctest: +SKIP
        (False, 1888)
    """
    tokenizer = AutoTokenizer.from_pretrained(str(model_dir), padding_side="left")
    model = load_causal_lm(model_dir, **placement.load())
    vocab = TagVocab(tokenizer, require=tagged)
    spec = RewardSpec(budget=phase.budget, coeff=phase.coeff, clipping=cfg.clipping, weights=cfg.weights,
                      min_turn_chars=cfg.min_turn_chars, turn_needs_boxed=needs_boxed, tagged=tagged)
    args = GRPOConfig(
        output_dir=str(trl_dir), max_steps=phase.steps, per_device_train_batch_size=cfg.per_device_train_batch_size,
        num_generations=cfg.num_generations,
        max_completion_length=phase.budget if cfg.clipping == "truncate" else max(cfg.generation_cap, phase.budget),
        learning_rate=cfg.learning_rate, lr_scheduler_type=cfg.lr_scheduler_type, warmup_steps=0, beta=cfg.beta,
        temperature=cfg.temperature, top_p=cfg.top_p, scale_rewards=cfg.scale_rewards, loss_type=cfg.loss_type,
        epsilon=cfg.epsilon, num_iterations=cfg.num_iterations, mask_truncated_completions=False,
        report_to="none", logging_steps=1, save_strategy="no", **placement.trainer(), **vllm_args(cfg, placement),
        seed=seed, data_seed=seed, dataloader_num_workers=0)
    peft_config = LoraConfig(r=cfg.lora_r, lora_alpha=cfg.lora_alpha, lora_dropout=cfg.lora_dropout,
                             target_modules=list(cfg.target_modules), task_type="CAUSAL_LM")
    probe = _probe_callback(cfg.probe_steps)
    trainer = atomic_trainer(GRPOTrainer)(
        model=model, processing_class=tokenizer, args=args, peft_config=peft_config, callbacks=[probe],
        reward_funcs=[correctness_reward(vocab, spec, check_for),
                      *([structure_reward(vocab, spec)] if tagged else [])],
        train_dataset=Dataset.from_list(rows).shuffle(seed=seed))
    start = time.time()
    trainer.train()
    curve = [{short: round(h[key], 4) for key, short in CURVE_KEYS.items() if key in h}
             for h in trainer.state.log_history if "reward" in h]
    log = {**asdict(phase), "skipped": probe.skipped, "steps_run": trainer.state.global_step,
           "train_wall_s": round(time.time() - start, 1), "curve": curve}
    if not probe.skipped:
        trainer.model.save_pretrained(str(out_dir / ADAPTER))
        merged = trainer.model.merge_and_unload()
        out_dir.mkdir(parents=True, exist_ok=True)
        merged.save_pretrained(str(out_dir))
        tokenizer.save_pretrained(str(out_dir))
    shutil.rmtree(trl_dir, ignore_errors=True)
    return log


def internalize(sft_dir: str | Path, out_dir: str | Path, cfg: Stage2Config, rows: list[dict],
                eval_items: list[EvalItem], check_for: Callable[[str, str], AnswerCheck], *, work_dir: str | Path,
                needs_boxed: bool, seed: int = 0, log: Callable[[str], None] = print,
                placement: Placement = Placement(), tagged: bool = True) -> dict:
    """Stage 2: the phase schedule from the SFT model at ``sft_dir``, each phase chained from the previous
    phase's merged model. ``tagged=False`` is the Single + RL control: ``sft_dir`` is the base model, ``rows``
    and ``eval_items`` carry the Single prompt (chat messages), and only correctness is rewarded. Phases finished
    in ``work_dir`` (a killed run) are reused, not retrained. The final model (the last trained phase, or the
    held-out best with ``select="best"``) is copied to ``out_dir`` with ``phases/`` and ``phases.json``: per-step
    curves and held-out results after every phase. Each phase keeps its LoRA adapter; its merged weights only
    with ``cfg.keep_phase_models``.

    Args:
        sft_dir: The SFT model (for Single + RL, the base model).
        out_dir: Where the final model, ``phases/`` and ``phases.json`` go.
        cfg: The ``[internalize]`` section.
        rows: The GRPO dataset, ``{"prompt", "question", "gold"}`` per training question.
        eval_items: The held-out items evaluated at the start and after each phase.
        check_for: ``(question, gold) -> check`` (`training.rewards.gold_match` or `judge_benign`).
        work_dir: Where the phases are trained and kept across killed runs (``state.json``, ``phases/``).
        needs_boxed: Whether a turn needs a ``\\boxed{}`` answer (arithmetic).
        seed: The base seed (phase ``i`` trains with ``seed + i``).
        log: Progress lines.
        placement: Where and in which dtype models are loaded and trained.
        tagged: False for Single + RL.

    Returns:
        The summary written to ``phases.json``: the reference length, the start evaluation, the selected phase and
        every phase's log.

    Raises:
        ValueError: ``rows`` is empty.

    Example:
        >>> summary = internalize("runs/toy/sft/main", out, cfg, rows, items, check_for,  # doctest: +SKIP
        ...                       work_dir=work, needs_boxed=True)
        >>> summary["selected_phase"]  # doctest: +SKIP
        2
    """
    sft_dir, out_dir, work_dir = Path(sft_dir), Path(out_dir), Path(work_dir)
    if not rows:
        raise ValueError("stage 2 got no prompts; the experiment's training questions are empty")
    state_path = work_dir / "state.json"
    state = read_json(state_path) or {}
    if "ref_length" not in state:
        tokenizer = AutoTokenizer.from_pretrained(str(sft_dir))
        model = load_causal_lm(sft_dir, **placement.load()).eval()
        lengths = sample_lengths(model, tokenizer, [r["prompt"] for r in rows[: cfg.ref_samples]],
                                 max_new_tokens=cfg.generation_cap, batch_size=cfg.eval_batch_size, seed=seed)
        state = {"ref_length": int(quantile(lengths, cfg.ref_quantile)), "ref_quantile": cfg.ref_quantile,
                 "ref_mean_length": sum(lengths) / len(lengths),
                 "start_eval": evaluate_model(model, tokenizer, eval_items, max_new_tokens=cfg.eval_max_new_tokens,
                                              batch_size=cfg.eval_batch_size, needs_boxed=needs_boxed)}
        atomic_write_json(state_path, state)
    phases = resolve_phases(cfg.phase_specs(), state["ref_length"])
    name = "internalize" if tagged else "single-rl"
    log(f"[{name}] reference length p{round(100 * cfg.ref_quantile)} = {state['ref_length']} tokens; budgets "
        + " -> ".join(f"{p.budget}" + (f" (tag coeff {p.coeff:.2f})" if tagged else "") for p in phases))
    prev, logs = sft_dir, []
    for phase in phases:
        ph_dir = work_dir / "phases" / f"phase{phase.index}"
        done = read_json(ph_dir / "phase.json")
        if done is None:
            # a phase is trained, evaluated and logged aside, then renamed: a kill leaves only the aside dir
            aside = ph_dir.with_name(ph_dir.name + ".partial")
            if aside.exists():
                log(f"[{name}] phase {phase.index} was interrupted; training it again")
                shutil.rmtree(aside)
            ph_log = train_phase(prev, aside, phase, cfg, rows, check_for, needs_boxed=needs_boxed,
                                 seed=seed + phase.index, trl_dir=work_dir / "trl", placement=placement,
                                 tagged=tagged)
            if not ph_log["skipped"]:
                model = load_causal_lm(aside, **placement.load()).eval()
                ph_log["eval"] = evaluate_model(model, AutoTokenizer.from_pretrained(str(aside)), eval_items,
                                                max_new_tokens=cfg.eval_max_new_tokens,
                                                batch_size=cfg.eval_batch_size, needs_boxed=needs_boxed)
            atomic_write_json(aside / "phase.json", ph_log)
            shutil.rmtree(ph_dir, ignore_errors=True)
            aside.rename(ph_dir)
            done = ph_log
        else:
            log(f"[{name}] phase {phase.index} already trained, reusing {ph_dir}")
        logs.append(done)
        if done["skipped"]:
            log(f"[{name}] phase {phase.index} (budget {phase.budget}) skipped: every early sample was "
                "truncated and the rewards had no variance")
        else:
            ev = done["eval"]
            log(f"[{name}] phase {phase.index} budget {phase.budget}: accuracy {ev['accuracy']:.3f}, "
                f"mean tokens {ev['mean_tokens']:.1f}, well-formed {ev['well_formed']:.2f}")
            prev = ph_dir
    chosen = _select(logs, cfg.select)
    final_dir = sft_dir if chosen is None else work_dir / "phases" / f"phase{chosen}"
    out_dir.mkdir(parents=True, exist_ok=True)
    for f in final_dir.iterdir():
        if f.is_file() and f.name not in ("phase.json", "provenance.json", "stage.json", "metrics.json"):
            shutil.copy2(f, out_dir / f.name)
    if not cfg.keep_phase_models:
        for pattern in ("phase*/*.safetensors", "phase*/*.safetensors.index.json"):
            for f in (work_dir / "phases").glob(pattern):
                f.unlink()  # the final model was copied above; each phase's adapter stays
    shutil.move(str(work_dir / "phases"), str(out_dir / "phases"))
    summary = {"ref_length": state["ref_length"], "ref_quantile": state["ref_quantile"],
               "ref_mean_length": state["ref_mean_length"], "start_eval": state["start_eval"],
               "selected_phase": chosen, "select": cfg.select, "clipping": cfg.clipping, "phases": logs}
    atomic_write_json(out_dir / "phases.json", summary)
    return summary


def _select(logs: list[dict], how: str) -> int | None:
    """The phase whose model becomes IMAD: the last trained one, or the best held-out accuracy (ties: later)."""
    trained = [p for p in logs if not p["skipped"]]
    if not trained:
        return None
    if how == "last":
        return trained[-1]["index"]
    return max(trained, key=lambda p: (p["eval"]["accuracy"], p["index"]))["index"]
