"""The training pipeline behind ``latent-agents debate|sft|internalize|evaluate``: cached, resumable stages.

The run directory's layout is `training.layout.RunLayout`'s. Each stage runs only when its dir has no manifest,
and asks for the stages it needs first, so any command runs whatever is missing before it.
"""

from __future__ import annotations

import dataclasses
import json
import random
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from transformers import AutoTokenizer

from lens.debate_format import prompt_text, write_jsonl
from lens.io import atomic_write_json
from training.backends import TeacherBackend
from training.benchmarks_data import load_benchmark
from training.debate_files import read_debate_file
from training.debate_sources import model_backend, run_resumable
from training.evaluate import EvalConfig, EvalItem, MethodSpec, evaluate_methods, evaluate_model
from training.internalize import Stage2Config, internalize
from training.layout import STAGES, RunLayout
from training.llm_judge import JudgeConfig, reward_judge
from training.modelio import Placement, load_causal_lm
from training.presets import Preset, PresetError
from training.prompts import ARITHMETIC, round1_messages
from training.errors import UserError
from training.ranks import failed_marker, is_main, main_stage, wait_for, with_peak_memory, world_size
from training.rewards import gold_match, judge_benign
from training.runner import (DebateConfig, DebateRecord, debate_accuracy, load_debates, run_debates, save_debates,
                             training_transcripts)
from training.schema import NON_EMPTY
from training.sft import (ANSWER_ROWS_VERSION, MIXED_FROM, Stage1Config, answer_rows, debate_rows, exit_probability,
                          mix_debates, mix_short, train_lora_sft, write_provenance)
from training.stages import MANIFEST, RESUME, read_json, run_stage, status_now
from training.table1_benchmarks import benchmark_pool, check_pool, evaluate_benchmarks, save_benchmarks
from training.tasks import (TRANSFER_SHAPE, FileQuestion, TaskConfig, TraitQuestion, arithmetic_split, gold_answer,
                            read_question_file, trait_split, transfer_split)
from training.teacher import TURNS_VERSION, Teacher, TeacherConfig
from training.toy_base import base_keys, build_base

SINGLE_RL = "Single + RL"  # Table 1's control row: GRPO from the base under the Single prompt, no debate
TABLE1_METHODS = ("Single", "Debate", "DebateGPT", "SFT", SINGLE_RL, "IMAD")
OVERRIDABLE = ("debate", "internalize", "sft")


@dataclass(frozen=True)
class ExperimentsConfig:
    """Preset section ``[experiments]``: which debate experiments to train (``main`` is arithmetic with the
    persona agents, used for Table 1 and the agent subspaces; ``evil`` / ``hallucination`` put a malicious agent
    2 in advice debates), and per-experiment overrides of ``[debate]`` (who writes the debates), ``[sft]`` and
    ``[internalize]`` keys."""

    names: tuple[str, ...] = field(default=("main", "evil", "hallucination"), metadata=NON_EMPTY)
    table1: str = "main"
    overrides: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        object.__setattr__(self, "names", tuple(self.names))
        if self.table1 not in self.names:
            raise ValueError(f"table1 experiment {self.table1!r} is not among names {list(self.names)}")
        for exp, sections in self.overrides.items():
            if exp not in self.names:
                raise ValueError(f"overrides name experiment {exp!r}, which is not among names {list(self.names)}")
            bad = sorted(set(sections) - set(OVERRIDABLE))
            if bad:
                raise ValueError(f"overrides for {exp!r} name section(s) {bad}; valid: {list(OVERRIDABLE)}")


def experiment_section(preset: Preset, key: str, cls, experiment: str):
    """Section ``key`` as ``cls`` with ``[experiments.overrides.<experiment>.<key>]`` applied on top.

    Args:
        preset: The preset.
        key: The section (``debate``, ``sft`` or ``internalize``).
        cls: The section's dataclass.
        experiment: The debate experiment whose overrides apply.

    Returns:
        The section as ``cls``, every value checked.

    Raises:
        PresetError: a bad key or value in the section or its overrides.

    Example:
        >>> from training.pipeline import experiment_section
        >>> from training.presets import load_preset
        >>> from training.sft import Stage1Config
        >>> experiment_section(load_preset("smoke"), "sft", Stage1Config, "evil").arithmetic_mix
        0.5
    """
    exps = preset.section("experiments", ExperimentsConfig)
    merged = {**preset.data.get(key, {}), **exps.overrides.get(experiment, {}).get(key, {})}
    return Preset(preset.name, preset.path, {**preset.data, key: merged}).section(key, cls)


