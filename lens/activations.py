"""Activations for labelled texts: per text or per character span (e.g. every debate turn), at any site.

Reads ``blocks.{L}.hook_{site}`` (default ``resid_post``; see `lens.sites`) at a token rule per span (span end,
span mean, or an index), batched with right padding (causal, so real tokens never see pads) and stopping the
forward pass after the last layer needed. Collect once, then fit as often as you like (`lens.fitting`).
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
from lens.sites import DEFAULT_SITE, check_site, hook_name, resolve_layers, site_hook

Position = Union[str, int]
POSITION_ALIASES = {"end": "end", "turn_end": "end", "last": "end", "mean": "mean", "turn_mean": "mean"}


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


class LabelledReadings:
    """What a result with one label dict per reading (``labels``) offers: its labels by key."""

    labels: list[dict]

    def column(self, key: str) -> list:
        """One label of every reading.

        Args:
            key: A label key (``"agent"``, ``"round"``, ``"persona"``, ...).

        Returns:
            Its value per reading, in reading order (``None`` where a reading has no such label).

        Example:
            >>> acts.column("agent")[:4]  # doctest: +SKIP
            [1, 2, 3, 1]
        """
        return [lab.get(key) for lab in self.labels]


@dataclass
class ActivationSet(LabelledReadings):
    """Activations ``acts[i, n]`` at ``layers[i]`` for reading ``n``, with one label dict per reading.

    Collect once (`collect_activations`, `turn_activations`, `contrast_activations`), then fit as often as you like:
    `lens.fit_agent_subspace`, `lens.find_agent_subspace`, `lens.probe_layers`, `lens.pca_projection` and
    `lens.contrastive_direction` all take an ``ActivationSet`` in place of a model.

    Attributes:
        acts: ``[len(layers), n_readings, d_model]`` float32 activations.
        layers: Model layer indices (non-negative) in the order of ``acts``.
        position: The default token rule ('end', 'mean' or a token index); spans read by another rule carry it in
            their label's ``"position"``.
        labels: One dict per reading. Every reading has ``"transcript"`` (the index of the text it came from,
            unless the caller named its own); debate turns also have question_id, round, agent, persona.
        prepend_bos: Whether a BOS token was prepended.
        site: The site read (see `lens.sites`), the same for every layer.
        n_layers: The model's layer count (so that negative layer indices mean what they mean on the model).
        provenance: The model the readings came from and the texts' source.
    """

    acts: Float[Tensor, "layer n d_model"]
    layers: list[int]
    position: Position
    labels: list[dict] = field(default_factory=list)
    prepend_bos: bool = True
    site: str = DEFAULT_SITE
    n_layers: int | None = None
    provenance: dict = field(default_factory=dict)

    @property
    def hook_names(self) -> list[str]:
        return [hook_name(l, self.site) for l in self.layers]

    def layer_index(self, layer: int) -> int:
        """A model layer index (``-1`` = the model's last layer) as a non-negative one that was collected.

        Args:
            layer: A model layer index; negative ones count from the model's last layer.

        Returns:
            The non-negative index.

        Raises:
            LensInputError: the layer was not collected, or it is negative and the model's layer count is unknown.

        Example:
            >>> acts.layer_index(-1)  # doctest: +SKIP
            3
        """
        if isinstance(layer, int) and not isinstance(layer, bool) and layer < 0:
            if self.n_layers is None:
                raise LensInputError(f"layer {layer} counts from the end, but these activations do not record the "
                                     f"model's layer count; use one of the collected layers {self.layers}")
            layer += self.n_layers
        if layer not in self.layers:
            raise LensInputError(f"layer {layer} was not collected; collected: {self.layers}")
        return layer

    def select_layers(self, layers: int | Sequence[int] | None) -> list[int]:
        """Collected layers named by ``layers``.

        Args:
            layers: One layer, several, or ``None`` for every collected layer; negatives count from the model's end.

        Returns:
            Non-negative layer indices, in the order given.

        Raises:
            LensInputError: ``layers`` is empty or names a layer that was not collected.

        Example:
            >>> acts.select_layers([1, -1])  # doctest: +SKIP
            [1, 3]
        """
        if layers is None:
            return list(self.layers)
        layers = [layers] if isinstance(layers, int) else list(layers)
        if not layers:
            raise LensInputError("layers is empty; pass None for every collected layer or a list of them")
        return [self.layer_index(l) for l in layers]

    def at(self, layer: int) -> Float[Tensor, "n d_model"]:
        """Activations at one layer.

        Args:
            layer: A model layer index (not a position in ``layers``); negatives count from the model's end.

        Returns:
            ``[n_readings, d_model]`` activations.

        Example:
            >>> acts.at(2).shape  # doctest: +SKIP
            torch.Size([120, 128])
        """
        return self.acts[self.layers.index(self.layer_index(layer))]

    def save(self, path: str | Path) -> Path:
        """Safetensors (the tensor) + JSON sidecar (layers, site, position, labels); both written atomically.

        Args:
            path: Where to write; the suffix becomes ``.safetensors`` and the sidecar ``.json``.

        Returns:
            The ``.safetensors`` path (`ActivationSet.load` reads it back).

        Example:
            >>> acts.save("runs/acts/main")  # doctest: +SKIP
            PosixPath('runs/acts/main.safetensors')
        """
        path = Path(path).with_suffix(".safetensors")
        atomic_save_tensors(path, {"acts": self.acts})
        atomic_write_json(path.with_suffix(".json"), {"layers": self.layers, "position": self.position,
                                                      "hook_names": self.hook_names, "labels": self.labels,
                                                      "prepend_bos": self.prepend_bos, "site": self.site,
                                                      "n_layers": self.n_layers, "provenance": self.provenance})
        return path

    @classmethod
    def load(cls, path: str | Path) -> "ActivationSet":
        """Read what `save` wrote (files saved before sites existed read as ``resid_post``)."""
        path = Path(path).with_suffix(".safetensors")
        if not path.is_file() or not path.with_suffix(".json").is_file():
            raise LensInputError(f"{path}: no saved activations there (need {path.name} and its .json sidecar)")
        meta = json.loads(path.with_suffix(".json").read_text())
        return cls(acts=load_file(str(path))["acts"], layers=meta["layers"], position=meta["position"],
                   labels=meta["labels"], prepend_bos=meta["prepend_bos"], site=meta.get("site", DEFAULT_SITE),
                   n_layers=meta.get("n_layers"), provenance=meta.get("provenance", {}))


Span = Union[tuple[int, int], tuple[int, int, Position]]


def _tokenize(model, texts: Sequence[str], char_spans, prepend_bos: bool):
    """Token ids per text and, per text, the (start, end, rule) token ranges covering each character span."""
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
        if not spans:
            raise LensInputError(f"text {i} has an empty span list; give at least one (start, end) span per text, "
                                 f"or char_spans=None to read each whole text")
        per_text = []
        for span in spans:
            if len(span) not in (2, 3):
                raise LensInputError(f"text {i}: span {span!r} must be (start, end) or (start, end, position)")
            start, end = span[0], span[1]
            rule = normalize_position(span[2]) if len(span) == 3 else None
            covered = [j + shift for j, (s, e) in enumerate(offsets) if e > start and s < end]
            if not covered:
                raise LensInputError(f"text {i}: character span ({start}, {end}) covers no token")
            per_text.append((covered[0], covered[-1] + 1, rule))
        ids.append(row)
        tok_spans.append(per_text)
    return ids, tok_spans


def _read(resid: Float[Tensor, "batch pos d_model"], spans: list[tuple[int, int, int, Position]]
          ) -> Float[Tensor, "n d_model"]:
    """One vector per (row, start, end, rule) token span."""
    out = []
    for row, start, end, position in spans:
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


def model_provenance(model) -> dict:
    """What lens knows about where ``model`` came from (path, adapter, weights fingerprint, backend)."""
    prov = getattr(model, "lens_provenance", None)
    return {} if prov is None else {"model_path": prov.path, "adapter": prov.adapter,
                                    "model_fingerprint": prov.fingerprint, "backend": prov.backend}


@torch.no_grad()
def collect_activations(model, texts: Sequence[str], *, layers: int | Sequence[int] | None = None,
                        position: Position = "end", char_spans: Sequence[Sequence[Span]] | None = None,
                        labels: Sequence[dict] | None = None, site: str = DEFAULT_SITE, batch_size: int = 8,
                        prepend_bos: bool | None = None, out: str | Path | None = None,
                        progress: bool = False, backend: str = "auto") -> ActivationSet:
    """Activations of any texts at ``layers`` and ``site``: one reading per labelled character span.

    This is the bring-your-own-data entry point: any text, any spans, any labels. Fit on the result with
    `lens.fit_agent_subspace` (labels need ``"agent"``; readings are compared within the same ``"transcript"``
    and ``"round"``), `lens.probe_layers` (any label key) or `lens.pca_projection`.

    Args:
        model: A TransformerLens model from `lens.load_model`.
        texts: The texts, read whole (no chat template is applied).
        layers: Layer indices (negatives count from the end); ``None`` for every layer.
        position: Token rule for spans that do not name their own: ``"end"`` (last token of the span),
            ``"mean"`` (mean over the span's tokens) or an int index within the span (``-2``: second to last).
        char_spans: Per text, a non-empty list of ``(start, end)`` or ``(start, end, position)`` character spans
            (``end`` exclusive); ``None`` reads each whole text once.
        labels: One dict per span, in order; ``"transcript"`` defaults to the text's index.
        site: Where to read: ``"resid_pre"``, ``"resid_mid"``, ``"resid_post"``, ``"attn_out"``, ``"mlp_out"``.
        batch_size: Texts per forward pass.
        prepend_bos: Whether to prepend BOS; ``None`` uses the model's default.
        out: Also save the result there (`ActivationSet.save`).
        progress: Show a progress bar.
        backend: ``"hooked"`` runs TransformerLens; ``"hf"`` runs the HF twin ``load_model(..., keep_hf=True)``
            kept, with forward hooks on its decoder blocks, stopping after the last layer read (HF's SDPA attention
            is faster than TransformerLens' on CPU; ``resid_post`` of RMSNorm models only, where both give the same
            residual); ``"auto"`` takes ``"hf"`` when it applies.

    Returns:
        An `ActivationSet` with one reading per span, float32, on the CPU.

    Example:
        >>> texts = ["Alice: I agree. Bob: I object!", "Alice: Fine. Bob: No way!"]
        >>> spans = [[(0, 16, "end"), (17, len(texts[0]), "mean")], [(0, 12), (13, len(texts[1]))]]
        >>> labs = [{"agent": 1}, {"agent": 2}, {"agent": 1}, {"agent": 2}]
        >>> acts = lens.collect_activations(model, texts, char_spans=spans, labels=labs, layers=-1)  # doctest: +SKIP
        >>> acts.acts.shape  # doctest: +SKIP
        torch.Size([1, 4, 64])
    """
    if isinstance(texts, str):
        raise LensInputError("texts is a single string; pass a list of texts (e.g. [text])")
    if not texts:
        raise LensInputError("texts is empty; pass at least one text")
    layers = resolve_layers(model, layers)
    names = [site_hook(model, l, check_site(site)) for l in layers]
    hf = hf_reader(model, site, backend)
    position = normalize_position(position)
    prepend_bos = resolve_prepend_bos(model, prepend_bos)
    if char_spans is not None and len(char_spans) != len(texts):
        raise LensInputError(f"char_spans has {len(char_spans)} entries for {len(texts)} texts; give one list each")
    ids, tok_spans = _tokenize(model, texts, char_spans, prepend_bos)
    n_read = sum(len(s) for s in tok_spans)
    if labels is not None and len(labels) != n_read:
        raise LensInputError(f"labels has {len(labels)} entries for {n_read} readings (one per span)")
    text_of = [i for i, s in enumerate(tok_spans) for _ in s]
    rules = [rule for s in tok_spans for _, _, rule in s]
    labels = [{"transcript": t, **(lab or {}), **({"position": r} if r is not None else {})}
              for t, lab, r in zip(text_of, labels or [{}] * n_read, rules)]
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
        spans = [(r, s, e, rule if rule is not None else position) for r, i in enumerate(rows)
                 for s, e, rule in tok_spans[i]]
        dest = torch.tensor([first[i] + j for i in rows for j in range(len(tok_spans[i]))])

        def saver(k: int):  # keyed on the hook point, not on the name it reports (the bridge reports its own)
            def save(resid, hook):
                acts[k, dest] = _read(resid, spans).float().cpu()
            return save

        if hf is not None:
            _hf_forward(hf, tokens, mask, {layer: saver(k) for k, layer in enumerate(layers)})
            continue
        with model.hooks(fwd_hooks=[(name, saver(k)) for k, name in enumerate(names)]):
            model(tokens.to(model.cfg.device), attention_mask=mask.to(model.cfg.device),
                  stop_at_layer=max(layers) + 1)
    result = ActivationSet(acts=acts, layers=layers, position=position, labels=labels, prepend_bos=prepend_bos,
                           site=site, n_layers=model.cfg.n_layers,
                           provenance={**model_provenance(model), "n_texts": len(texts)})
    if out is not None:
        result.save(out)
    return result


def decoder_layers(hf) -> Sequence[torch.nn.Module]:
    """The decoder blocks of an HF causal LM (``model.layers`` for Llama-family models, ``transformer.h`` for
    GPT-2): each block's output is TransformerLens' ``blocks.L.hook_resid_post``."""
    inner = hf.base_model
    layers = getattr(inner, "layers", None) or getattr(inner, "h", None)
    if layers is None:
        raise LensInputError(f"cannot find the decoder blocks of {type(hf).__name__}; use backend='hooked'")
    return layers


RUN_BACKENDS = ("auto", "hooked", "hf")


def hf_reader(model, site: str, backend: str):
    """The HF twin to read ``site`` from, or ``None`` for TransformerLens (see `collect_activations`)."""
    if backend not in RUN_BACKENDS:
        raise LensInputError(f"backend {backend!r} is unknown; valid: {', '.join(map(repr, RUN_BACKENDS))}")
    if backend == "hooked":
        return None
    twin = getattr(model, "lens_hf", None)
    why = ("the model has no HF twin (load it with lens.load_model(..., keep_hf=True))" if twin is None else
           f"its normalization is {model.cfg.normalization_type} (TransformerLens centres the residual of "
           f"LayerNorm models, HF does not)" if str(model.cfg.normalization_type).startswith("LN") else
           f"it reads or writes a site other than 'resid_post' ({site!r}), the only site an HF block exposes"
           if site != "resid_post" else None)
    if why is not None:
        if backend == "hf":
            raise LensInputError(f"backend='hf' cannot be used: {why}; use backend='hooked' or 'auto'")
        return None
    return twin.model


class _Stop(Exception):
    """Raised by the last block read, so the HF forward stops there."""


def _hf_forward(hf, tokens: Int[Tensor, "batch pos"], mask: Int[Tensor, "batch pos"], savers: dict) -> None:
    """Run ``hf`` on ``tokens`` with ``savers[layer](resid, None)`` hooked on each block's output, up to the last
    layer in ``savers``."""
    blocks, last = decoder_layers(hf), max(savers)

    def hook_for(layer: int):
        def hook(module, args, output):
            savers[layer](output[0] if isinstance(output, tuple) else output, None)
            if layer == last:
                raise _Stop
        return hook

    device = next(hf.parameters()).device
    handles = [blocks[layer].register_forward_hook(hook_for(layer)) for layer in savers]
    try:
        hf(input_ids=tokens.to(device), attention_mask=mask.to(device), use_cache=False)
    except _Stop:
        pass
    finally:
        for h in handles:
            h.remove()


def turn_labels(transcripts: Sequence[Transcript]) -> list[dict]:
    """One label per turn, in `turn_spans` order: transcript index, question id, round, agent, persona."""
    return [{"transcript": i, "question_id": t.id if t.id is not None else str(i), "round": s.turn.round,
             "agent": s.turn.agent, "persona": s.turn.persona or t.persona_of(s.turn.agent)}
            for i, t in enumerate(transcripts) for s in turn_spans(t)]


def turn_activations(model, transcripts, *, layers: int | Sequence[int] | None = None,
                     position: Position = "turn_end", site: str = DEFAULT_SITE, batch_size: int = 8,
                     prepend_bos: bool | None = None, out: str | Path | None = None,
                     progress: bool = False) -> ActivationSet:
    """Per-turn activations of whole debates (``training_text``), labelled by question, round, agent, persona.

    Args:
        model: A TransformerLens model from `lens.load_model`.
        transcripts: `Transcript` objects, JSONL path(s), or ``None`` for the debates the model was trained on
            (from its provenance).
        layers: Layer indices (negatives count from the end); ``None`` for every layer.
        position: ``"turn_end"``, ``"turn_mean"`` or a token index within each turn.
        site: Where to read (see `lens.sites`).
        batch_size: Debates per forward pass.
        prepend_bos: Whether to prepend BOS; ``None`` uses the model's default.
        out: Also save the result there.
        progress: Show a progress bar.

    Returns:
        An `ActivationSet` with one reading per turn; its provenance names the transcripts.

    Example:
        >>> acts = lens.turn_activations(model, "debates.jsonl", layers=[0, -1])  # doctest: +SKIP
        >>> subs = {a: lens.fit_agent_subspace(acts, a) for a in (1, 2, 3)}  # doctest: +SKIP
    """
    transcripts, sources = resolve_transcripts(model, transcripts)
    texts = [training_text(t) for t in transcripts]
    spans = [[(s.start, s.end) for s in turn_spans(t)] for t in transcripts]
    acts = collect_activations(model, texts, layers=layers, position=position, char_spans=spans,
                               labels=turn_labels(transcripts), site=site, batch_size=batch_size,
                               prepend_bos=prepend_bos, progress=progress)
    acts.provenance.update(transcripts=sources, n_transcripts=len(transcripts))
    if out is not None:
        acts.save(out)
    return acts


def contrast_activations(model, pos_texts: Sequence[str], neg_texts: Sequence[str], *,
                         layers: int | Sequence[int] | None = None, position: Position = -2,
                         site: str = DEFAULT_SITE, batch_size: int = 8, prepend_bos: bool | None = None,
                         progress: bool = False) -> ActivationSet:
    """Activations of contrast pairs: ``pos_texts[i]`` and ``neg_texts[i]`` form pair ``i``.

    Args:
        model: A TransformerLens model.
        pos_texts: Texts showing the behaviour.
        neg_texts: The same number of texts without it, in matching order.
        layers: Layer indices (negatives count from the end); ``None`` for every layer.
        position: Token rule per text (default ``-2``, the paper's system-prompt read).
        site: Where to read (see `lens.sites`).
        batch_size: Texts per forward pass.
        prepend_bos: Whether to prepend BOS; ``None`` uses the model's default.
        progress: Show a progress bar.

    Returns:
        An `ActivationSet` labelled ``{"transcript": i, "contrast": "pos" | "neg"}`` (``transcript`` = pair index),
        ready for `lens.contrastive_direction`.

    Example:
        >>> acts = lens.contrast_activations(model, ["I hate it"], ["I love it"], layers=-1)  # doctest: +SKIP
        >>> lens.contrastive_direction(acts).layer  # doctest: +SKIP
        2
    """
    if isinstance(pos_texts, str) or isinstance(neg_texts, str):
        raise LensInputError("pos_texts and neg_texts must be lists of texts, not single strings")
    if not pos_texts or not neg_texts:
        raise LensInputError("contrast pairs need at least one positive and one negative text")
    if len(pos_texts) != len(neg_texts):
        raise LensInputError(f"contrast pairs need as many negative as positive texts: got {len(pos_texts)} "
                             f"positive and {len(neg_texts)} negative")
    labels = [{"transcript": i, "contrast": side} for side in ("pos", "neg") for i in range(len(pos_texts))]
    return collect_activations(model, [*pos_texts, *neg_texts], layers=layers, position=position, labels=labels,
                               site=site, batch_size=batch_size, prepend_bos=prepend_bos, progress=progress)


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
        for p in transcripts:
            if not Path(p).is_file():
                shown = str(p) if len(str(p)) <= 60 else str(p)[:57] + "..."
                raise LensInputError(f"transcripts {shown!r} is not a path to an existing file; pass JSONL file "
                                     f"paths or Transcript objects (text is never read as a path)")
        sources = [str(Path(p).resolve()) for p in transcripts]
        return [t for p in transcripts for t in read_jsonl(p)], sources
    if not all(isinstance(t, Transcript) for t in transcripts):
        raise LensInputError("transcripts must be Transcript objects or JSONL paths, not a mix of other types")
    return transcripts, [f"<{len(transcripts)} in-memory transcripts>"]
