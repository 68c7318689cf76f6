"""The training pipeline behind ``latent-agents debate|sft|internalize|evaluate``: cached, resumable stages.

The run directory's layout is `training.layout.RunLayout`'s. Each stage runs only when its dir has no manifest,
and asks for the stages it needs first, so any command runs whatever is missing before it.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from transformers import AutoTokenizer

from lens.debate_format import prompt_text, write_jsonl
from lens.io import atomic_write_json
from training.backends import TeacherBackend
from training.evaluate import EvalConfig, EvalItem, MethodSpec, evaluate_methods, evaluate_model
from training.internalize import Stage2Config, internalize
from training.judges import ToyTraitJudge
from training.layout import STAGES, RunLayout
from training.modelio import load_causal_lm
from training.presets import Preset, PresetError
from training.prompts import ARITHMETIC
from training.rewards import gold_match, judge_benign
from training.runner import (DebateConfig, debate_accuracy, load_debates, run_debates, save_debates,
                             training_transcripts)
from training.schema import NON_EMPTY
from training.sft import (Stage1Config, answer_rows, debate_rows, exit_probability, mix_short, train_lora_sft,
                          write_provenance)
from training.stages import RESUME, read_json, run_stage, status_now
from training.tasks import TaskConfig, arithmetic_split, gold_answer, trait_split
from training.teacher import Teacher, TeacherConfig
from training.toy_base import base_keys, build_base

TABLE1_METHODS = ("Single", "Debate", "DebateGPT", "SFT", "IMAD")


@dataclass(frozen=True)
class ExperimentsConfig:
    """Preset section ``[experiments]``: which debate experiments to train (``main`` is arithmetic with the
    persona agents, used for Table 1 and the agent subspaces; ``evil`` / ``hallucination`` put a malicious agent
    2 in advice debates), and per-experiment overrides of ``[sft]`` / ``[internalize]`` keys."""

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
            bad = sorted(set(sections) - {"sft", "internalize"})
            if bad:
                raise ValueError(f"overrides for {exp!r} name section(s) {bad}; valid: ['internalize', 'sft']")


def experiment_section(preset: Preset, key: str, cls, experiment: str):
    """Section ``key`` as ``cls`` with ``[experiments.overrides.<experiment>.<key>]`` applied on top."""
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
        self._done: dict[str, Path] = {}

    def _once(self, key: str, stage: Callable[[], Path]) -> Path:
        """Run (or look up) a stage once per `Run`, so dependencies are not re-checked and re-logged."""
        if key not in self._done:
            self._done[key] = stage()
        return self._done[key]

    # ------------------------------------------------------------------------------------------------ inputs
    def base_dir(self) -> Path:
        """The base model: ``[model] path`` when the preset names one (real models), else the toy base."""
        return self._once("base", self._base_dir)

    def _base_dir(self) -> Path:
        local = self.preset.data.get("model", {}).get("path")
        if not local:
            return Path(build_base(self.preset, self.dir))
        if str(local).startswith("hf://"):
            raise PresetError(f"preset {self.preset.name!r}: [model] path {local!r} names a Hub repo; resolve "
                              "it to its local cache snapshot first (analyses.models.resolve_model; the CLI does)")
        if not self.layout.base.is_dir():
            raise PresetError(f"preset {self.preset.name!r}: [model] path {str(self.layout.base)!r} is not a local "
                              "model dir; download the model there first")
        return self.layout.base

    def setup(self, experiment: str):
        return self.preset.section("debate", DebateConfig).experiment(experiment)

    def questions(self, experiment: str, split: str) -> list:
        """The experiment's questions of ``split``: arithmetic problems, or trait questions for the trait."""
        task = self.preset.section("task", TaskConfig)
        if self.setup(experiment).domain == ARITHMETIC:
            return arithmetic_split(task, split, self.preset.seed)
        return trait_split(task, experiment, split, self.preset.seed)

    def needs_boxed(self, experiment: str) -> bool:
        return self.setup(experiment).domain == ARITHMETIC

    def check_for(self, experiment: str, threshold: float = 50.0) -> Callable:
        """``(question, gold) -> check``: the gold answer for arithmetic, the toy judge's verdict for a trait."""
        if self.needs_boxed(experiment):
            return lambda question, gold: gold_match(gold)
        judge = ToyTraitJudge(experiment)
        return lambda question, gold: judge_benign(judge, question, threshold)

    def eval_items(self, experiment: str, n: int, threshold: float = 50.0) -> list:
        check = self.check_for(experiment, threshold)
        return [EvalItem(q.question, check(q.question, gold_answer(q))) for q in self.questions(experiment, "test")[:n]]

    # ------------------------------------------------------------------------------------------------ stages
    def debates(self, experiment: str) -> Path:
        """Teacher debates of ``experiment`` (``transcripts.jsonl``; no-majority debates stay, flagged), plus
        ``heldout.jsonl``: debates on test questions for diagnostics, never trained on."""
        return self._once(f"debates/{experiment}", lambda: self._debates(experiment))

    def _debates(self, experiment: str) -> Path:
        path = self.layout.debates(experiment)
        base = self.base_dir()

        cfg = self.preset.section("debate", DebateConfig)
        setup = cfg.experiment(experiment)
        teacher_cfg = self.preset.section("teacher", TeacherConfig)

        def build(scratch: Path) -> dict:
            backend = TeacherBackend(Teacher(teacher_cfg), AutoTokenizer.from_pretrained(str(base)))
            train = self.questions(experiment, "train")
            if setup.n_debates > len(train):
                raise PresetError(f"preset {self.preset.name!r}: {setup.n_debates} {experiment} debates need as many "
                                  f"training questions, but [task] gives {len(train)}")
            kwargs = dict(personas=setup.personas, malicious=setup.malicious, domain=setup.domain,
                          n_rounds=cfg.n_rounds, early_stop=cfg.early_stop, seed=self.preset.seed)
            records = run_debates(train[: setup.n_debates], backend, id_prefix=experiment, **kwargs)
            save_debates(records, scratch / self.layout.transcripts(experiment).name)
            held = run_debates(self.questions(experiment, "test"), backend, id_prefix=f"{experiment}-heldout",
                               **kwargs)
            save_debates(held, scratch / self.layout.heldout(experiment).name)
            summary = {"n_debates": len(records), "n_majority": sum(r.has_majority for r in records),
                       "accuracy": debate_accuracy([r.transcript for r in records])}
            atomic_write_json(scratch / "provenance.json", {
                "kind": "debates", "experiment": experiment, "writer": "teacher", "preset": self.preset.name,
                "teacher": dataclasses.asdict(teacher_cfg), "setup": _jsonable(setup), **summary})
            return summary

        run_stage(path, build, name=f"debates/{experiment}", **self.reads("debates", experiment), log=self.log)
        return path

    def sft(self, experiment: str) -> Path:
        """Stage 1 for ``experiment``: LoRA SFT of the base on its majority debates; held-out diagnostics."""
        return self._once(f"sft/{experiment}", lambda: self._sft(experiment))

    def _sft(self, experiment: str) -> Path:
        self.debates(experiment)
        debates = self.layout.transcripts(experiment)
        base = self.base_dir()
        path = self.layout.sft(experiment)
        cfg = experiment_section(self.preset, "sft", Stage1Config, experiment)

        def build(scratch: Path) -> dict:
            transcripts = training_transcripts(load_debates(debates))
            mix = mix_short(transcripts, cfg.short_share, seed=self.preset.seed, consensus=cfg.short_consensus)
            write_jsonl(mix, scratch / self.layout.sft_transcripts(experiment).name)
            start = time.time()
            result = train_lora_sft(base, debate_rows(mix), scratch, cfg, resume_dir=scratch / RESUME,
                                    seed=self.preset.seed, log=self.log)
            metrics = {"train_seconds": round(time.time() - start, 1), "train_loss": result.train_loss,
                       "steps": result.steps, "n_examples": result.n_examples,
                       "n_shortened": sum("shortened" in t.meta for t in mix), **result.info,
                       **self._diagnose(scratch, experiment, cfg.eval_n, cfg.eval_max_new_tokens,
                                        cfg.eval_batch_size)}
            atomic_write_json(scratch / "metrics.json", metrics)
            write_provenance(scratch, kind="sft", experiment=experiment, parent=base, final_dir=path,
                             transcripts=[debates], preset=self.preset.name,
                             train_data=self.layout.sft_transcripts(experiment), config=dataclasses.asdict(cfg))
            return _headline(metrics)

        run_stage(path, build, name=f"sft/{experiment}", **self.reads("sft", experiment), log=self.log)
        return path

    def _diagnose(self, model_dir: Path, experiment: str, n: int, max_new_tokens: int, batch_size: int) -> dict:
        """Greedy held-out accuracy / well-formed share / length, and the exit probability after each agent."""
        model = load_causal_lm(model_dir).eval()
        tok = AutoTokenizer.from_pretrained(str(model_dir))
        held = [r.transcript for r in load_debates(self.layout.heldout(experiment))][:n]
        return {"eval": evaluate_model(model, tok, self.eval_items(experiment, n), max_new_tokens=max_new_tokens,
                                       batch_size=batch_size, needs_boxed=self.needs_boxed(experiment)),
                "exit_probability": {f"after_agent_{k}": exit_probability(model, tok, held, after_agent=k)
                                     for k in (1, 2, 3)}}

    def debategpt(self) -> Path:
        """The DebateGPT baseline: the base fine-tuned (same LoRA recipe) on the main debates' final answers."""
        return self._once("debategpt", self._debategpt)

    def _debategpt(self) -> Path:
        exp = self.experiments.table1
        self.debates(exp)
        debates = self.layout.transcripts(exp)
        base = self.base_dir()
        path = self.layout.debategpt(exp)
        cfg = self.preset.section("debategpt", Stage1Config)

        def build(scratch: Path) -> dict:
            rows = answer_rows(training_transcripts(load_debates(debates)))
            start = time.time()
            result = train_lora_sft(base, rows, scratch, cfg, resume_dir=scratch / RESUME, seed=self.preset.seed,
                                    add_tags=False, log=self.log)
            info = {"train_seconds": round(time.time() - start, 1), "train_loss": result.train_loss,
                    "steps": result.steps, "n_examples": result.n_examples}
            write_provenance(scratch, kind="debategpt", experiment=exp, parent=base, final_dir=path,
                             transcripts=[debates], preset=self.preset.name, config=dataclasses.asdict(cfg))
            return info

        run_stage(path, build, name=f"debategpt/{exp}", **self.reads("debategpt", exp), log=self.log)
        return path

    def internalize(self, experiment: str) -> Path:
        """Stage 2 for ``experiment``: the GRPO phase schedule from its SFT model; the result is the IMAD model."""
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
            summary = internalize(sft_dir, scratch, cfg, rows, items, check, work_dir=scratch / RESUME,
                                  needs_boxed=self.needs_boxed(experiment), seed=self.preset.seed, log=self.log)
            sft_prov = read_json(sft_dir / "provenance.json")
            write_provenance(scratch, kind="imad", experiment=experiment, parent=sft_dir, final_dir=path,
                             transcripts=[(sft_dir / p).resolve() for p in sft_prov["transcripts"]],
                             preset=self.preset.name, selected_phase=summary["selected_phase"],
                             config=dataclasses.asdict(cfg))
            trained = [p for p in summary["phases"] if not p["skipped"]]
            return {"selected_phase": summary["selected_phase"], "ref_length": summary["ref_length"],
                    "phases": [{"budget": p["budget"], "skipped": p["skipped"],
                                **({k: p["eval"][k] for k in ("accuracy", "mean_tokens", "well_formed")}
                                   if not p["skipped"] else {})} for p in summary["phases"]],
                    "n_trained_phases": len(trained)}

        run_stage(path, build, name=f"internalize/{experiment}", **self.reads("internalize", experiment),
                  log=self.log)
        return path

    def evaluate(self) -> Path:
        """Table 1 on held-out problems: Single, Debate (the base debating itself), DebateGPT, SFT, IMAD."""
        return self._once("evaluate", self._evaluate)

    def _evaluate(self) -> Path:
        exp = self.experiments.table1
        base = self.base_dir()
        models = {"DebateGPT": self.debategpt(), "SFT": self.sft(exp), "IMAD": self.internalize(exp)}
        path = self.layout.eval
        cfg = self.preset.section("eval", EvalConfig)

        def build(scratch: Path) -> dict:
            methods = {"Single": MethodSpec("single", str(base)), "Debate": MethodSpec("debate", str(base)),
                       **{name: MethodSpec("direct", str(d)) for name, d in models.items()}}
            table = evaluate_methods(methods, self.questions(exp, "test"), cfg=cfg)
            table.save(scratch)
            atomic_write_json(scratch / "provenance.json", {
                "kind": "table1", "experiment": exp, "preset": self.preset.name,
                "models": {"Single": str(base), "Debate": str(base), **{k: str(v) for k, v in models.items()}}})
            return {"rows": [{k: r[k] for k in ("method", "accuracy", "accuracy_se", "tokens")} for r in table.rows]}

        run_stage(path, build, name="eval", **self.reads("eval"), log=self.log)
        return path

    # ------------------------------------------------------------------------------------------ what stages read
    def reads(self, kind: str, experiment: str | None = None) -> dict:
        """The preset values and inputs stage ``kind`` (``debates``, ``sft``, ``debategpt``, ``internalize``,
        ``eval``) of ``experiment`` reads: the ``keys`` and ``inputs`` its manifest fingerprints. Builds nothing.

        Args:
            kind: the stage kind.
            experiment: the debate experiment (ignored for ``eval``; ``debategpt`` uses Table 1's).

        Returns:
            ``{"keys": {...}, "inputs": {...}}`` for `training.stages.run_stage`.

        Example:
            >>> Run(load_preset("smoke"), "runs/smoke").reads("sft", "main")["inputs"]  # doctest: +SKIP
            {'base': PosixPath('runs/smoke/base'), 'debates': PosixPath('runs/smoke/debates/main')}
        """
        task, seed, lay = self.preset.section("task", TaskConfig), self.preset.seed, self.layout
        if kind == "debates":
            cfg = self.preset.section("debate", DebateConfig)
            return {"keys": {"debate": {"n_rounds": cfg.n_rounds, "early_stop": cfg.early_stop,
                                        "setup": cfg.experiment(experiment)},
                             "teacher": self.preset.section("teacher", TeacherConfig), "task": task, "seed": seed},
                    "inputs": {"base": lay.base}}
        if kind == "sft":
            return {"keys": {"sft": experiment_section(self.preset, "sft", Stage1Config, experiment), "task": task,
                             "seed": seed}, "inputs": {"base": lay.base, "debates": lay.debates(experiment)}}
        if kind == "debategpt":
            exp = self.experiments.table1
            return {"keys": {"debategpt": self.preset.section("debategpt", Stage1Config), "seed": seed},
                    "inputs": {"base": lay.base, "debates": lay.debates(exp)}}
        if kind == "internalize":
            return {"keys": {"internalize": experiment_section(self.preset, "internalize", Stage2Config, experiment),
                             "task": task, "seed": seed}, "inputs": {"sft": lay.sft(experiment)}}
        if kind == "eval":
            exp = self.experiments.table1
            return {"keys": {"eval": self.preset.section("eval", EvalConfig), "task": task, "seed": seed},
                    "inputs": {"base": lay.base, "DebateGPT": lay.debategpt(exp), "SFT": lay.sft(exp),
                               "IMAD": lay.internalize(exp)}}
        raise ValueError(f"unknown stage kind {kind!r}; valid: ['debates', 'sft', 'debategpt', 'internalize', 'eval']")

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
            exp = self.experiments.table1 if kind == "debategpt" else experiment
            path = self.layout.eval if kind == "eval" else getattr(self.layout, kind)(exp)
        return status_now(path, **reads)