@dataclass
class Run:
    """One preset's run: where it lives, and the preset sections every stage reads."""

    preset: Preset
    dir: Path
    log: Callable[[str], None] = print

    def __post_init__(self) -> None:
        self.dir = Path(self.dir)
        self.layout = RunLayout.of(self.preset, self.dir)
        self.experiments = self.preset.section("experiments", ExperimentsConfig)
        self.placement = Placement.of(self.preset)
        self._done: dict[str, Path] = {}
        self._files: dict[str, list[DebateRecord]] = {}

    def _once(self, key: str, stage: Callable[[], Path]) -> Path:
        """Run (or look up) a stage once per `Run`, so dependencies are not re-checked and re-logged."""
        if key not in self._done:
            self._done[key] = stage()
        return self._done[key]

    def stage(self, name: str) -> None:
        """Run stage ``name`` (debate | sft | internalize | single-rl | evaluate) for every experiment of the preset
        (``single-rl``: Table 1's), after whatever it depends on; finished stages are skipped, and a stage this
        `Run` already ran or found finished is neither re-checked nor logged again.

        Args:
            name: The stage, one of `training.layout.STAGES`.

        Returns:
            None.

        Raises:
            ValueError: an unknown stage name.

        Example:
            >>> run = Run(load_preset("smoke"), "runs/smoke")  # doctest: +SKIP
            >>> for name in STAGES:  # doctest: +SKIP
            ...     run.stage(name)
        """
        if name not in STAGES:
            raise ValueError(f"unknown pipeline stage {name!r}; valid: {list(STAGES)}")
        for exp in self.experiments.names:
            if name == "debate":
                self.debates(exp)
            elif name == "sft":
                self.sft(exp)
            elif name == "internalize":
                self.internalize(exp)
        if name in ("sft", "internalize", "evaluate"):
            self.debategpt()
        if name in ("single-rl", "evaluate"):
            self.single_rl()
        if name == "evaluate":
            self.evaluate()

    # ------------------------------------------------------------------------------------------------ inputs
    def base_dir(self) -> Path:
        """The base model: ``[model] path`` when the preset names one (real models), else the toy base.

        Returns:
            The base model dir (the toy base is built first when missing).

        Raises:
            PresetError: ``[model] path`` is an unresolved ``hf://`` id or not a local dir.
            UserError: several processes were launched before the toy base was built.

        Example:
            >>> Run(load_preset("smoke"), "runs/smoke").base_dir()  # doctest: +SKIP
            PosixPath('runs/smoke/base')
        """
        return self._once("base", self._base_dir)

    def _base_dir(self) -> Path:
        local = self.preset.data.get("model", {}).get("path")
        if not local:
            if world_size() > 1 and not (self.layout.toy_base / MANIFEST).is_file():
                # its Trainer would start a collective the waiting ranks never join
                raise UserError(f"the toy base model is built by one process: run `latent-agents toy base --preset "
                                f"{self.preset.path} --run-dir {self.dir}` first, then launch this command again")
            if is_main():
                return Path(build_base(self.preset, self.dir, log=self.log))
            wait_for(self.layout.toy_base / MANIFEST, what="base", failed=failed_marker(self.dir), log=self.log)
            return self.layout.toy_base
        if str(local).startswith("hf://"):
            raise PresetError(f"preset {self.preset.name!r}: [model] path {local!r} names a Hub repo; resolve "
                              "it to its local cache snapshot first (analyses.models.resolve_model; the CLI does)")
        if not self.layout.base.is_dir():
            raise PresetError(f"preset {self.preset.name!r}: [model] path {str(self.layout.base)!r} is not a local "
                              "model dir; download the model there first")
        return self.layout.base

    def input_path(self, value: str) -> Path:
        """A path a preset names (a data file, a model dir): relative ones are read from the preset file's dir.

        Args:
            value: The path as the preset writes it (``~`` is expanded).

        Returns:
            The path as is when absolute, else under the preset file's dir.

        Example:
            >>> run = Run(load_preset("paper-standin"), "runs/paper-standin")  # doctest: +SKIP
            >>> run.input_path("data/evil_test.json")  # doctest: +SKIP
            PosixPath('/home/me/latent-agents/configs/data/evil_test.json')
        """
        path = Path(value).expanduser()
        return path if path.is_absolute() else self.preset.path.parent / path

    def debate_config(self, experiment: str) -> DebateConfig:
        """``[debate]`` with ``[experiments.overrides.<experiment>.debate]`` on top (who writes its debates).

        Args:
            experiment: The debate experiment.

        Returns:
            The `DebateConfig`.

        Example:
            >>> Run(load_preset("paper-standin"), "runs/paper-standin").debate_config("main").source  # doctest: +SKIP
            'file'
        """
        return experiment_section(self.preset, "debate", DebateConfig, experiment)

    def setup(self, experiment: str):
        """The setup of ``experiment``'s debates: personas, malicious slot, domain, number of debates.

        Args:
            experiment: The debate experiment.

        Returns:
            Its `DebateSetup`.

        Raises:
            ValueError: an unknown experiment.

        Example:
            >>> Run(load_preset("smoke"), "runs/smoke").setup("evil").malicious  # doctest: +SKIP
            {2: 'evil'}
        """
        return self.debate_config(experiment).experiment(experiment)

    def file_debates(self, experiment: str) -> list[DebateRecord]:
        """The debates of a ``source = "file"`` experiment, read once.

        Args:
            experiment: An experiment whose ``[debate] source`` is ``file``.

        Returns:
            The file's debates as `DebateRecord`s, in file order.

        Example:
            >>> len(Run(load_preset("paper-standin"), "runs/paper-standin").file_debates("main"))  # doctest: +SKIP
            12
        """
        if experiment not in self._files:
            self._files[experiment] = read_debate_file(self.input_path(self.debate_config(experiment).path))
        return self._files[experiment]

    def questions(self, experiment: str, split: str) -> list:
        """The experiment's questions of ``split``: for training, a debate file's questions (without its SFT-only
        tasks) when the debates come from a file; trait questions from ``[task] trait_questions`` files when
        given; else arithmetic problems or the toy's trait questions.

        Args:
            experiment: The debate experiment.
            split: ``train`` or ``test``.

        Returns:
            `ArithmeticProblem`, `TraitQuestion` or (a debate file's training questions) `FileQuestion` objects.

        Example:
            >>> Run(load_preset("smoke"), "runs/smoke").questions("main", "test")[0].question  # doctest: +SKIP
            '2+3*2+5-4*9'
        """
        task = self.preset.section("task", TaskConfig)
        cfg = self.debate_config(experiment)
        if split == "train" and cfg.source == "file":
            setup = cfg.experiment(experiment)
            return [FileQuestion(r.transcript.question, r.transcript.gold, r.transcript.meta.get("task"))
                    for r in self.file_debates(experiment)[: setup.n_debates]
                    if not r.transcript.meta.get("sft_only")]
        if self.setup(experiment).domain == ARITHMETIC:
            return arithmetic_split(task, split, self.preset.seed)
        source = task.trait_questions.get(experiment, {}).get(split)
        if source:
            n = task.n_trait_train if split == "train" else task.n_trait_test
            return [TraitQuestion(q, experiment, "file") for q in read_question_file(self.input_path(source))[:n]]
        return trait_split(task, experiment, split, self.preset.seed)

    def capability_questions(self, n: int, seed: int) -> list:
        """Questions for capability under steering: ``n`` drawn with ``seed`` from GSM8K when ``[eval] benchmarks``
        names it (the paper), else the first ``n`` held-out arithmetic problems (the toy).

        Args:
            n: How many questions.
            seed: The seed of the GSM8K draw (the toy's problems do not depend on it).

        Returns:
            `training.benchmarks_data.BenchmarkQuestion` or `ArithmeticProblem` objects.

        Example:
            >>> [q.answer for q in Run(load_preset("smoke"), "runs/smoke").capability_questions(2, 0)]  # doctest: +SKIP
            ['-23', '26']
        """
        cfg = self.preset.section("eval", EvalConfig)
        if "gsm8k" in cfg.benchmarks:
            source = cfg.benchmarks["gsm8k"]
            pool = load_benchmark("gsm8k", data_file=self.input_path(source) if source else None)
            return random.Random(seed).sample(pool, min(n, len(pool)))
        return arithmetic_split(self.preset.section("task", TaskConfig), "test", self.preset.seed)[:n]

    def needs_boxed(self, experiment: str) -> bool:
        """Whether ``experiment`` is arithmetic: its answers are boxed and matched, not judged.

        Args:
            experiment: The debate experiment.

        Returns:
            True for an arithmetic experiment.

        Example:
            >>> Run(load_preset("smoke"), "runs/smoke").needs_boxed("evil")  # doctest: +SKIP
            False
        """
        return self.setup(experiment).domain == ARITHMETIC

    def check_for(self, experiment: str, threshold: float = 50.0) -> Callable:
        """``(question, gold) -> check``: the gold answer for arithmetic, the ``[judge]`` verdict for a trait.

        Args:
            experiment: The debate experiment.
            threshold: The trait score below which a judged answer is benign.

        Returns:
            A function ``(question, gold) -> AnswerCheck`` (`training.rewards.gold_match` or `judge_benign`).

        Example:
            >>> check_for = Run(load_preset("smoke"), "runs/smoke").check_for("main")  # doctest: +SKIP
            >>> check = check_for("2+3*2+5-4*9", "-23")  # doctest: +SKIP
            >>> check("\\\\boxed{-23}", "")  # doctest: +SKIP
            True
        """
        if self.needs_boxed(experiment):
            return lambda question, gold: gold_match(gold)
        judge = reward_judge(experiment, self.preset.section("judge", JudgeConfig))
        return lambda question, gold: judge_benign(judge, question, threshold)

    def eval_items(self, experiment: str, n: int, threshold: float = 50.0) -> list:
        """The first ``n`` test questions of ``experiment`` as `EvalItem`s, each with its answer check.

        Args:
            experiment: The debate experiment.
            n: How many questions.
            threshold: The trait score below which a judged answer is benign.

        Returns:
            The `EvalItem`s (prompt ``None``: ``Problem: q``, continued).

        Example:
            >>> [it.question for it in Run(load_preset("smoke"), "runs/smoke").eval_items("main", 2)]  # doctest: +SKIP
            ['2+3*2+5-4*9', '3+3*6+9-4*1']
        """
        check = self.check_for(experiment, threshold)
        return [EvalItem(q.question, check(q.question, gold_answer(q))) for q in self.questions(experiment, "test")[:n]]

    # ------------------------------------------------------------------------------------------------ stages
    def debates(self, experiment: str) -> Path:
        """Debates of ``experiment`` from its ``[debate] source`` (``transcripts.jsonl``; no-majority debates stay,
        flagged), plus ``heldout.jsonl``: debates on test questions (a file's debates beyond ``n_debates``) for
        diagnostics, never trained on.

        Args:
            experiment: The debate experiment.

        Returns:
            The debates dir (`RunLayout.debates`).

        Raises:
            PresetError: the experiment asks for more debates than there are training questions.

        Example:
            >>> Run(load_preset("smoke"), "runs/smoke").debates("main")  # doctest: +SKIP
            PosixPath('runs/smoke/debates/main')
        """
        return self._once(f"debates/{experiment}", lambda: self._debates(experiment))

    def _debates(self, experiment: str) -> Path:
        path = self.layout.debates(experiment)
        base = self.base_dir()

        def build(scratch: Path) -> dict:
            cfg = self.debate_config(experiment)
            setup = cfg.experiment(experiment)
            train_name = self.layout.transcripts(experiment).name
            held_name = self.layout.heldout(experiment).name
            if cfg.source == "file":
                records = self.file_debates(experiment)
                save_debates(records[: setup.n_debates], scratch / train_name)
                save_debates(records[setup.n_debates:], scratch / held_name)  # never trained on
                records, writer = records[: setup.n_debates], {"writer": "file",
                                                               "file": str(self.input_path(cfg.path).resolve())}
            else:
                train = self.questions(experiment, "train")
                if setup.n_debates > len(train):
                    raise PresetError(f"preset {self.preset.name!r}: {setup.n_debates} {experiment} debates need as "
                                      f"many training questions, but [task] gives {len(train)}")
                kwargs = dict(personas=setup.personas, malicious=setup.malicious, domain=setup.domain,
                              n_rounds=cfg.n_rounds, early_stop=cfg.early_stop, seed=self.preset.seed)
                test = self.questions(experiment, "test")
                if cfg.source == "scripted":
                    teacher_cfg = self.preset.section("teacher", TeacherConfig)
                    backend = TeacherBackend(Teacher(teacher_cfg), AutoTokenizer.from_pretrained(str(base)))
                    records = run_debates(train[: setup.n_debates], backend, id_prefix=experiment, **kwargs)
                    held = run_debates(test, backend, id_prefix=f"{experiment}-heldout", **kwargs)
                    writer = {"writer": "teacher", "teacher": dataclasses.asdict(teacher_cfg)}
                else:
                    backend = model_backend(cfg, base, **self.placement.load())
                    resume = _resume_dir(scratch, {"debate": dataclasses.asdict(cfg), "seed": self.preset.seed})
                    written = dict(chunk=cfg.chunk, log=self.log, **kwargs)
                    records = run_resumable(train[: setup.n_debates], backend, resume / "train.partial.jsonl",
                                            id_prefix=experiment, **written)
                    held = run_resumable(test, backend, resume / "heldout.partial.jsonl",
                                         id_prefix=f"{experiment}-heldout", **written)
                    writer = {"writer": "model", "model": cfg.model if cfg.base_url else
                              str(self.input_path(cfg.path) if cfg.path else base), "base_url": cfg.base_url}
                save_debates(records, scratch / train_name)
                save_debates(held, scratch / held_name)
            summary = {"n_debates": len(records), "n_majority": sum(r.has_majority for r in records),
                       "accuracy": debate_accuracy([r.transcript for r in records]), "source": cfg.source}
            atomic_write_json(scratch / "provenance.json", {
                "kind": "debates", "experiment": experiment, "preset": self.preset.name, **writer,
                "setup": _jsonable(setup), **summary})
            return summary

        main_stage(path, build, name=f"debates/{experiment}", run_dir=self.dir, log=self.log,
                   **self.reads("debates", experiment))
        return path

    def sft(self, experiment: str) -> Path:
        """Stage 1 for ``experiment``: LoRA SFT of the base on its majority debates; held-out diagnostics.

        Args:
            experiment: The debate experiment.

        Returns:
            The SFT model dir (`RunLayout.sft`).

        Raises:
            PresetError: ``[sft] arithmetic_mix`` is set for an arithmetic experiment.

        Example:
            >>> Run(load_preset("smoke"), "runs/smoke").sft("main")  # doctest: +SKIP
            PosixPath('runs/smoke/sft/main')
        """
        return self._once(f"sft/{experiment}", lambda: self._sft(experiment))

    def _sft(self, experiment: str) -> Path:
        self.debates(experiment)
        debates = self.layout.transcripts(experiment)
        base = self.base_dir()
        path = self.layout.sft(experiment)
        cfg = experiment_section(self.preset, "sft", Stage1Config, experiment)
        mixed = self._arithmetic_mix(experiment, cfg)

        def inputs() -> tuple[Stage1Config, list, dict]:
            cfg = experiment_section(self.preset, "sft", Stage1Config, experiment)
            transcripts = training_transcripts(load_debates(debates))
            if mixed:
                transcripts = mix_debates(transcripts, training_transcripts(load_debates(mixed[0])),
                                          cfg.arithmetic_mix, seed=self.preset.seed, source=self.experiments.table1)
            mix = mix_short(transcripts, cfg.short_share, seed=self.preset.seed, consensus=cfg.short_consensus)
            return cfg, mix, {"sft": dataclasses.asdict(cfg), "seed": self.preset.seed}

        def train(scratch: Path, resume: Path):
            cfg, mix, _ = inputs()
            return train_lora_sft(base, debate_rows(mix), scratch, cfg, resume_dir=resume, seed=self.preset.seed,
                                  placement=self.placement, log=self.log)

        def build(scratch: Path) -> dict:
            cfg, mix, stamp = inputs()
            write_jsonl(mix, scratch / self.layout.sft_transcripts(experiment).name)
            start = time.time()
            result = train(scratch, _resume_dir(scratch, stamp))
            metrics = {"train_seconds": round(time.time() - start, 1), "train_loss": result.train_loss,
                       "steps": result.steps, "n_examples": result.n_examples,
                       "n_shortened": sum("shortened" in t.meta for t in mix),
                       "n_mixed_in": sum(MIXED_FROM in t.meta for t in mix), **result.info,
                       **self._diagnose(scratch, experiment, cfg.eval_n, cfg.eval_max_new_tokens,
                                        cfg.eval_batch_size)}
            atomic_write_json(scratch / "metrics.json", metrics)
            write_provenance(scratch, kind="sft", experiment=experiment, parent=base, final_dir=path,
                             transcripts=[debates], preset=self.preset.name,
                             train_data=self.layout.sft_transcripts(experiment), config=dataclasses.asdict(cfg),
                             **({"mixed_in": mixed[0], "mixed_share": cfg.arithmetic_mix} if mixed else {}))
            return _headline(metrics)

        self._training_stage(path, f"sft/{experiment}", build, train, lambda: inputs()[2],
                             **self.reads("sft", experiment))
        return path

    def _arithmetic_mix(self, experiment: str, cfg: Stage1Config) -> list[Path]:
        """The Table 1 experiment's debates file a trait experiment's ``[sft] arithmetic_mix`` draws from (built
        first), or none without a mix; a mix on an arithmetic experiment is refused."""
        if not cfg.arithmetic_mix:
            return []
        table1 = self.experiments.table1
        if self.needs_boxed(experiment):
            raise PresetError(f"preset {self.preset.name!r}: [sft] arithmetic_mix = {cfg.arithmetic_mix} applies to "
                              f"trait experiments, but {experiment!r} is arithmetic already; set it under "
                              "[experiments.overrides.<trait>] sft instead")
        self.debates(table1)
        return [self.layout.transcripts(table1)]

    def _training_stage(self, path: Path, name: str, build: Callable[[Path], dict],
                        train: Callable[[Path, Path], object], stamp: Callable[[], dict], **fingerprint) -> None:
        """A distributed training stage: the main process builds it (`run_stage`); under ``torchrun`` /
        ``accelerate launch`` the others join its training (DDP) once the main process has prepared the resume
        dir, then wait for its manifest. Only the main process saves and writes anything; ``fingerprint``
        (``keys``, ``inputs``) goes to `run_stage`."""
        if is_main():
            run_stage(path, with_peak_memory(build), name=name, log=self.log, **fingerprint)
            return
        if not (path / MANIFEST).is_file():
            scratch = path.with_name(path.name + ".partial")
            expected = json.loads(json.dumps(stamp(), default=str))
            wait_for(scratch / RESUME / "config.json", what=f"{name} setup", poll_s=1.0,
                     failed=failed_marker(self.dir), log=self.log)
            while read_json(scratch / RESUME / "config.json") != expected:
                time.sleep(1.0)
            train(scratch, scratch / RESUME)
        wait_for(path / MANIFEST, what=name, failed=failed_marker(self.dir), log=self.log)

    def _diagnose(self, model_dir: Path, experiment: str, n: int, max_new_tokens: int, batch_size: int) -> dict:
        """Greedy held-out accuracy / well-formed share / length, and the exit probability after each agent."""
        model = load_causal_lm(model_dir, **self.placement.load()).eval()
        tok = AutoTokenizer.from_pretrained(str(model_dir))
        held = [r.transcript for r in load_debates(self.layout.heldout(experiment))][:n]
        return {"eval": evaluate_model(model, tok, self.eval_items(experiment, n), max_new_tokens=max_new_tokens,
                                       batch_size=batch_size, needs_boxed=self.needs_boxed(experiment)),
                "exit_probability": {f"after_agent_{k}": exit_probability(model, tok, held, after_agent=k)
                                     for k in (1, 2, 3)}}

    def debategpt(self) -> Path:
        """The DebateGPT baseline: the base fine-tuned (same LoRA recipe) on the main debates' final outputs.

        Returns:
            The DebateGPT model dir (`RunLayout.debategpt` of Table 1's experiment).

        Example:
            >>> Run(load_preset("smoke"), "runs/smoke").debategpt()  # doctest: +SKIP
            PosixPath('runs/smoke/debategpt/main')
        """
        return self._once("debategpt", self._debategpt)

    def _debategpt(self) -> Path:
        exp = self.experiments.table1
        self.debates(exp)
        debates = self.layout.transcripts(exp)
        base = self.base_dir()
        path = self.layout.debategpt(exp)

        def inputs() -> tuple[Stage1Config, list, dict]:
            cfg = self.preset.section("debategpt", Stage1Config)
            rows = answer_rows(training_transcripts(load_debates(debates)))
            return cfg, rows, {"debategpt": dataclasses.asdict(cfg), "seed": self.preset.seed}

        def train(scratch: Path, resume: Path):
            cfg, rows, _ = inputs()
            return train_lora_sft(base, rows, scratch, cfg, resume_dir=resume, seed=self.preset.seed, add_tags=False,
                                  placement=self.placement, log=self.log)

        def build(scratch: Path) -> dict:
            cfg, rows, stamp = inputs()
            start = time.time()
            result = train(scratch, _resume_dir(scratch, stamp))
            info = {"train_seconds": round(time.time() - start, 1), "train_loss": result.train_loss,
                    "steps": result.steps, "n_examples": result.n_examples, **result.info}
            write_provenance(scratch, kind="debategpt", experiment=exp, parent=base, final_dir=path,
                             transcripts=[debates], preset=self.preset.name, config=dataclasses.asdict(cfg))
            return info

        self._training_stage(path, f"debategpt/{exp}", build, train, lambda: inputs()[2],
                             **self.reads("debategpt", exp))
        return path

    def internalize(self, experiment: str) -> Path:
        """Stage 2 for ``experiment``: the GRPO phase schedule from its SFT model; the result is the IMAD model.

        Args:
            experiment: The debate experiment.

        Returns:
            The IMAD model dir (`RunLayout.internalize`).

        Example:
            >>> Run(load_preset("smoke"), "runs/smoke").internalize("main")  # doctest: +SKIP
            PosixPath('runs/smoke/internalize/main')
        """
        return self._once(f"internalize/{experiment}", lambda: self._internalize(experiment))

    def _internalize(self, experiment: str) -> Path:
        sft_dir = self.sft(experiment)
        path = self.layout.internalize(experiment)
        cfg = experiment_section(self.preset, "internalize", Stage2Config, experiment)

        def build(scratch: Path) -> dict:
            train = self.questions(experiment, "train")[: cfg.n_prompts]
            rows = [{"prompt": prompt_text(q.question), "question": q.question, "gold": gold_answer(q) or ""}
                    for q in train]
            check = self.check_for(experiment, cfg.judge_threshold)
            items = self.eval_items(experiment, cfg.eval_n, cfg.judge_threshold)
            work = _resume_dir(scratch, {"internalize": dataclasses.asdict(cfg), "seed": self.preset.seed})
            summary = internalize(sft_dir, scratch, cfg, rows, items, check, work_dir=work,
                                  needs_boxed=self.needs_boxed(experiment), seed=self.preset.seed, log=self.log,
                                  placement=self.placement)
            sft_prov = read_json(sft_dir / "provenance.json")
            write_provenance(scratch, kind="imad", experiment=experiment, parent=sft_dir, final_dir=path,
                             transcripts=[(sft_dir / p).resolve() for p in sft_prov["transcripts"]],
                             preset=self.preset.name, selected_phase=summary["selected_phase"],
                             config=dataclasses.asdict(cfg))
            return _phase_summary(summary)

        main_stage(path, build, name=f"internalize/{experiment}", run_dir=self.dir, log=self.log,
                   **self.reads("internalize", experiment))
        return path

    def single_rl(self) -> Path:
        """The Single + RL control of Table 1's experiment: stage 2's GRPO (``[internalize]``: phases, steps,
        generations, lr, clipping, correctness reward; no tag reward) from the *base* model under the Single
        prompt (``[eval] single_persona``, round 1), budgets from the p95 of the base's own sampled single answers
        (`single_rl_config`). What RL alone gives, without the debate.

        Returns:
            The Single + RL model dir (`RunLayout.single_rl` of Table 1's experiment).

        Example:
            >>> Run(load_preset("smoke"), "runs/smoke").single_rl()  # doctest: +SKIP
            PosixPath('runs/smoke/single_rl/main')
        """
        return self._once("single_rl", self._single_rl)

    def _single_rl(self) -> Path:
        exp = self.experiments.table1
        base = self.base_dir()
        path = self.layout.single_rl(exp)
        cfg = single_rl_config(experiment_section(self.preset, "internalize", Stage2Config, exp))
        ev = self.preset.section("eval", EvalConfig)

        def build(scratch: Path) -> dict:
            def prompt(question: str) -> list[dict]:  # the Single row's prompt
                return round1_messages(ev.single_persona, question, ev.domain)

            rows = [{"prompt": prompt(q.question), "question": q.question, "gold": gold_answer(q) or ""}
                    for q in self.questions(exp, "train")[: cfg.n_prompts]]
            items = [EvalItem(it.question, it.check, prompt(it.question))
                     for it in self.eval_items(exp, cfg.eval_n, cfg.judge_threshold)]
            work = _resume_dir(scratch, {"single_rl": dataclasses.asdict(cfg), "persona": ev.single_persona,
                                         "domain": ev.domain, "seed": self.preset.seed})
            summary = internalize(base, scratch, cfg, rows, items, self.check_for(exp, cfg.judge_threshold),
                                  work_dir=work, needs_boxed=self.needs_boxed(exp), seed=self.preset.seed,
                                  log=self.log, placement=self.placement, tagged=False)
            write_provenance(scratch, kind="single_rl", experiment=exp, parent=base, final_dir=path, transcripts=[],
                             preset=self.preset.name, selected_phase=summary["selected_phase"],
                             single_persona=ev.single_persona, config=dataclasses.asdict(cfg))
            return _phase_summary(summary)

        main_stage(path, build, name=f"single_rl/{exp}", run_dir=self.dir, log=self.log, **self.reads("single_rl"))
        return path

    def evaluate(self) -> Path:
        """Table 1 on held-out questions: Single, Debate (the base debating itself), DebateGPT, SFT, Single + RL
        (answering as Single does), IMAD; per benchmark (``[eval] benchmarks``, the first one's table is
        ``table1.json``), else on held-out arithmetic with a transfer column (problems of a shape never trained
        on, `training.tasks.transfer_split`).

        Returns:
            The eval dir (`RunLayout.eval`: ``table1.json`` and, per benchmark, ``benchmarks/``).

        Example:
            >>> Run(load_preset("smoke"), "runs/smoke").evaluate()  # doctest: +SKIP
            PosixPath('runs/smoke/eval')
        """
        return self._once("evaluate", self._evaluate)

    def _evaluate(self) -> Path:
        exp = self.experiments.table1
        base = self.base_dir()
        models = {"DebateGPT": self.debategpt(), "SFT": self.sft(exp), "IMAD": self.internalize(exp)}
        single_rl = self.single_rl()
        path = self.layout.eval
        cfg = self.preset.section("eval", EvalConfig)

        def build(scratch: Path) -> dict:
            methods = {"Single": MethodSpec("single", str(base)), "Debate": MethodSpec("debate", str(base)),
                       **{name: MethodSpec("direct", str(d)) for name, d in models.items()},
                       SINGLE_RL: MethodSpec("single", str(single_rl))}
            methods = {name: methods[name] for name in TABLE1_METHODS}
            info = {}
            if cfg.benchmarks:
                pools = {name: benchmark_pool(name, self.input_path(f) if f else None, cfg)
                         for name, f in cfg.benchmarks.items()}
                tables = evaluate_benchmarks(methods, pools, cfg, self.placement)
                save_benchmarks(tables, scratch / "benchmarks", static_images=False)  # HTML; table1.json's has both
                table = next(iter(tables.values()))
                info["benchmarks"] = {name: len(pool) for name, pool in pools.items()}
            else:
                pool = self.questions(exp, "test")
                check_pool(len(pool), cfg.n_questions, len(cfg.seeds), "the held-out arithmetic ([task] n_test)")
                # a pool twice the per-seed sample, so the seeds score different problems
                transfer = transfer_split(self.preset.section("task", TaskConfig), 2 * cfg.n_transfer,
                                          self.preset.seed) if cfg.n_transfer else []
                table = evaluate_methods(methods, pool, cfg=cfg, placement=self.placement, transfer=transfer)
                info["transfer"] = {"shape": TRANSFER_SHAPE, "n_questions": cfg.n_transfer, "pool": len(transfer)}
            table.save(scratch)
            atomic_write_json(scratch / "provenance.json", {
                "kind": "table1", "experiment": exp, "preset": self.preset.name, **info,
                "models": {"Single": str(base), "Debate": str(base), **{k: str(v) for k, v in models.items()},
                           SINGLE_RL: str(single_rl)}})
            return {"rows": [{k: r[k] for k in ("method", "accuracy", "accuracy_se", "tokens", "transfer") if k in r}
                             for r in table.rows],
                    **info}

        main_stage(path, build, name="eval", run_dir=self.dir, log=self.log, **self.reads("eval"))
        return path

    # ------------------------------------------------------------------------------------------ what stages read
    def reads(self, kind: str, experiment: str | None = None) -> dict:
        """The preset values and inputs stage ``kind`` (``debates``, ``sft``, ``debategpt``, ``internalize``,
        ``single_rl``, ``eval``) of ``experiment`` reads: the ``keys`` and ``inputs`` its manifest fingerprints.
        Builds nothing.

        Args:
            kind: the stage kind.
            experiment: the debate experiment (ignored for ``eval``; ``debategpt`` and ``single_rl`` use Table 1's).

        Returns:
            ``{"keys": {...}, "inputs": {...}}`` for `training.stages.run_stage`.

        Example:
            >>> Run(load_preset("smoke"), "runs/smoke").reads("sft", "main")["inputs"]  # doctest: +SKIP
            {'base': PosixPath('runs/smoke/base'), 'debates': PosixPath('runs/smoke/debates/main')}
        """
        task, seed, lay = self.preset.section("task", TaskConfig), self.preset.seed, self.layout
        if kind == "debates":
            cfg = self.debate_config(experiment)
            writer = {"source": cfg.source, "path": cfg.path, "base_url": cfg.base_url, "model": cfg.model}
            inputs = {"base": lay.base}
            if cfg.source == "file":
                inputs["debate_file"] = self.input_path(cfg.path)
            return {"keys": {"debate": {"n_rounds": cfg.n_rounds, "early_stop": cfg.early_stop,
                                        "setup": cfg.experiment(experiment), **writer},
                             "teacher": self.preset.section("teacher", TeacherConfig), "teacher_turns": TURNS_VERSION,
                             "task": task, "seed": seed},
                    "inputs": inputs}
        if kind == "sft":
            cfg = experiment_section(self.preset, "sft", Stage1Config, experiment)
            mixed = {"mixed_debates": lay.debates(self.experiments.table1)} if cfg.arithmetic_mix else {}
            return {"keys": {"sft": cfg, "task": task, "seed": seed},
                    "inputs": {"base": lay.base, "debates": lay.debates(experiment), **mixed}}
        if kind == "debategpt":
            exp = self.experiments.table1
            return {"keys": {"debategpt": self.preset.section("debategpt", Stage1Config),
                             "debategpt_rows": ANSWER_ROWS_VERSION, "seed": seed},
                    "inputs": {"base": lay.base, "debates": lay.debates(exp)}}
        if kind == "internalize":
            return {"keys": {"internalize": experiment_section(self.preset, "internalize", Stage2Config, experiment),
                             "judge": self.preset.section("judge", JudgeConfig), "task": task, "seed": seed},
                    "inputs": {"sft": lay.sft(experiment)}}
        if kind == "single_rl":
            exp, ev = self.experiments.table1, self.preset.section("eval", EvalConfig)
            return {"keys": {"internalize": single_rl_config(experiment_section(self.preset, "internalize",
                                                                                Stage2Config, exp)),
                             "single_prompt": {"persona": ev.single_persona, "domain": ev.domain},
                             "judge": self.preset.section("judge", JudgeConfig), "task": task, "seed": seed},
                    "inputs": {"base": lay.base}}
        if kind == "eval":
            exp = self.experiments.table1
            return {"keys": {"eval": self.preset.section("eval", EvalConfig), "task": task, "seed": seed},
                    "inputs": {"base": lay.base, "DebateGPT": lay.debategpt(exp), "SFT": lay.sft(exp),
                               "IMAD": lay.internalize(exp), SINGLE_RL: lay.single_rl(exp)}}
        raise ValueError(f"unknown stage kind {kind!r}; valid: ['debates', 'sft', 'debategpt', 'internalize', "
                         "'single_rl', 'eval']")

    def status(self, kind: str, experiment: str | None = None) -> tuple[str, str]:
        """Where stage ``kind`` of ``experiment`` stands now (`training.stages.stage_status`), building nothing.

        Args:
            kind: as for `reads`; also ``base`` (the toy base).
            experiment: as for `reads`.

        Returns:
            ``(state, why)``: ``cached``, ``stale`` (and what changed), ``damaged``, ``resumable`` or ``missing``.

        Example:
            >>> Run(load_preset("smoke"), "runs/smoke").status("sft", "main")  # doctest: +SKIP
            ('stale', '[sft] max_steps 4 -> 3')
        """
        if kind == "base":
            reads, path = {"keys": base_keys(self.preset)}, self.layout.toy_base
        else:
            reads = self.reads(kind, experiment)
            exp = self.experiments.table1 if kind in ("debategpt", "single_rl") else experiment
            path = self.layout.eval if kind == "eval" else getattr(self.layout, kind)(exp)
        return status_now(path, **reads)


