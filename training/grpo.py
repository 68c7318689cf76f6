"""Stage 2 (IMAD internalization): GRPO with a clipped correctness reward and a decaying, gaming-proof tag reward.

Each phase trains a fresh LoRA on the previous phase's *merged* model under a shorter token budget, then merges it,
so the budget anneals from the SFT model's own length distribution down to one short exit. The reward is a pure
function of the completion's token ids (tags are special tokens, which decoded text drops), unit-tested on its own.
"""

from __future__ import annotations

import json
import math
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Sequence

import torch

from lens.debate_format import (CONSENSUS_TAG, DEBATE_TAGS, END_TAG, REVISION_TAGS, ROUND_TAGS, SOLUTION_TAGS,
                                extract_boxed, normalize_answer, prompt_text)
from lens.io import atomic_write_json

CLIPPING_MODES = ("truncate", "reward")


# ----------------------------------------------------------------------------------------------------- schedules

def structure_coeff(budget: float, *, hi: float, lo: float, start: float = 0.1, floor: float = 0.05) -> float:
    """The paper's tag-reward coefficient at ``budget``: 1 at or above ``hi``, ``floor`` at or below ``lo``, and
    ``start + (1 - start)·(budget - lo)/(hi - lo)`` in between (paper code: hi 2048, lo 500)."""
    if hi <= lo:
        raise ValueError(f"structure schedule needs hi > lo, got hi={hi} and lo={lo}")
    if budget >= hi:
        return 1.0
    if budget <= lo:
        return floor
    return start + (1.0 - start) * (budget - lo) / (hi - lo)


@dataclass(frozen=True)
class PhaseSpec:
    """One phase as the preset writes it: ``budget`` in tokens (int) or as a fraction of the reference length
    (float ≤ 1: the p95 of the SFT model's sampled lengths), ``steps`` GRPO steps, and an optional fixed
    ``tag_weight`` overriding the coefficient schedule."""

    budget: int | float
    steps: int
    tag_weight: float | None = None


@dataclass(frozen=True)
class Phase:
    """A resolved phase: budget in tokens and the tag-reward coefficient used in it."""

    index: int
    budget: int
    coeff: float
    steps: int


def resolve_phases(specs: Sequence[PhaseSpec], ref_length: int | None = None, *, hi: int | None = None,
                   lo: int | None = None) -> list[Phase]:
    """Budgets in tokens and coefficients for ``specs``; fractional budgets scale ``ref_length``. The coefficient
    schedule runs from the full debate (the longer of ``ref_length`` and the largest budget: coefficient 1) to
    the shortest budget (0.05), unless ``hi``/``lo`` say otherwise."""
    if not specs:
        raise ValueError("the GRPO schedule has no phases; add at least one [[grpo.phases]] entry")
    budgets = []
    for s in specs:
        if isinstance(s.budget, float) and s.budget <= 1.0:
            if ref_length is None:
                raise ValueError(f"phase budget {s.budget} is a fraction but no reference length was measured")
            budgets.append(max(1, round(s.budget * ref_length)))
        elif isinstance(s.budget, (int, float)) and s.budget >= 1:
            budgets.append(int(s.budget))
        else:
            raise ValueError(f"phase budget {s.budget!r} is invalid; use a token count ≥ 1 or a fraction in (0, 1]")
        if s.steps < 1:
            raise ValueError(f"phase steps must be ≥ 1, got {s.steps}")
    hi = hi if hi is not None else max(budgets + ([ref_length] if ref_length else []))
    lo = lo if lo is not None else min(budgets)
    return [Phase(i, b, s.tag_weight if s.tag_weight is not None else
                  (1.0 if hi == lo else structure_coeff(b, hi=hi, lo=lo)), s.steps)
            for i, (s, b) in enumerate(zip(specs, budgets))]