def run_pipeline_stage(name: str, preset: Preset, run_dir: str | Path, *, log: Callable[[str], None] = print) -> None:
    """Run stage ``name`` (debate | sft | internalize | evaluate) for every experiment of the preset, after
    whatever it depends on; finished stages are skipped."""
    if name not in STAGES:
        raise ValueError(f"unknown pipeline stage {name!r}; valid: {list(STAGES)}")
    run = Run(preset, Path(run_dir), log)
    for exp in run.experiments.names:
        if name == "debate":
            run.debates(exp)
        elif name == "sft":
            run.sft(exp)
        elif name == "internalize":
            run.internalize(exp)
    if name in ("sft", "internalize", "evaluate"):
        run.debategpt()
    if name == "evaluate":
        run.evaluate()


def _headline(metrics: dict) -> dict:
    ev = metrics["eval"]
    return {"train_seconds": metrics["train_seconds"], "accuracy": ev["accuracy"], "well_formed": ev["well_formed"],
            "mean_tokens": ev["mean_tokens"], "exit_after_agent_1": metrics["exit_probability"]["after_agent_1"]}


def _jsonable(obj) -> dict:
    d = dataclasses.asdict(obj)
    return {k: ({str(a): b for a, b in v.items()} if isinstance(v, dict) else v) for k, v in d.items()}