def single_rl_config(cfg: Stage2Config) -> Stage2Config:
    """Stage 2's settings for the Single + RL control: the same phases, steps and generations, but a fractional
    budget (a share of the reference p95) becomes the whole p95 of the base's own single answers.

    IMAD's fractions cut debate turns (one agent and the consensus fit in the last budget); a single answer has no
    turns to drop, and the same fractions (about 25-50 tokens for a ~50-token toy answer) would cut every answer
    before its ``\\boxed{}``, leaving RL no reward to learn from: a control that could not win. Token budgets
    (the paper presets') are kept as they are.

    Args:
        cfg: the experiment's ``[internalize]`` section.

    Returns:
        ``cfg`` with each fractional phase budget set to 1.0.

    Example:
        >>> [p["budget"] for p in single_rl_config(Stage2Config(phases=({"budget": 0.5, "steps": 2},))).phases]
        [1.0]
    """
    phases = tuple({**p, "budget": 1.0} if isinstance(p["budget"], float) and p["budget"] <= 1.0 else p
                   for p in cfg.phases)
    return dataclasses.replace(cfg, phases=phases)


def run_pipeline_stage(name: str, preset: Preset, run_dir: str | Path, *, log: Callable[[str], None] = print) -> None:
    """Run stage ``name`` (debate | sft | internalize | single-rl | evaluate) for every experiment of the preset
    (``single-rl``: Table 1's), after whatever it depends on; finished stages are skipped (`Run.stage`).

    Args:
        name: The stage, one of `training.layout.STAGES`.
        preset: The preset.
        run_dir: The run directory.
        log: Progress lines.

    Returns:
        None.

    Raises:
        ValueError: an unknown stage name.

    Example:
        >>> run_pipeline_stage("sft", load_preset("smoke"), "runs/smoke")  # doctest: +SKIP
    """
    Run(preset, Path(run_dir), log).stage(name)


