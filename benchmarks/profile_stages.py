"""Where the time goes in each stage of a run: the real data builders and trainers of a preset (smoke by default,
experiment ``main`` only), timed from inside the libraries that do the work.

Per stage: wall time; training forward (``compute_loss``), backward (``Tensor.backward``) and generation
(``generate`` of HF models, ``lens.generate``) seconds, and the rest (optimizer, scoring, data, saving); tokens
the training forwards processed, the share of them that is padding, and the share of the real ones that carry
loss, exactly as the trainers' collators hand them over; generated positions and the share of them wasted
(left padding and rows that already stopped). Then the toy base's data by kind of example, counted from the
same builders the base trainer uses: ``--base-data-only --preset toy`` counts the toy study's base data without
training anything.

usage: .venv/bin/python benchmarks/profile_stages.py [--preset smoke] [--set section.key=value ...]
       [--experiments] [--base-data-only]
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from training.threads import configure  # noqa: E402

POLICY = configure()  # as the CLI does, before torch is imported

import argparse  # noqa: E402
import contextlib  # noqa: E402
import os  # noqa: E402
import random  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from collections import Counter, defaultdict  # noqa: E402
from dataclasses import dataclass, field  # noqa: E402

import torch  # noqa: E402
import transformers  # noqa: E402
import trl  # noqa: E402

import lens  # noqa: E402


@dataclass
class StageCost:
    """What one stage spent: seconds by kind and token counts."""

    wall: float = 0.0
    seconds: Counter = field(default_factory=Counter)   # forward, backward, generation
    steps: int = 0
    tokens: Counter = field(default_factory=Counter)    # train_positions, train_real, train_loss, gen_*
    threads: int = 0


class Profiler:
    """Wraps the methods that do the work, attributing their time and tokens to the current stage."""

    def __init__(self) -> None:
        self.stages: dict[str, StageCost] = {}
        self.current: StageCost | None = None
        self._depth: Counter = Counter()

    @contextlib.contextmanager
    def stage(self, name: str):
        self.current = self.stages.setdefault(name, StageCost())
        self.current.threads = torch.get_num_threads()
        start = time.perf_counter()
        try:
            yield
        finally:
            self.current.wall += time.perf_counter() - start
            self.current = None

    def _timed(self, kind: str, fn, count=None):
        """``fn`` wrapped: its outermost call adds its seconds to ``kind`` and ``count(args, kwargs, result)``."""
        prof = self

        def wrapper(*args, **kwargs):
            if prof._depth[kind] or prof.current is None:
                return fn(*args, **kwargs)
            prof._depth[kind] += 1
            start = time.perf_counter()
            try:
                result = fn(*args, **kwargs)
            finally:
                prof._depth[kind] -= 1
            prof.current.seconds[kind] += time.perf_counter() - start
            if count is not None:
                count(prof.current, args, kwargs, result)
            return result

        return wrapper

    @contextlib.contextmanager
    def installed(self):
        """Patch the trainers' ``compute_loss``/``training_step``, ``Tensor.backward``, HF ``generate`` and
        ``lens.generate`` for the duration of the block."""
        targets = [(cls, "compute_loss", "forward", _count_train)
                   for cls in (transformers.Trainer, trl.SFTTrainer, trl.GRPOTrainer)]
        targets += [(cls, "training_step", "step", _count_step)
                    for cls in (transformers.Trainer, trl.SFTTrainer, trl.GRPOTrainer)]
        targets += [(torch.Tensor, "backward", "backward", None),
                    (transformers.GenerationMixin, "generate", "generation", _count_hf_generation),
                    (lens, "generate", "generation", None)]
        saved = [(obj, name, obj.__dict__[name]) for obj, name, _, _ in targets]
        for obj, name, kind, count in targets:
            setattr(obj, name, self._timed(kind, obj.__dict__[name], count))
        try:
            yield self
        finally:
            for obj, name, original in saved:
                setattr(obj, name, original)


def _count_step(cost: StageCost, args, kwargs, result) -> None:
    cost.steps += 1


def _count_train(cost: StageCost, args, kwargs, result) -> None:
    inputs = args[2] if len(args) > 2 else kwargs["inputs"]
    if "completion_mask" in inputs and "prompt_mask" in inputs:  # GRPO: prompt + completion, loss on completion
        positions = inputs["prompt_ids"].numel() + inputs["completion_ids"].numel()
        real = int(inputs["prompt_mask"].sum() + inputs["completion_mask"].sum())
        loss = int(inputs["completion_mask"].sum())
    else:
        ids = inputs["input_ids"]
        positions = ids.numel()
        mask = inputs.get("attention_mask")
        real = int(mask.sum()) if mask is not None else positions
        labels = inputs.get("labels")
        loss = int((labels != -100).sum()) if labels is not None else real
    cost.tokens.update(train_positions=positions, train_real=real, train_loss=loss)


def _count_hf_generation(cost: StageCost, args, kwargs, result) -> None:
    ids = kwargs.get("input_ids", args[1] if len(args) > 1 else None)
    if ids is None:
        return
    model = args[0]
    seqs = getattr(result, "sequences", result)
    mask = kwargs.get("attention_mask")
    config = kwargs.get("generation_config") or model.generation_config
    stop = kwargs.get("eos_token_id", config.eos_token_id)
    stop = set(stop if isinstance(stop, (list, tuple)) else [stop]) - {None}
    new = seqs[:, ids.shape[1]:]
    useful = 0
    for row in new.tolist():
        ends = [i for i, t in enumerate(row) if t in stop]
        useful += ends[0] + 1 if ends else len(row)
    cost.tokens.update(gen_rows=len(new), gen_positions=seqs.numel(), gen_new=useful,
                       gen_useful=(int(mask.sum()) if mask is not None else ids.numel()) + useful)


def _share(a: float, b: float) -> str:
    return f"{a / b:.0%}" if b else "-"


def print_table(stages: dict[str, StageCost]) -> None:
    print(f"\nthreads: torch {torch.get_num_threads()}, OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY')}, "
          f"generation threads {POLICY.generation}; load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")
    head = ("stage", "wall s", "steps", "fwd s", "bwd s", "gen s", "other s", "train tok", "pad", "loss/real",
            "gen rows", "gen pos", "gen wasted")
    print(" | ".join(head))
    print(" | ".join("---" for _ in head))
    for name, c in stages.items():
        s, t = c.seconds, c.tokens
        other = c.wall - s["forward"] - s["backward"] - s["generation"]
        print(" | ".join([name, f"{c.wall:.1f}", str(c.steps), f"{s['forward']:.1f}", f"{s['backward']:.1f}",
                          f"{s['generation']:.1f}", f"{other:.1f}", str(t["train_positions"]),
                          _share(t["train_positions"] - t["train_real"], t["train_positions"]),
                          _share(t["train_loss"], t["train_real"]), str(t["gen_rows"]), str(t["gen_positions"]),
                          _share(t["gen_positions"] - t["gen_useful"], t["gen_positions"])]))


def base_data(preset, tok=None) -> None:
    """The base trainer's phase-0 rows by kind of example: tokens, loss-free prompt share, padding share of the
    batches its length grouping forms (as `training.toy_base.train_base` builds them)."""
    from training import toy_base
    from training.teacher import Teacher
    from training.tokenizer import train_tokenizer

    task, teacher_cfg, tok_cfg, cfg = toy_base.sections(preset)
    teacher = Teacher(teacher_cfg)
    start = time.perf_counter()
    if tok is None:  # the tokenizer as train_base trains it
        corpus = toy_base.teacher_examples(task, teacher, cfg, preset.seed + 1,
                                           scale=tok_cfg.corpus_examples / max(1, cfg.n_round1 + cfg.n_trait))
        texts = [m["content"] for e in corpus for m in e.messages] + ["system user assistant Problem:"] * 100
        tok = train_tokenizer(texts, vocab_size=tok_cfg.vocab_size)
    phases = [cfg.lr, *cfg.restart_lrs]
    print(f"\nbase data of preset {preset.name!r} ({len(phases)} phases; counted without training):")
    print("phase | kind | rows | tokens | loss-free (prompt) | mean tokens/row")
    print("--- | --- | --- | --- | --- | ---")
    total_tok = total_loss = total_pos = 0
    for i in range(len(phases)):
        seed, mix = preset.seed + 100 * i, cfg.for_phase(i)
        examples = toy_base.teacher_examples(task, teacher, mix, seed)
        rows = toy_base.tokenize_examples(tok, examples)
        by_kind = defaultdict(list)
        for e, r in zip(examples, rows):
            by_kind[e.kind].append(r)
        by_kind["packed text"] = toy_base.pretraining_rows(tok, task, mix.n_pretrain, cfg.n_ctx, seed, mix.n_drills)
        for kind, rs in by_kind.items():
            n = sum(len(r["input_ids"]) for r in rs)
            free = sum(x == -100 for r in rs for x in r["labels"])
            total_tok, total_loss = total_tok + n, total_loss + n - free
            print(f"{i} | {kind} | {len(rs)} | {n} | {_share(free, n)} | {n / max(1, len(rs)):.0f}")
        grouped = toy_base._length_grouped([r for rs in by_kind.values() for r in rs], cfg.batch_size,
                                           random.Random(seed))
        for j in range(0, len(grouped), cfg.batch_size):
            batch = grouped[j:j + cfg.batch_size]
            total_pos += len(batch) * max(len(r["input_ids"]) for r in batch)
    print(f"all phases: {total_tok} tokens, {_share(total_tok - total_loss, total_tok)} without loss, padding "
          f"{_share(total_pos - total_tok, total_pos)} of {total_pos} positions at batch {cfg.batch_size} "
          f"({time.perf_counter() - start:.0f} s to build)")


def main(argv: list[str] | None = None) -> dict[str, StageCost]:
    """Run the stages of ``--preset`` (experiment ``main`` only) in a scratch run dir and print the profile.

    Example:
        >>> costs = main(["--preset", "smoke"])   # about 2 minutes on 2 idle cores
    """
    from analyses.models import resolve_model
    from training.pipeline import Run
    from training.presets import load_preset

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--preset", default="smoke")
    p.add_argument("--set", action="append", default=[], dest="overrides")
    p.add_argument("--experiments", action="store_true", help="also run the agent-subspace experiment")
    p.add_argument("--base-data-only", action="store_true", help="only count the base model's data")
    args = p.parse_args(argv)
    preset = resolve_model(load_preset(args.preset, ['experiments.names=["main"]', *args.overrides]))
    if args.base_data_only:
        base_data(preset)
        return {}
    prof = Profiler()
    with tempfile.TemporaryDirectory(prefix="profile-") as tmp, prof.installed():
        run = Run(preset, Path(tmp), log=lambda m: None)
        steps = [("toy base (phases + eval)", run.base_dir), ("debates (teacher)", lambda: run.debates("main")),
                 ("SFT (+ diagnostics)", lambda: run.sft("main")), ("DebateGPT SFT", run.debategpt),
                 ("stage 2 GRPO (+ evals)", lambda: run.internalize("main")), ("Table 1 eval", run.evaluate)]
        if args.experiments:
            from analyses.reproduce import run_experiment

            steps.append(("agent subspaces", lambda: run_experiment("agent_subspaces", preset, Path(tmp),
                                                                    lambda m: None)))
        for name, fn in steps:
            with prof.stage(name):
                fn()
            print(f"[profile] {name}: {prof.stages[name].wall:.1f} s", flush=True)
        print_table(prof.stages)
        from transformers import AutoTokenizer

        base_data(preset, AutoTokenizer.from_pretrained(str(run.base_dir())))
    return prof.stages


if __name__ == "__main__":
    main()