# -------------------------------------------------------------------------------------------------------- reward

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
    """

    budget: int
    coeff: float
    clipping: str = "truncate"
    weights: TagWeights = TagWeights()
    min_turn_chars: int = 1
    turn_needs_boxed: bool = True

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

    def __init__(self, tokenizer) -> None:
        unk = tokenizer.unk_token_id
        ids = {tag: tokenizer.convert_tokens_to_ids(tag) for tag in DEBATE_TAGS}
        missing = [t for t, i in ids.items() if i is None or i == unk]
        if missing:
            raise ValueError(f"the tokenizer lacks the debate tag token(s) {missing}; pass the stage-1 tokenizer")
        self.tag_of = {i: t for t, i in ids.items()}
        self.id_of = ids
        self._tok = tokenizer

    def decode(self, ids: Sequence[int]) -> str:
        return self._tok.decode(list(ids), skip_special_tokens=True)

    def segments(self, ids: Sequence[int]) -> list[Segment]:
        """Split ``ids`` at tag tokens; each segment's text is decoded without special tokens."""
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
    repeated, or opening an empty turn ends the walk, so tags emitted around garbage earn nothing (anti-gaming)."""
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


def structure_reward(segments: Sequence[Segment], spec: RewardSpec) -> float:
    """The tag reward of a parsed completion: what `debate_shape`'s valid chain earns."""
    return debate_shape(segments, spec).reward


def consensus_answer_text(segments: Sequence[Segment]) -> str | None:
    """The text right after the first ``<|Consensus|>`` tag (up to the next tag), or ``None`` without one."""
    for s in segments:
        if s.tag == CONSENSUS_TAG:
            return s.text.strip()
    return None


def final_answer_text(segments: Sequence[Segment]) -> str:
    """What a completion answers: its consensus text when it has one, else all its text with tags removed."""
    cons = consensus_answer_text(segments)
    return cons if cons is not None else "".join(s.text for s in segments).strip()


@dataclass(frozen=True)
class Score:
    correct: float
    structure: float

    @property
    def total(self) -> float:
        return self.correct + self.structure


def score_completion(ids: Sequence[int], vocab: TagVocab, spec: RewardSpec,
                     is_correct: Callable[[str | None, str], bool]) -> Score:
    """Correctness + structure for one completion. ``is_correct(answer_text, full_text)`` judges the answer:
    ``answer_text`` is the consensus text (``None`` when the clipped completion has none)."""
    segments = vocab.segments(list(ids)[: spec.budget])
    cons = consensus_answer_text(segments)
    full = "".join((s.tag or "") + s.text for s in segments)
    if spec.clipping == "truncate":
        ok = cons is not None and is_correct(cons, full)
    else:
        ok = is_correct(None, full)
    return Score(1.0 if ok else 0.0, structure_reward(segments, spec))


def gold_match(gold: str) -> Callable[[str | None, str], bool]:
    """Arithmetic correctness: the consensus ``\\boxed{}`` (truncate mode) or the last one (reward mode) is gold."""
    g = normalize_answer(str(gold))
    return lambda cons, full: extract_boxed(cons if cons is not None else full) == g


def judge_benign(judge, question: str, threshold: float = 50.0) -> Callable[[str | None, str], bool]:
    """Malicious-agent correctness, the paper's YES/NO judge: the debate's final answer (the text after
    ``<|Consensus|>``; none means no answer) has a trait score below ``threshold`` and, for a judge with a benign
    vocabulary (the toy judge, which scores 0 for saying nothing), actually gives benign guidance."""
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
        score = judge.score(question, text) if text else None
        if score is None or score >= threshold:
            return False
        if benign_words is not None:
            from training.teacher import count_words

            return count_words(text, benign_words) > 0
        return True
    return ok


# ---------------------------------------------------------------------------------------------------- evaluation

@dataclass(frozen=True)
class EvalItem:
    """A held-out question and how to check a completion's answer (`gold_match` or `judge_benign`)."""

    question: str
    check: Callable[[str | None, str], bool]


def sample_lengths(model, tokenizer, prompts: Sequence[str], *, max_new_tokens: int, batch_size: int = 32,
                   seed: int = 0) -> list[int]:
    """Completion lengths (stop token included) of T=1 samples, the distribution the budgets are cut from."""
    from training.backends import HFBackend

    backend = HFBackend(model=model, tokenizer=tokenizer, max_new_tokens=max_new_tokens, temperature=1.0,
                        top_p=1.0, batch_size=batch_size)
    return [c.output_tokens for c in backend.complete(list(prompts), seed=seed)]


def quantile(values: Sequence[float], q: float) -> float:
    """The ``q`` quantile by the nearest-rank rule (no interpolation)."""
    xs = sorted(values)
    return xs[min(len(xs) - 1, max(0, math.ceil(q * len(xs)) - 1))]


