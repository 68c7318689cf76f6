"""The run directory's layout: every path a stage writes or an analysis reads, in one place.

`RunLayout` is pure paths (no I/O): ``base/`` (the toy base, or ``[model] path`` for real models),
``debates/<exp>/`` (``transcripts.jsonl`` and ``heldout.jsonl``), ``sft/<exp>/`` (stage 1),
``debategpt/<exp>/`` (the final-outputs baseline), ``internalize/<exp>/`` (stage 2: the IMAD model, with ``phases/``
and ``phases.json``), ``single_rl/<exp>/`` (the Single + RL control: stage 2's GRPO from the base, no debate),
``eval/`` (Table 1), ``analyses/<name>/`` (the experiments) and ``report/``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from training.presets import Preset

# the pipeline's stages in order, also its CLI commands
STAGES = ("debate", "sft", "internalize", "single-rl", "evaluate")


@dataclass(frozen=True)
class RunLayout:
    """Where everything of one run lives.

    Args:
        root: The run directory (``runs/<preset>/`` by default).
        model_path: ``[model] path`` of a real-model preset (a local HF dir); ``None`` for the toy world, whose
            base is trained into ``root/base``.

    Example:
        >>> RunLayout(Path("runs/toy")).internalize("main")
        PosixPath('runs/toy/internalize/main')
    """

    root: Path
    model_path: Path | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "root", Path(self.root))
        if self.model_path is not None:
            object.__setattr__(self, "model_path", Path(self.model_path).expanduser())

    @classmethod
    def of(cls, preset: Preset, run_dir: str | Path) -> RunLayout:
        """The layout of ``preset``'s run in ``run_dir`` (its base is ``[model] path`` when the preset names one).

        Args:
            preset: The preset (its ``[model] path``).
            run_dir: The run directory.

        Returns:
            The `RunLayout`.

        Example:
            >>> from training.layout import RunLayout
            >>> from training.presets import load_preset
            >>> RunLayout.of(load_preset("smoke"), "runs/smoke").base
            PosixPath('runs/smoke/base')
        """
        local = preset.data.get("model", {}).get("path")
        return cls(Path(run_dir), Path(str(local)) if local else None)

    @property
    def toy_base(self) -> Path:
        return self.root / "base"

    @property
    def base(self) -> Path:
        """The base model dir: ``[model] path`` for real models, else the toy base."""
        return self.model_path if self.model_path is not None else self.toy_base

    def debates(self, experiment: str) -> Path:
        """The experiment's debates dir (``transcripts.jsonl`` and ``heldout.jsonl``).

        Args:
            experiment: The debate experiment (``main``, ``evil``, ``hallucination``).

        Returns:
            ``root/debates/<experiment>``.

        Example:
            >>> from training.layout import RunLayout
            >>> RunLayout("runs/toy").debates("evil")
            PosixPath('runs/toy/debates/evil')
        """
        return self.root / "debates" / experiment

    def transcripts(self, experiment: str) -> Path:
        """The experiment's training debates (no-majority ones included, flagged).

        Args:
            experiment: The debate experiment.

        Returns:
            ``debates/<experiment>/transcripts.jsonl``.

        Example:
            >>> from training.layout import RunLayout
            >>> RunLayout("runs/toy").transcripts("main")
            PosixPath('runs/toy/debates/main/transcripts.jsonl')
        """
        return self.debates(experiment) / "transcripts.jsonl"

    def heldout(self, experiment: str) -> Path:
        """Debates on test questions, for diagnostics and the experiments; never trained on.

        Args:
            experiment: The debate experiment.

        Returns:
            ``debates/<experiment>/heldout.jsonl``.

        Example:
            >>> from training.layout import RunLayout
            >>> RunLayout("runs/toy").heldout("main")
            PosixPath('runs/toy/debates/main/heldout.jsonl')
        """
        return self.debates(experiment) / "heldout.jsonl"

    def sft(self, experiment: str) -> Path:
        """Stage 1's output: the SFT model of ``experiment``.

        Args:
            experiment: The debate experiment.

        Returns:
            ``root/sft/<experiment>``.

        Example:
            >>> from training.layout import RunLayout
            >>> RunLayout("runs/toy").sft("main")
            PosixPath('runs/toy/sft/main')
        """
        return self.root / "sft" / experiment

    def sft_transcripts(self, experiment: str) -> Path:
        """The debates stage 1 actually trained on (with the shortened ones mixed in).

        Args:
            experiment: The debate experiment.

        Returns:
            ``sft/<experiment>/train_transcripts.jsonl``.

        Example:
            >>> from training.layout import RunLayout
            >>> RunLayout("runs/toy").sft_transcripts("main")
            PosixPath('runs/toy/sft/main/train_transcripts.jsonl')
        """
        return self.sft(experiment) / "train_transcripts.jsonl"

    def debategpt(self, experiment: str) -> Path:
        """The DebateGPT baseline trained on ``experiment``'s debates.

        Args:
            experiment: The debate experiment (Table 1's).

        Returns:
            ``root/debategpt/<experiment>``.

        Example:
            >>> from training.layout import RunLayout
            >>> RunLayout("runs/toy").debategpt("main")
            PosixPath('runs/toy/debategpt/main')
        """
        return self.root / "debategpt" / experiment

    def internalize(self, experiment: str) -> Path:
        """Stage 2's output: the IMAD model of ``experiment``.

        Args:
            experiment: The debate experiment.

        Returns:
            ``root/internalize/<experiment>``.

        Example:
            >>> from training.layout import RunLayout
            >>> RunLayout("runs/toy").internalize("evil")
            PosixPath('runs/toy/internalize/evil')
        """
        return self.root / "internalize" / experiment

    def single_rl(self, experiment: str) -> Path:
        """The Single + RL control of ``experiment`` (Table 1's): GRPO from the base under the Single prompt, with
        ``phases/`` and ``phases.json`` as stage 2.

        Args:
            experiment: The debate experiment (Table 1's).

        Returns:
            ``root/single_rl/<experiment>``.

        Example:
            >>> from training.layout import RunLayout
            >>> RunLayout("runs/toy").single_rl("main")
            PosixPath('runs/toy/single_rl/main')
        """
        return self.root / "single_rl" / experiment

    @property
    def eval(self) -> Path:
        return self.root / "eval"

    @property
    def table1(self) -> Path:
        return self.eval / "table1.json"

    def analysis(self, name: str) -> Path:
        """Where the experiment (analysis) ``name`` writes its results.

        Args:
            name: The analysis's name (``agent_subspaces``, ``malicious``).

        Returns:
            ``root/analyses/<name>``.

        Example:
            >>> from training.layout import RunLayout
            >>> RunLayout("runs/toy").analysis("malicious")
            PosixPath('runs/toy/analyses/malicious')
        """
        return self.root / "analyses" / name

    @property
    def report(self) -> Path:
        return self.root / "report"
