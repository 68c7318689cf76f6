"""The one way a Hugging Face causal LM is loaded in training/ (stages, evaluation, backends), where and in which
dtype (`Placement`, from the preset's ``[model]`` section), and the LoRA target modules both fine-tuning stages
use."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, PreTrainedModel

LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")  # attention + MLP
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


@dataclass(frozen=True)
class Placement:
    """Where and how every stage, the evaluation and both experiments load a model: ``[model] device``
    (``auto``: CUDA when present), ``dtype`` (``auto``: bfloat16 on CUDA, float32 elsewhere) and
    ``gradient_checkpointing`` for the training stages, ``keep_hf`` for the experiments' `lens.load_model`,
    resolved once.

    Example:
        >>> from training.presets import load_preset
        >>> Placement.of(load_preset("smoke")).torch_dtype
        torch.float32
    """

    device: str = "cpu"
    dtype: str = "float32"
    gradient_checkpointing: bool = False
    keep_hf: bool = True

    def __post_init__(self) -> None:
        if self.dtype not in DTYPES:
            raise ValueError(f"[model] dtype {self.dtype!r} is unknown; valid: {sorted(DTYPES)} or 'auto'")

    @classmethod
    def of(cls, preset) -> Placement:
        """The placement ``preset``'s ``[model]`` section asks for, ``auto`` resolved on this machine.

        Args:
            preset: The preset (its ``[model]`` section).

        Returns:
            The `Placement`.

        Example:
            >>> from training.modelio import Placement
            >>> from training.presets import load_preset
            >>> Placement.of(load_preset("smoke"))
            Placement(device='cpu', dtype='float32', gradient_checkpointing=False, keep_hf=True)
        """
        model = preset.model
        return cls(model.resolved_device(), model.resolved_dtype(), model.gradient_checkpointing, model.keep_hf)

    @property
    def torch_dtype(self) -> torch.dtype:
        return DTYPES[self.dtype]

    def load(self) -> dict:
        """Keyword arguments for `load_causal_lm` (and `lens.load_model`).

        Returns:
            ``{"device": ..., "dtype": ...}``, the dtype as a ``torch.dtype``.

        Example:
            >>> from training.modelio import Placement
            >>> Placement().load()
            {'device': 'cpu', 'dtype': torch.float32}
        """
        return {"device": self.device, "dtype": self.torch_dtype}

    def lens(self) -> dict:
        """Keyword arguments for `lens.load_model` in the experiments: `load` plus ``keep_hf``.

        Returns:
            ``{"device": ..., "dtype": ..., "keep_hf": ...}``.

        Example:
            >>> from training.presets import load_preset
            >>> Placement.of(load_preset("smoke")).lens()["keep_hf"]
            True
        """
        return {**self.load(), "keep_hf": self.keep_hf}

    def trainer(self, bf16: bool = False) -> dict:
        """TRL / Trainer arguments for the training stages: the device, mixed precision, checkpointing.

        Args:
            bf16: train under bf16 autocast even when the weights are float32 (a stage's ``bf16`` key).

        Returns:
            ``use_cpu``, ``bf16``, ``fp16`` and ``gradient_checkpointing`` for ``TrainingArguments`` / TRL's configs.

        Example:
            >>> from training.modelio import Placement
            >>> Placement(device="cuda", dtype="bfloat16").trainer()
            {'use_cpu': False, 'bf16': True, 'fp16': False, 'gradient_checkpointing': False}
        """
        return {"use_cpu": self.device == "cpu", "bf16": bf16 or self.dtype == "bfloat16",
                "fp16": self.dtype == "float16" and not bf16,
                "gradient_checkpointing": self.gradient_checkpointing}


def load_causal_lm(path: str | Path, *, device: str | torch.device = "cpu",
                   dtype: torch.dtype = torch.float32) -> PreTrainedModel:
    """A local model dir as a causal LM on ``device`` in ``dtype``; a PEFT adapter dir is merged into its base.

    Args:
        path: A local HF model dir (``config.json`` + weights) or a PEFT adapter dir (``adapter_config.json``).
        device: Where the weights go.
        dtype: The weights' dtype.

    Returns:
        The model (in train mode, as ``from_pretrained`` leaves it; call ``.eval()`` for inference).

    Example:
        >>> model = load_causal_lm("runs/toy/sft/main").eval()  # doctest: +SKIP
    """
    path = Path(path)
    if (path / "adapter_config.json").is_file():
        from peft import AutoPeftModelForCausalLM

        model = AutoPeftModelForCausalLM.from_pretrained(str(path), dtype=dtype).merge_and_unload()
    else:
        model = AutoModelForCausalLM.from_pretrained(str(path), dtype=dtype)
    return model.to(device)