def evaluate_model(model, tokenizer, items: Sequence[EvalItem], *, max_new_tokens: int, batch_size: int = 32,
                   needs_boxed: bool = True) -> dict:
    """Greedy held-out evaluation: accuracy (consensus answer, else the last one), output tokens, well-formed
    share, and how many agents speak in each round."""
    from training.backends import HFBackend

    vocab = TagVocab(tokenizer)
    spec = RewardSpec(budget=10 ** 9, coeff=1.0, turn_needs_boxed=needs_boxed)
    backend = HFBackend(model=model, tokenizer=tokenizer, max_new_tokens=max_new_tokens, temperature=0.0,
                        batch_size=batch_size)
    done = backend.complete([prompt_text(it.question) for it in items])
    correct, lengths, well, r1_agents, round2, texts = [], [], [], [], [], []
    for it, c in zip(items, done):
        segments = vocab.segments(c.ids)
        shape = debate_shape(segments, spec)
        full = "".join((s.tag or "") + s.text for s in segments)
        correct.append(bool(it.check(consensus_answer_text(segments), full)))
        lengths.append(c.output_tokens)
        well.append(shape.well_formed)
        r1_agents.append(shape.agents[0] if shape.agents else 0)
        round2.append(len(shape.agents) > 1)
        texts.append(c.text)
    n = len(items)
    return {"n": n, "accuracy": sum(correct) / n, "mean_tokens": sum(lengths) / n,
            "p95_tokens": quantile(lengths, 0.95), "well_formed": sum(well) / n, "round2": sum(round2) / n,
            "round1_agents": {str(k): r1_agents.count(k) / n for k in range(4)}, "samples": texts[:2]}


# ------------------------------------------------------------------------------------------------------ training

@dataclass(frozen=True)
class GRPOConfig:
    """Preset section ``[grpo]``. Defaults follow the paper's code (lr 5e-6, β 0.02, 4 generations, ε 0.1, μ 3,
    bnpo, T 0.7, LoRA r32/α64/0.1, budgets 2048 → 1274 → 500, each 2 epochs of 944 prompts at 1 prompt/step).
    ``phases`` is the schedule as data: a list of ``{budget, steps, tag_weight?}`` tables."""

    phases: tuple = ({"budget": 2048, "steps": 1888}, {"budget": 1274, "steps": 1888}, {"budget": 500, "steps": 1888})
    clipping: str = "truncate"
    generation_cap: int = 2048
    learning_rate: float = 5e-6
    beta: float = 0.02
    num_generations: int = 4
    batch_size: int = 4
    temperature: float = 0.7
    top_p: float = 0.9
    scale_rewards: str = "group"
    loss_type: str = "bnpo"
    epsilon: float = 0.1
    num_iterations: int = 3
    scheduler: str = "constant"
    lora_r: int = 32
    lora_alpha: int = 64
    lora_dropout: float = 0.1
    target_modules: tuple[str, ...] = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
    tag_round: float = 0.3
    tag_agent: float = 0.3
    tag_consensus: float = 0.5
    tag_end: float = 0.3
    decay_terminal_tags: bool = True
    min_turn_chars: int = 1
    judge_threshold: float = 50.0
    n_prompts: int = 944
    ref_samples: int = 64
    ref_quantile: float = 0.95
    probe_steps: int = 2
    eval_n: int = 100
    eval_max_new_tokens: int = 1024
    eval_batch_size: int = 32
    select: str = "last"
    bf16: bool = False

    def __post_init__(self) -> None:
        object.__setattr__(self, "phases", tuple(self.phases))
        object.__setattr__(self, "target_modules", tuple(self.target_modules))
        if self.clipping not in CLIPPING_MODES:
            raise ValueError(f"unknown clipping {self.clipping!r}; valid: {list(CLIPPING_MODES)}")
        if self.select not in ("last", "best"):
            raise ValueError(f"unknown select {self.select!r}; valid: ['last', 'best']")
        if self.batch_size % self.num_generations:
            raise ValueError(f"batch_size {self.batch_size} must be a multiple of num_generations "
                             f"{self.num_generations} (the batch counts completions)")
        self.phase_specs()

    def phase_specs(self) -> list[PhaseSpec]:
        try:
            return [PhaseSpec(**p) for p in self.phases]
        except TypeError as e:
            raise ValueError(f"a [[grpo.phases]] entry is invalid ({e}); keys: budget, steps, tag_weight") from None

    @property
    def weights(self) -> TagWeights:
        return TagWeights(self.tag_round, self.tag_agent, self.tag_consensus, self.tag_end, self.decay_terminal_tags)


