"""Is a model directory what it claims to be: weight files that open, and the base an adapter was trained on.

A *fingerprint* of a model dir is its architecture plus one short hash per weight tensor, taken over the tensor's
shape and its first and last rows only (read through safetensors slices or a memory-mapped ``.bin``), so it costs
a few megabytes of reads on a 16 GB model. Values are hashed after rounding to bfloat16, so an fp32 model and its
bf16 copy share a fingerprint while a model with different weights of the same shapes does not. The training
stages write the fingerprint of the base beside what they train (``base_model.json``); `lens.load_model` reads it
to refuse an adapter on another base.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Iterator

import torch

from lens.errors import LensLoadError
from lens.io import atomic_write_json

BASE_RECORD = "base_model.json"
RECORD_FORMAT = "lens.base_model/1"


@dataclass(frozen=True)
class ModelFingerprint:
    """A cheap identity of a saved model: architecture, a hash per sampled tensor, and where it was read."""

    architecture: str
    tensors: dict[str, str]
    path: str | None = None
    config: dict = field(default_factory=dict)

    def difference(self, other: "ModelFingerprint") -> str | None:
        """Why ``other`` is not the same model as this one (``None`` when it is).

        Args:
            other: The fingerprint to compare with.

        Returns:
            ``None`` for the same architecture and identical hashes on every tensor both name, else a short phrase.

        Example:
            >>> a = ModelFingerprint("LlamaForCausalLM", {"w": "00ff"})
            >>> a.difference(ModelFingerprint("LlamaForCausalLM", {"w": "ff00"}))
            'different weights (1 of 1 sampled tensors differ, e.g. w)'
        """
        if self.architecture != other.architecture:
            return f"a different architecture ({other.architecture}, not {self.architecture})"
        missing = sorted(set(self.tensors) - set(other.tensors))
        if missing:
            return f"different tensors ({len(missing)} of {len(self.tensors)} missing, e.g. {missing[0]})"
        differ = sorted(n for n in self.tensors if self.tensors[n] != other.tensors[n])
        if differ:
            return f"different weights ({len(differ)} of {len(self.tensors)} sampled tensors differ, e.g. {differ[0]})"
        return None

    def to_dict(self) -> dict:
        """The JSON record (``format`` tag included); `from_dict` reads it back."""
        return {"format": RECORD_FORMAT, **asdict(self)}

    @classmethod
    def from_dict(cls, d: dict) -> "ModelFingerprint":
        """The fingerprint a `to_dict` record describes."""
        return cls(architecture=d["architecture"], tensors=dict(d["tensors"]), path=d.get("path"),
                   config=d.get("config", {}))


def check_weight_files(model_dir: str | Path) -> None:
    """Open every weight file of a model or adapter dir; a truncated or corrupt one is named in the error.

    Args:
        model_dir: A saved HF model dir or PEFT adapter dir.

    Returns:
        None.

    Raises:
        LensLoadError: a shard listed in ``*.index.json`` is missing, or a ``.safetensors``/``.bin`` file does not
            open (truncated download, interrupted save).

    Example:
        >>> import tempfile
        >>> from transformers import GPT2Config, AutoModelForCausalLM
        >>> d = tempfile.mkdtemp()
        >>> tiny = GPT2Config(n_layer=1, n_embd=8, n_head=2, vocab_size=10)
        >>> AutoModelForCausalLM.from_config(tiny).save_pretrained(d)
        >>> check_weight_files(d)   # opens cleanly
    """
    from safetensors import safe_open

    d = Path(model_dir)
    for index in d.glob("*.index.json"):
        for shard in sorted(set(json.loads(index.read_text()).get("weight_map", {}).values())):
            if not (d / shard).is_file():
                raise LensLoadError(f"{d / shard}: weight shard listed in {index.name} is missing; re-save or "
                                    f"re-download the model")
    for f in _weight_files(d):
        try:
            if f.suffix == ".safetensors":
                with safe_open(str(f), "pt"):
                    pass
            else:
                torch.load(str(f), mmap=True, weights_only=True, map_location="cpu")
        except Exception as e:  # safetensors/pickle raise their own types
            first = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
            raise LensLoadError(f"{f}: the weights file is truncated or corrupt ({first}); re-save or re-download "
                                f"it") from e


def fingerprint_model(model_dir: str | Path) -> ModelFingerprint:
    """The fingerprint of a saved HF model dir (safetensors or ``.bin``, sharded or not).

    Args:
        model_dir: A saved HF model dir with ``config.json`` and its weight files.

    Returns:
        A `ModelFingerprint` (architecture from ``config.json``, one hash per tensor).

    Raises:
        LensLoadError: the dir has no ``config.json`` or no weight files, or a weight file does not open.

    Example:
        >>> import tempfile
        >>> from transformers import GPT2Config, AutoModelForCausalLM
        >>> d = tempfile.mkdtemp()
        >>> tiny = GPT2Config(n_layer=1, n_embd=8, n_head=2, vocab_size=10)
        >>> AutoModelForCausalLM.from_config(tiny).save_pretrained(d)
        >>> fp = fingerprint_model(d)
        >>> fp.architecture, fp.difference(fingerprint_model(d))
        ('GPT2LMHeadModel', None)
    """
    d = Path(model_dir)
    if not (d / "config.json").is_file():
        raise LensLoadError(f"{d}: no config.json; not a saved HF model dir")
    config = json.loads((d / "config.json").read_text())
    check_weight_files(d)
    tensors = {name: _sample_hash(first, last, shape) for name, first, last, shape in _samples(d)}
    if not tensors:
        raise LensLoadError(f"{d}: no weight files (*.safetensors or *.bin) to fingerprint")
    arch = (config.get("architectures") or [config.get("model_type", "?")])[0]
    summary = {k: v for k, v in config.items() if k not in ("transformers_version", "dtype", "torch_dtype",
                                                             "_name_or_path", "use_cache")}
    return ModelFingerprint(architecture=arch, tensors=tensors, path=str(d.resolve()), config=summary)


def write_base_record(model_dir: str | Path, base_dir: str | Path) -> Path:
    """Write ``base_model.json`` into ``model_dir``: the fingerprint of the base it was trained from.

    The training stages call this for every adapter or fine-tuned model they save, so that `lens.load_model`
    can refuse the adapter on another base later.

    Args:
        model_dir: The adapter or model dir being saved (it must exist).
        base_dir: The saved HF model dir it was trained from.

    Returns:
        The path of the record written.

    Example:
        >>> import tempfile
        >>> from transformers import GPT2Config, AutoModelForCausalLM
        >>> base, adapter = tempfile.mkdtemp(), tempfile.mkdtemp()
        >>> tiny = GPT2Config(n_layer=1, n_embd=8, n_head=2, vocab_size=10)
        >>> AutoModelForCausalLM.from_config(tiny).save_pretrained(base)
        >>> write_base_record(adapter, base).name
        'base_model.json'
    """
    return atomic_write_json(Path(model_dir) / BASE_RECORD, fingerprint_model(base_dir).to_dict())


def read_base_record(model_dir: str | Path) -> ModelFingerprint | None:
    """The base fingerprint recorded beside an adapter or model, or ``None`` when it has no record.

    Args:
        model_dir: An adapter or model dir.

    Returns:
        The recorded `ModelFingerprint`, or ``None``.

    Raises:
        LensLoadError: the record exists but is not a lens base record.

    Example:
        >>> import tempfile
        >>> read_base_record(tempfile.mkdtemp()) is None
        True
    """
    path = Path(model_dir) / BASE_RECORD
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text())
        if data.get("format") != RECORD_FORMAT:
            raise ValueError(f"format {data.get('format')!r}")
        return ModelFingerprint.from_dict(data)
    except (ValueError, KeyError, TypeError) as e:
        raise LensLoadError(f"{path}: not a lens base record ({e}); delete it or rewrite it with "
                            f"lens.write_base_record") from e


def _weight_files(d: Path) -> list[Path]:
    files = sorted(d.glob("*.safetensors"))
    return files or sorted(p for p in d.glob("*.bin") if p.name != "training_args.bin")


def _samples(d: Path) -> Iterator[tuple[str, torch.Tensor, torch.Tensor, tuple[int, ...]]]:
    """(name, first row, last row, shape) for every tensor in the dir's weight files."""
    from safetensors import safe_open

    for f in _weight_files(d):
        if f.suffix == ".safetensors":
            with safe_open(str(f), "pt") as h:
                for name in h.keys():
                    sl = h.get_slice(name)
                    shape = tuple(sl.get_shape())
                    if len(shape) == 0:
                        t = h.get_tensor(name)
                        yield name, t, t, shape
                    else:
                        yield name, sl[0:1], sl[shape[0] - 1:shape[0]], shape
        else:
            for name, t in torch.load(str(f), mmap=True, weights_only=True, map_location="cpu").items():
                yield name, t[0:1] if t.ndim else t, t[-1:] if t.ndim else t, tuple(t.shape)


def _sample_hash(first: torch.Tensor, last: torch.Tensor, shape: tuple[int, ...]) -> str:
    h = hashlib.sha256(repr(shape).encode())
    for t in (first, last):
        h.update(t.detach().to(torch.float32).to(torch.bfloat16).reshape(-1).view(torch.int16).numpy().tobytes())
    return h.hexdigest()[:16]
