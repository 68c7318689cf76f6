"""Residual-stream activations for labelled texts: per text or per character span (e.g. every debate turn).

Reads ``blocks.{L}.hook_resid_post`` at a token rule (span end, span mean, or an index), batched with right
padding (causal, so real tokens never see pads) and stopping the forward pass after the last layer needed.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence, Union

import torch
from jaxtyping import Float, Int
from safetensors.torch import load_file
from torch import Tensor
from tqdm.auto import tqdm

from lens.debate_format import Transcript, training_text, turn_spans
from lens.errors import LensInputError
from lens.io import atomic_save_tensors, atomic_write_json

Position = Union[str, int]
POSITION_ALIASES = {"end": "end", "turn_end": "end", "last": "end", "mean": "mean", "turn_mean": "mean"}


def hook_name(layer: int) -> str:
    """Where lens reads and (unless told otherwise) writes: the residual stream after block ``layer``."""
    return f"blocks.{layer}.hook_resid_post"


def middle_layer(model) -> int:
    """The default layer where one is not given: the middle block (the paper's 15 of 32, 20 of 40)."""
    return model.cfg.n_layers // 2


def check_layer(model, layer: int) -> int:
    n = model.cfg.n_layers
    if not isinstance(layer, int) or not 0 <= layer < n:
        raise LensInputError(f"layer {layer!r} is out of range: this model has layers 0..{n - 1}")
    return layer


def resolve_layers(model, layers: int | Sequence[int] | None) -> list[int]:
    """``None`` → every layer; an int → that one; negative ints count from the end."""
    if layers is None:
        return list(range(model.cfg.n_layers))
    layers = [layers] if isinstance(layers, int) else list(layers)
    if not layers:
        raise LensInputError("layers is empty; pass None for every layer or a list of layer indices")
    return [check_layer(model, l + model.cfg.n_layers if isinstance(l, int) and l < 0 else l) for l in layers]


def normalize_position(position: Position) -> Position:
    if isinstance(position, int) and not isinstance(position, bool):
        return position
    if position in POSITION_ALIASES:
        return POSITION_ALIASES[position]
    raise LensInputError(f"position {position!r} is unknown; valid: 'turn_end'/'end', 'turn_mean'/'mean', "
                         f"or a token index within the span (e.g. -2)")


def resolve_prepend_bos(model, prepend_bos: bool | None) -> bool:
    """The explicit BOS decision: the caller's, else the model's recorded default (never TL's implicit one)."""
    if prepend_bos is None:
        prepend_bos = bool(model.cfg.default_prepend_bos)
    if prepend_bos and model.tokenizer.bos_token_id is None:
        raise LensInputError("prepend_bos=True but the tokenizer has no BOS token; pass prepend_bos=False")
    return prepend_bos


@dataclass
class ActivationSet:
    """Activations ``acts[i, n]`` at ``layers[i]`` for reading ``n``, with one label dict per reading."""

    acts: Float[Tensor, "layer n d_model"]
    layers: list[int]
    position: Position
    labels: list[dict] = field(default_factory=list)
    prepend_bos: bool = True

    @property
    def hook_names(self) -> list[str]:
        return [hook_name(l) for l in self.layers]

    def at(self, layer: int) -> Float[Tensor, "n d_model"]:
        """Activations at one layer (by model layer index, not by position in ``layers``)."""
        if layer not in self.layers:
            raise LensInputError(f"layer {layer} was not collected; collected: {self.layers}")
        return self.acts[self.layers.index(layer)]

    def column(self, key: str) -> list:
        return [lab.get(key) for lab in self.labels]

    def save(self, path: str | Path) -> Path:
        """Safetensors (the tensor) + JSON sidecar (layers, position, labels); both written atomically."""
        path = Path(path).with_suffix(".safetensors")
        atomic_save_tensors(path, {"acts": self.acts})
        atomic_write_json(path.with_suffix(".json"), {"layers": self.layers, "position": self.position,
                                                      "hook_names": self.hook_names, "labels": self.labels,
                                                      "prepend_bos": self.prepend_bos})
        return path

    @classmethod
    def load(cls, path: str | Path) -> "ActivationSet":
        path = Path(path).with_suffix(".safetensors")
        meta = json.loads(path.with_suffix(".json").read_text())
        return cls(acts=load_file(str(path))["acts"], layers=meta["layers"], position=meta["position"],
                   labels=meta["labels"], prepend_bos=meta["prepend_bos"])


def _tokenize(model, texts: Sequence[str], char_spans, prepend_bos: bool):
    """Token ids per text and, per text, the token index ranges covering each character span."""
    tok = model.tokenizer
    enc = tok(list(texts), add_special_tokens=False, return_offsets_mapping=True)
    shift = 1 if prepend_bos else 0
    ids, tok_spans = [], []
    for i, (text, row, offsets) in enumerate(zip(texts, enc["input_ids"], enc["offset_mapping"])):
        row = ([tok.bos_token_id] if prepend_bos else []) + list(row)
        if len(row) > model.cfg.n_ctx:
            raise LensInputError(f"text {i} has {len(row)} tokens, more than the model's n_ctx={model.cfg.n_ctx}; "
                                 f"shorten it or load the model with a larger n_ctx")
        spans = char_spans[i] if char_spans is not None else [(0, len(text))]
        per_text = []
        for start, end in spans:
            covered = [j + shift for j, (s, e) in enumerate(offsets) if e > start and s < end]
            if not covered:
                raise LensInputError(f"text {i}: character span ({start}, {end}) covers no token")
            per_text.append((covered[0], covered[-1] + 1))
        ids.append(row)
        tok_spans.append(per_text)
    return ids, tok_spans


def _read(resid: Float[Tensor, "batch pos d_model"], spans: list[tuple[int, int, int]],
          position: Position) -> Float[Tensor, "n d_model"]:
    """One vector per (row, start, end) token span, by the position rule."""
    out = []
    for row, start, end in spans:
        if position == "end":
            out.append(resid[row, end - 1])
        elif position == "mean":
            out.append(resid[row, start:end].mean(0))
        else:
            idx = position + (end if position < 0 else start)
            if not start <= idx < end:
                raise LensInputError(f"token index {position} is outside a span of {end - start} tokens")
            out.append(resid[row, idx])
    return torch.stack(out)


@torch.no_grad()
def collect_activations(model, texts: Sequence[str], *, layers: int | Sequence[int] | None = None,
                        position: Position = "end", char_spans: Sequence[Sequence[tuple[int, int]]] | None = None,
                        labels: Sequence[dict] | None = None, batch_size: int = 8, prepend_bos: bool | None = None,
                        out: str | Path | None = None, progress: bool = False) -> ActivationSet:
    """Residual activations of ``texts`` at ``layers``: one reading per character span (default: the whole text),
    taken at the span's last token, its mean, or a token index within it. ``out`` also saves them to disk."""
    if not texts:
        raise LensInputError("texts is empty; pass at least one text")
    layers = resolve_layers(model, layers)
    position = normalize_position(position)
    prepend_bos = resolve_prepend_bos(model, prepend_bos)
    if char_spans is not None and len(char_spans) != len(texts):
        raise LensInputError(f"char_spans has {len(char_spans)} entries for {len(texts)} texts; give one list each")
    ids, tok_spans = _tokenize(model, texts, char_spans, prepend_bos)
    n_read = sum(len(s) for s in tok_spans)
    if labels is not None and len(labels) != n_read:
        raise LensInputError(f"labels has {len(labels)} entries for {n_read} readings (one per span)")
    first = [0]
    for s in tok_spans:
        first.append(first[-1] + len(s))
    acts = torch.empty(len(layers), n_read, model.cfg.d_model, dtype=torch.float32)
    order = sorted(range(len(texts)), key=lambda i: len(ids[i]))
    pad = model.tokenizer.pad_token_id if model.tokenizer.pad_token_id is not None else 0
    for b in tqdm(range(0, len(order), batch_size), disable=not progress, desc="activations"):
        rows = order[b:b + batch_size]
        width = max(len(ids[i]) for i in rows)
        tokens: Int[Tensor, "batch pos"] = torch.full((len(rows), width), pad, dtype=torch.long)
        mask = torch.zeros(len(rows), width, dtype=torch.long)
        for r, i in enumerate(rows):
            tokens[r, :len(ids[i])] = torch.tensor(ids[i])
            mask[r, :len(ids[i])] = 1
        spans = [(r, s, e) for r, i in enumerate(rows) for s, e in tok_spans[i]]
        dest = torch.tensor([first[i] + j for i in rows for j in range(len(tok_spans[i]))])

        def saver(k: int):
            # keyed on the hook point asked for: the bridge reports its own names (blocks.L.hook_out)
            def save(resid, hook):
                acts[k, dest] = _read(resid, spans, position).float().cpu()
            return save

        with model.hooks(fwd_hooks=[(hook_name(l), saver(k)) for k, l in enumerate(layers)]):
            model(tokens.to(model.cfg.device), attention_mask=mask.to(model.cfg.device),
                  stop_at_layer=max(layers) + 1)
    result = ActivationSet(acts=acts, layers=layers, position=position, labels=list(labels or [{}] * n_read),
                           prepend_bos=prepend_bos)
    if out is not None:
        result.save(out)
    return result


def turn_labels(transcripts: Sequence[Transcript]) -> list[dict]:
    """One label per turn, in `turn_spans` order: transcript index, question id, round, agent, persona."""
    return [{"transcript": i, "question_id": t.id if t.id is not None else str(i), "round": s.turn.round,
             "agent": s.turn.agent, "persona": s.turn.persona or t.persona_of(s.turn.agent)}
            for i, t in enumerate(transcripts) for s in turn_spans(t)]


def turn_activations(model, transcripts: Sequence[Transcript], *, layers: int | Sequence[int] | None = None,
                     position: Position = "turn_end", batch_size: int = 8, prepend_bos: bool | None = None,
                     out: str | Path | None = None, progress: bool = False) -> ActivationSet:
    """Per-turn activations of whole debates (``training_text``), labelled by question, round, agent, persona."""
    if not transcripts:
        raise LensInputError("no transcripts given; pass a non-empty list of Transcript objects")
    texts = [training_text(t) for t in transcripts]
    spans = [[(s.start, s.end) for s in turn_spans(t)] for t in transcripts]
    return collect_activations(model, texts, layers=layers, position=position, char_spans=spans,
                               labels=turn_labels(transcripts), batch_size=batch_size, prepend_bos=prepend_bos,
                               out=out, progress=progress)


def resolve_transcripts(model, transcripts) -> tuple[list[Transcript], list[str]]:
    """Transcripts and where they came from: given objects, JSONL path(s), or (``None``) the ones the model was
    trained on according to its provenance."""
    from lens.debate_format import read_jsonl

    if transcripts is None:
        prov = getattr(model, "lens_provenance", None)
        paths = list(prov.transcripts) if prov is not None else []
        if not paths:
            raise LensInputError("this model records no training transcripts (its dir has no provenance.json with "
                                 "'transcripts'); pass transcripts=[...] or a JSONL path")
        transcripts = paths
    if isinstance(transcripts, (str, Path)):
        transcripts = [transcripts]
    transcripts = list(transcripts)
    if not transcripts:
        raise LensInputError("transcripts is empty; pass Transcript objects or JSONL paths")
    if all(isinstance(t, (str, Path)) for t in transcripts):
        sources = [str(Path(p).resolve()) for p in transcripts]
        return [t for p in transcripts for t in read_jsonl(p)], sources
    if not all(isinstance(t, Transcript) for t in transcripts):
        raise LensInputError("transcripts must be Transcript objects or JSONL paths, not a mix of other types")
    return transcripts, [f"<{len(transcripts)} in-memory transcripts>"]