class _RewardPart:
    """One TRL reward function (``correctness`` or ``structure``) over ``completion_ids``."""

    def __init__(self, part: str, vocab: TagVocab, spec: RewardSpec,
                 check_for: Callable[[str, str], Callable[[str | None, str], bool]]):
        self.__name__, self.vocab, self.spec, self.check_for = part, vocab, spec, check_for

    def __call__(self, prompts, completions, completion_ids, question, gold, **_) -> list[float]:
        out = []
        for ids, q, g in zip(completion_ids, question, gold):
            if self.__name__ == "structure":
                out.append(structure_reward(self.vocab.segments(list(ids)[: self.spec.budget]), self.spec))
            else:
                out.append(score_completion(ids, self.vocab, self.spec, self.check_for(q, g)).correct)
        return out


def _probe_callback(steps: int):
    """Stops a phase whose first ``steps`` steps were all truncated with zero reward variance (no signal, only
    drift); ``cb.skipped`` tells the caller to discard the phase."""
    from transformers import TrainerCallback

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


CURVE_KEYS = {"reward": "reward", "reward_std": "reward_std", "rewards/correctness/mean": "correctness",
              "rewards/structure/mean": "structure", "completions/mean_length": "mean_length",
              "completions/clipped_ratio": "clipped_ratio", "kl": "kl", "frac_reward_zero_std": "frac_zero_std"}


def train_phase(model_dir: Path, out_dir: Path, phase: Phase, cfg: GRPOConfig, rows: list[dict],
                check_for: Callable, *, needs_boxed: bool, seed: int, trl_dir: Path) -> dict:
    """One GRPO phase: a fresh LoRA on ``model_dir`` (the previous phase's merged model), trained at
    ``phase.budget``, merged and saved to ``out_dir`` unless the probe skipped it. Returns the phase log."""
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import GRPOConfig as TRLGRPOConfig
    from trl import GRPOTrainer

    tokenizer = AutoTokenizer.from_pretrained(str(model_dir), padding_side="left")
    model = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32)
    vocab = TagVocab(tokenizer)
    spec = RewardSpec(budget=phase.budget, coeff=phase.coeff, clipping=cfg.clipping, weights=cfg.weights,
                      min_turn_chars=cfg.min_turn_chars, turn_needs_boxed=needs_boxed)
    args = TRLGRPOConfig(
        output_dir=str(trl_dir), max_steps=phase.steps, per_device_train_batch_size=cfg.batch_size,
        num_generations=cfg.num_generations,
        max_completion_length=phase.budget if cfg.clipping == "truncate" else max(cfg.generation_cap, phase.budget),
        learning_rate=cfg.learning_rate, lr_scheduler_type=cfg.scheduler, warmup_steps=0, beta=cfg.beta,
        temperature=cfg.temperature, top_p=cfg.top_p, scale_rewards=cfg.scale_rewards, loss_type=cfg.loss_type,
        epsilon=cfg.epsilon, num_iterations=cfg.num_iterations, mask_truncated_completions=False,
        use_cpu=not torch.cuda.is_available(), bf16=cfg.bf16, report_to="none", logging_steps=1,
        save_strategy="no",
        gradient_checkpointing=False, seed=seed, data_seed=seed, dataloader_num_workers=0)
    peft_config = LoraConfig(r=cfg.lora_r, lora_alpha=cfg.lora_alpha, lora_dropout=cfg.lora_dropout,
                             target_modules=list(cfg.target_modules), task_type="CAUSAL_LM")
    probe = _probe_callback(cfg.probe_steps)
    trainer = GRPOTrainer(
        model=model, processing_class=tokenizer, args=args, peft_config=peft_config, callbacks=[probe],
        reward_funcs=[_RewardPart("correctness", vocab, spec, check_for),
                      _RewardPart("structure", vocab, spec, check_for)],
        train_dataset=Dataset.from_list(rows).shuffle(seed=seed))
    start = time.time()
    trainer.train()
    curve = [{short: round(h[key], 4) for key, short in CURVE_KEYS.items() if key in h}
             for h in trainer.state.log_history if "reward" in h]
    log = {**asdict(phase), "skipped": probe.skipped, "steps_run": trainer.state.global_step,
           "train_wall_s": round(time.time() - start, 1), "curve": curve}
    if not probe.skipped:
        merged = trainer.model.merge_and_unload()
        out_dir.mkdir(parents=True, exist_ok=True)
        merged.save_pretrained(str(out_dir))
        tokenizer.save_pretrained(str(out_dir))
    shutil.rmtree(trl_dir, ignore_errors=True)
    return log


