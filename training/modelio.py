"""The one way a Hugging Face causal LM is loaded in training/ (stages, evaluation, backends), and the LoRA
target modules both fine-tuning stages use."""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, PreTrainedModel

LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")  # attention + MLP


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
        >>> model = load_causal_lm("runs/toy/sft/main").eval()
    """
    path = Path(path)
    if (path / "adapter_config.json").is_file():
        from peft import AutoPeftModelForCausalLM

        model = AutoPeftModelForCausalLM.from_pretrained(str(path), dtype=dtype).merge_and_unload()
    else:
        model = AutoModelForCausalLM.from_pretrained(str(path), dtype=dtype)
    return model.to(device)