def _resume_dir(scratch: Path, config: dict) -> Path:
    """The stage's resume dir, stamped with the configuration training from it (``config.json``): the other ranks
    of a multi-process run join once the stamp matches theirs. A stamp of another configuration empties it first
    (the stage fingerprint already keeps a changed preset from resuming; this guards direct callers)."""
    resume = scratch / RESUME
    stamp = resume / "config.json"
    config = json.loads(json.dumps(config, default=str))
    if stamp.is_file() and read_json(stamp) != config:
        shutil.rmtree(resume)
    atomic_write_json(stamp, config)
    return resume


def _phase_summary(summary: dict) -> dict:
    """A stage-2 run's manifest summary: the selected phase, the reference length and each phase's held-out result."""
    trained = [p for p in summary["phases"] if not p["skipped"]]
    return {"selected_phase": summary["selected_phase"], "ref_length": summary["ref_length"],
            "phases": [{"budget": p["budget"], "skipped": p["skipped"],
                        **({k: p["eval"][k] for k in ("accuracy", "mean_tokens", "well_formed")}
                           if not p["skipped"] else {})} for p in summary["phases"]],
            "n_trained_phases": len(trained)}


def _headline(metrics: dict) -> dict:
    ev = metrics["eval"]
    return {"train_seconds": metrics["train_seconds"], "accuracy": ev["accuracy"], "well_formed": ev["well_formed"],
            "mean_tokens": ev["mean_tokens"], "exit_after_agent_1": metrics["exit_probability"]["after_agent_1"]}


def _jsonable(obj) -> dict:
    d = dataclasses.asdict(obj)
    return {k: ({str(a): b for a, b in v.items()} if isinstance(v, dict) else v) for k, v in d.items()}