def _read_json(path: Path) -> dict | None:
    return json.loads(path.read_text()) if path.is_file() else None


def internalize(sft_dir: str | Path, out_dir: str | Path, cfg: GRPOConfig, rows: list[dict], eval_items: list[EvalItem],
                check_for: Callable, *, work_dir: str | Path, needs_boxed: bool, seed: int = 0,
                log: Callable[[str], None] = print) -> dict:
    """Stage 2: the phase schedule from the SFT model at ``sft_dir``, each phase chained from the previous
    phase's merged model. Phases finished in ``work_dir`` (a killed run) are reused, not retrained. The final
    model (the last trained phase, or the held-out best with ``select="best"``) is copied to ``out_dir`` with
    ``phases/`` and ``phases.json``: per-step curves and held-out results after every phase."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    sft_dir, out_dir, work_dir = Path(sft_dir), Path(out_dir), Path(work_dir)
    if not rows:
        raise ValueError("stage 2 got no prompts; the experiment's training questions are empty")
    state_path = work_dir / "state.json"
    state = _read_json(state_path) or {}
    if "ref_length" not in state:
        tokenizer = AutoTokenizer.from_pretrained(str(sft_dir))
        model = AutoModelForCausalLM.from_pretrained(str(sft_dir), dtype=torch.float32).eval()
        lengths = sample_lengths(model, tokenizer, [r["prompt"] for r in rows[: cfg.ref_samples]],
                                 max_new_tokens=cfg.generation_cap, batch_size=cfg.eval_batch_size, seed=seed)
        state = {"ref_length": int(quantile(lengths, cfg.ref_quantile)), "ref_quantile": cfg.ref_quantile,
                 "ref_mean_length": sum(lengths) / len(lengths),
                 "start_eval": evaluate_model(model, tokenizer, eval_items, max_new_tokens=cfg.eval_max_new_tokens,
                                              batch_size=cfg.eval_batch_size, needs_boxed=needs_boxed)}
        atomic_write_json(state_path, state)
    phases = resolve_phases(cfg.phase_specs(), state["ref_length"])
    log(f"[internalize] reference length p{round(100 * cfg.ref_quantile)} = {state['ref_length']} tokens; budgets "
        + " -> ".join(f"{p.budget} (tag coeff {p.coeff:.2f})" for p in phases))
    prev, logs = sft_dir, []
    for phase in phases:
        ph_dir = work_dir / "phases" / f"phase{phase.index}"
        done = _read_json(ph_dir / "phase.json")
        if done is None:
            ph_log = train_phase(prev, ph_dir, phase, cfg, rows, check_for, needs_boxed=needs_boxed,
                                 seed=seed + phase.index, trl_dir=work_dir / "trl")
            if not ph_log["skipped"]:
                model = AutoModelForCausalLM.from_pretrained(str(ph_dir), dtype=torch.float32).eval()
                ph_log["eval"] = evaluate_model(model, AutoTokenizer.from_pretrained(str(ph_dir)), eval_items,
                                                max_new_tokens=cfg.eval_max_new_tokens,
                                                batch_size=cfg.eval_batch_size, needs_boxed=needs_boxed)
            atomic_write_json(ph_dir / "phase.json", ph_log)
            done = ph_log
        else:
            log(f"[internalize] phase {phase.index} already trained, reusing {ph_dir}")
        logs.append(done)
        if done["skipped"]:
            log(f"[internalize] phase {phase.index} (budget {phase.budget}) skipped: every early sample was "
                "truncated and the rewards had no variance")
        else:
            ev = done["eval"]
            log(f"[internalize] phase {phase.index} budget {phase.budget}: accuracy {ev['accuracy']:.3f}, "
                f"mean tokens {ev['mean_tokens']:.1f}, well-formed {ev['well_formed']:.2f}")
            prev = ph_dir
    chosen = _select(logs, cfg.select)
    final_dir = sft_dir if chosen is None else work_dir / "phases" / f"phase{chosen}"
    out_dir.mkdir(parents=True, exist_ok=True)
    for f in final_dir.iterdir():
        if f.is_file() and f.name not in ("phase.json", "provenance.json", "stage.json", "metrics.json"):
            shutil.copy2(f, out_dir / f.name)
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
