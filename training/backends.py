"""Where agent turns come from: a local HF model, an OpenAI-compatible endpoint, or the scripted teacher.

All three answer the same `AgentRequest`s with `AgentReply`s that carry token counts, so the debate runner and
Table 1 count every method's tokens the same way: input = the chat-templated prompt, output = the generated
tokens up to and including the stop token (never the padding a batch adds after it).
"""

from __future__ import annotations

import json
import os
import random
import urllib.error
import urllib.request
import warnings
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple, Protocol, Sequence

import torch
from tqdm.auto import tqdm
from transformers import AutoTokenizer, GenerationConfig, PreTrainedModel

from lens.debate_format import END_TAG
from training.errors import UserError
from training.modelio import load_causal_lm

# End-of-turn markers of the chat formats we meet (ours/Qwen, Llama 3, Qwen base); the eos is always added.
STOP_TOKENS = ("<|im_end|>", "<|eot_id|>", "<|endoftext|>", END_TAG)


@dataclass(frozen=True)
class AgentRequest:
    """One agent call: who speaks (persona), about what (question object), and the chat messages it sees.

    ``own``/``others`` are the round-1 texts a round-2 call revises (``None`` in round 1); the scripted teacher
    reads them, model backends read ``messages``.
    """

    persona: str
    question: object
    domain: str
    messages: list[dict]
    own: str | None = None
    others: list[str] | None = None


@dataclass(frozen=True)
class AgentReply:
    text: str
    input_tokens: int
    output_tokens: int


class Completion(NamedTuple):
    """A raw completion: text, prompt tokens, generated tokens (incl. the stop token) and the generated ids."""

    text: str
    input_tokens: int
    output_tokens: int
    ids: list[int]


class Backend(Protocol):
    def generate(self, requests: Sequence[AgentRequest], *, seed: int = 0) -> list[AgentReply]:
        """Answer every request.

        Args:
            requests: The agent calls.
            seed: The seed of any sampling.

        Returns:
            One `AgentReply` per request, in request order, with its token counts.

        Example:
            >>> backend.generate([request], seed=0)[0].output_tokens  # doctest: +SKIP
            31
        """
        ...


class BackendError(UserError, RuntimeError):
    """A backend that cannot be built or reached; the message names what and why."""


def chat_prompt(tokenizer, messages: list[dict]) -> str:
    """The chat-templated prompt text, ending with the assistant generation prompt.

    Args:
        tokenizer: A tokenizer with a chat template.
        messages: The chat messages (``role``, ``content``).

    Returns:
        The prompt text, as the model sees it before its reply.

    Raises:
        BackendError: the tokenizer has no chat template.

    Example:
        >>> from training.backends import chat_prompt
        >>> from training.tokenizer import train_tokenizer
        >>> tok = train_tokenizer(["What is 1+2?"], vocab_size=300)
        >>> print(chat_prompt(tok, [{"role": "user", "content": "What is 1+2?"}]))
        <|im_start|>user
        What is 1+2?<|im_end|>
        <|im_start|>assistant
        <BLANKLINE>
    """
    if tokenizer.chat_template is None:
        raise BackendError(f"tokenizer {tokenizer.name_or_path!r} has no chat template; chat backends need one")
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)


def count_chat_tokens(tokenizer, messages: list[dict]) -> int:
    """Tokens of the chat-templated prompt (the template writes any BOS itself).

    Args:
        tokenizer: A tokenizer with a chat template.
        messages: The chat messages.

    Returns:
        The number of input tokens a model backend sees for ``messages``.

    Raises:
        BackendError: the tokenizer has no chat template.

    Example:
        >>> from training.backends import count_chat_tokens
        >>> from training.tokenizer import train_tokenizer
        >>> tok = train_tokenizer(["What is 1+2?"], vocab_size=300)
        >>> count_chat_tokens(tok, [{"role": "user", "content": "What is 1+2?"}])
        25
    """
    return len(tokenizer(chat_prompt(tokenizer, messages), add_special_tokens=False)["input_ids"])


def load_model_dir(model_dir: str | Path, *, device: str = "cpu", dtype: torch.dtype = torch.float32
                   ) -> tuple[PreTrainedModel, object]:
    """A local model dir (full model, or a PEFT adapter dir, merged) on ``device`` in ``dtype`` and its tokenizer,
    in eval mode.

    Args:
        model_dir: A local HF model dir, or a PEFT adapter dir (merged into its base).
        device: Where the weights go.
        dtype: The weights' dtype.

    Returns:
        ``(model, tokenizer)``: the model in eval mode and the dir's tokenizer.

    Raises:
        BackendError: ``model_dir`` is not a directory.

    Example:
        >>> model, tok = load_model_dir("runs/toy/base")  # doctest: +SKIP
    """
    path = Path(model_dir)
    if not path.is_dir():
        raise BackendError(f"model dir {str(path)!r} does not exist; train or download the model first")
    return load_causal_lm(path, device=device, dtype=dtype).eval(), AutoTokenizer.from_pretrained(str(path))


class HFBackend:
    """Batched ``generate`` on a local HF model: chat requests (`generate`, `chat`) or plain-text prompts (`complete`).

    ``temperature`` 0 is greedy; otherwise sampling with ``top_p``; a ``model_dir`` is loaded on ``device`` in
    ``dtype``. Prompts are sorted by length before batching
    (less padding) and replies come back in request order. A prompt that fills the model's whole context gets an
    empty reply (0 output tokens) and a warning, so one rambling debate cannot stop an evaluation.
    """

    def __init__(self, model_dir: str | Path | None = None, *, model: PreTrainedModel | None = None, tokenizer=None,
                 max_new_tokens: int = 256, temperature: float = 0.0, top_p: float = 1.0, batch_size: int = 32,
                 progress: bool = False, device: str = "cpu", dtype: torch.dtype = torch.float32):
        if (model_dir is None) == (model is None):
            raise BackendError("HFBackend needs either model_dir or model (with tokenizer), not both or neither")
        if model_dir is not None:
            model, tokenizer = load_model_dir(model_dir, device=device, dtype=dtype)
        elif tokenizer is None:
            raise BackendError("HFBackend(model=...) also needs tokenizer=")
        self.model, self.tokenizer = model.eval(), tokenizer
        self.max_new_tokens, self.temperature, self.top_p = max_new_tokens, temperature, top_p
        self.batch_size, self.progress = batch_size, progress
        vocab = tokenizer.get_vocab()
        eos = model.generation_config.eos_token_id
        eos = tokenizer.eos_token_id if eos is None else eos
        eos_ids = eos if isinstance(eos, list) else [eos]
        self.stop_ids = sorted({*(i for i in eos_ids if i is not None), *(vocab[t] for t in STOP_TOKENS if t in vocab)})
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else self.stop_ids[0]
        self._hidden_ids = {self.pad_id, *self.stop_ids} - {vocab.get(END_TAG)}
        self.n_ctx = getattr(model.config, "max_position_embeddings", None)

    @property
    def name(self) -> str:
        return str(getattr(self.model, "name_or_path", "") or type(self.model).__name__)

    def generate(self, requests: Sequence[AgentRequest], *, seed: int = 0) -> list[AgentReply]:
        """Chat replies to ``requests`` (their ``messages``), as `AgentReply`s.

        Args:
            requests: The agent calls; only their ``messages`` are read.
            seed: The torch seed set before generating.

        Returns:
            One `AgentReply` per request, in request order.

        Example:
            >>> HFBackend("runs/toy/base").generate([request])[0].text  # doctest: +SKIP
            '2*3=6, 5*6=30. 1+6=7, 7+4=11, 11-30=-19. The answer is \\boxed{-19}.'
        """
        out = self.chat([r.messages for r in requests], seed=seed)
        return [AgentReply(c.text, c.input_tokens, c.output_tokens) for c in out]

    def chat(self, conversations: Sequence[list[dict]], *, seed: int = 0,
             max_new_tokens: int | None = None) -> list[Completion]:
        """Assistant replies to chat ``conversations``; special tokens are dropped from the text.

        Args:
            conversations: One list of chat messages per reply.
            seed: The torch seed set before generating.
            max_new_tokens: The cap on new tokens for this call (``None``: the backend's ``max_new_tokens``).

        Returns:
            One `Completion` per conversation, in order (empty, 0 output tokens, for a prompt that fills the context).

        Example:
            >>> backend = HFBackend("runs/toy/base")  # doctest: +SKIP
            >>> backend.chat([round1_messages("neutral", "1+2*3+4-5*6")])[0].output_tokens  # doctest: +SKIP
            31
        """
        prompts = [self.tokenizer(chat_prompt(self.tokenizer, m), add_special_tokens=False)["input_ids"]
                   for m in conversations]
        return self._run(prompts, seed, max_new_tokens, keep_special=False)

    def complete(self, prompts: Sequence[str], max_new_tokens: int | None = None, *, seed: int = 0) -> list[Completion]:
        """Continuations of plain-text ``prompts`` (no chat template), debate tags kept in the text.

        Args:
            prompts: The plain-text prompts (tokenized with the tokenizer's special tokens, e.g. a BOS).
            max_new_tokens: The cap on new tokens for this call (``None``: the backend's ``max_new_tokens``).
            seed: The torch seed set before generating.

        Returns:
            One `Completion` per prompt, in order.

        Example:
            >>> backend = HFBackend("runs/toy/sft/main")  # doctest: +SKIP
            >>> backend.complete([prompt_text("1+2*3+4-5*6")])[0].text[:30]  # doctest: +SKIP
            '<|Round 1 - Initial Solutions|'
        """
        ids = [self.tokenizer(p)["input_ids"] for p in prompts]
        return self._run(ids, seed, max_new_tokens, keep_special=True)

    def _run(self, prompts: list[list[int]], seed: int, max_new_tokens: int | None,
             keep_special: bool) -> list[Completion]:
        max_new = max_new_tokens or self.max_new_tokens
        room = [max_new if self.n_ctx is None else min(max_new, self.n_ctx - len(p)) for p in prompts]
        results: list[Completion | None] = [None] * len(prompts)
        for i, p in enumerate(prompts):
            if room[i] < 1:
                results[i] = Completion("", len(p), 0, [])
        tight = [i for i in range(len(prompts)) if 0 < room[i] < max_new]
        if tight or any(results):
            warnings.warn(f"of {len(prompts)} prompts, {len(tight)} leave fewer than {max_new} new tokens in the "
                          f"model's context of {self.n_ctx} (capped) and {sum(map(bool, results))} leave none "
                          "(empty replies)", stacklevel=3)
        batches = _batches(sorted((i for i in range(len(prompts)) if room[i] > 0), key=lambda i: len(prompts[i])),
                           room, self.batch_size, slack=max(1, max_new // 8))
        torch.manual_seed(seed)
        for idx in tqdm(batches, desc="generate", disable=not self.progress, leave=False):
            cap = min(room[i] for i in idx)
            for i, c in zip(idx, self._batch([prompts[i] for i in idx], cap, keep_special)):
                results[i] = c
        return results  # type: ignore[return-value]

    def fits(self, n_prompt_tokens: int) -> bool:
        """Whether a prompt of this length leaves room for at least one new token in the model's context.

        Args:
            n_prompt_tokens: The prompt's length in tokens.

        Returns:
            True when it is shorter than the model's context (always, for a model that states none).

        Example:
            >>> HFBackend("runs/toy/base").fits(100)  # doctest: +SKIP
            True
        """
        return self.n_ctx is None or n_prompt_tokens < self.n_ctx

    @torch.no_grad()
    def _batch(self, prompts: list[list[int]], max_new: int, keep_special: bool) -> list[Completion]:
        width = max(len(p) for p in prompts)
        input_ids = torch.tensor([[self.pad_id] * (width - len(p)) + p for p in prompts], device=self.model.device)
        mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts], device=self.model.device)
        sample = self.temperature > 0
        config = GenerationConfig(max_new_tokens=max_new, do_sample=sample,
                                  temperature=self.temperature if sample else None,
                                  top_p=self.top_p if sample else None,
                                  eos_token_id=self.stop_ids, pad_token_id=self.pad_id,
                                  cache_implementation="static")  # a growing cache re-copies itself every step
        out = self.model.generate(input_ids=input_ids, attention_mask=mask, generation_config=config)
        return [self._completion(len(p), row[width:].tolist(), keep_special) for p, row in zip(prompts, out)]

    def _completion(self, n_in: int, gen: list[int], keep_special: bool) -> Completion:
        stop = next((k for k, t in enumerate(gen) if t in self.stop_ids), None)
        ids = gen if stop is None else gen[:stop + 1]
        if keep_special:
            text = self.tokenizer.decode([t for t in ids if t not in self._hidden_ids], skip_special_tokens=False)
        else:
            text = self.tokenizer.decode(ids, skip_special_tokens=True)
        return Completion(text.strip(), n_in, len(ids), ids)


def _batches(order: list[int], room: list[int], size: int, slack: int) -> list[list[int]]:
    """Consecutive batches of ``order`` (sorted by prompt length) of at most ``size`` prompts, a new batch also
    starting where room for new tokens drops more than ``slack`` below the batch's first prompt (a batch shares
    the smallest room of its prompts, so a capped prompt must not shorten much roomier ones)."""
    batches: list[list[int]] = []
    for i in order:
        if batches and len(batches[-1]) < size and room[i] >= room[batches[-1][0]] - slack:
            batches[-1].append(i)
        else:
            batches.append([i])
    return batches


class OpenAIBackend:
    """An OpenAI-compatible ``/v1/chat/completions`` endpoint (vLLM, `training.serve`, or a hosted API).

    Token counts come from the response's ``usage``; when a server omits it, ``tokenizer`` counts them. The API
    key is read from the environment variable ``api_key_env`` at each request and is never stored.
    """

    def __init__(self, base_url: str, model: str, *, api_key_env: str = "OPENAI_API_KEY", tokenizer=None,
                 max_new_tokens: int = 256, temperature: float = 0.0, top_p: float = 1.0, concurrency: int = 4,
                 timeout_s: float = 120.0):
        self.url = base_url.rstrip("/") + "/chat/completions"
        self.model, self.api_key_env, self.tokenizer = model, api_key_env, tokenizer
        self.max_new_tokens, self.temperature, self.top_p = max_new_tokens, temperature, top_p
        self.concurrency, self.timeout_s = concurrency, timeout_s

    def generate(self, requests: Sequence[AgentRequest], *, seed: int = 0) -> list[AgentReply]:
        """Replies to ``requests`` from the endpoint, ``concurrency`` requests at a time; request ``i`` is sent with
        seed ``seed + i``.

        Args:
            requests: The agent calls; only their ``messages`` are sent.
            seed: The first request's seed.

        Returns:
            One `AgentReply` per request, in order; token counts from the response's ``usage``, else from ``tokenizer``.

        Raises:
            BackendError: an HTTP error, an unreachable endpoint or a reply that is not JSON, or a reply without
                ``usage`` when no ``tokenizer`` was given.

        Example:
            >>> backend = OpenAIBackend("http://127.0.0.1:8000/v1", "local")  # doctest: +SKIP
            >>> backend.generate([request])[0].input_tokens  # doctest: +SKIP
            57
        """
        with ThreadPoolExecutor(self.concurrency) as pool:
            return list(pool.map(lambda ir: self._one(ir[1].messages, seed + ir[0]), enumerate(requests)))

    def _one(self, messages: list[dict], seed: int) -> AgentReply:
        body = {"model": self.model, "messages": messages, "max_tokens": self.max_new_tokens,
                "temperature": self.temperature, "top_p": self.top_p, "seed": seed}
        headers = {"Content-Type": "application/json"}
        key = os.environ.get(self.api_key_env)
        if key:
            headers["Authorization"] = f"Bearer {key}"
        req = urllib.request.Request(self.url, data=json.dumps(body).encode(), headers=headers, method="POST")
        try:
            with urllib.request.urlopen(req, timeout=self.timeout_s) as resp:
                data = json.loads(resp.read())
        except urllib.error.HTTPError as e:
            raise BackendError(f"{self.url} answered HTTP {e.code}: {_error_message(e.read())}") from None
        except (urllib.error.URLError, TimeoutError, json.JSONDecodeError) as e:
            raise BackendError(f"cannot get a chat completion from {self.url}: {e}") from None
        text = data["choices"][0]["message"]["content"] or ""
        usage = data.get("usage") or {}
        if "prompt_tokens" in usage and "completion_tokens" in usage:
            return AgentReply(text, int(usage["prompt_tokens"]), int(usage["completion_tokens"]))
        if self.tokenizer is None:
            raise BackendError(f"{self.url} returned no usage; pass tokenizer= to OpenAIBackend to count tokens")
        return AgentReply(text, count_chat_tokens(self.tokenizer, messages), _count_output(self.tokenizer, text))


def _error_message(body: bytes) -> str:
    """The ``error.message`` of an OpenAI-style error body, else the body's start."""
    try:
        return str(json.loads(body)["error"]["message"])
    except (ValueError, KeyError, TypeError):
        return body[:300].decode(errors="replace")


def _count_output(tokenizer, text: str) -> int:
    """Tokens of a reply as a model would emit it: its text plus one end-of-turn token."""
    return len(tokenizer(text, add_special_tokens=False)["input_ids"]) + 1


class TeacherBackend:
    """The scripted teacher agents (`training.teacher.Teacher`) behind the backend interface.

    Tokens are counted with ``tokenizer`` exactly as a model backend would see the same messages: the
    chat-templated prompt in, the reply plus one end-of-turn token out.
    """

    def __init__(self, teacher, tokenizer):
        self.teacher, self.tokenizer = teacher, tokenizer

    def generate(self, requests: Sequence[AgentRequest], *, seed: int = 0) -> list[AgentReply]:
        """The teacher's turns for ``requests``, written in order with one ``random.Random(seed)``.

        Args:
            requests: The agent calls; the teacher reads ``persona``, ``question``, ``own`` and ``others``, the
                token counts ``messages``.
            seed: The seed of the teacher's random choices.

        Returns:
            One `AgentReply` per request, in order.

        Example:
            >>> from training.backends import AgentRequest, TeacherBackend
            >>> from training.prompts import round1_messages
            >>> from training.tasks import ArithmeticProblem
            >>> from training.teacher import Teacher
            >>> from training.tokenizer import train_tokenizer
            >>> p = ArithmeticProblem.from_operands((1, 2, 3, 4, 5, 6))
            >>> backend = TeacherBackend(Teacher(), train_tokenizer([p.question], vocab_size=300))
            >>> request = AgentRequest("neutral", p, "arithmetic", round1_messages("neutral", p.question))
            >>> print(backend.generate([request])[0].text)
            2*3=6, 5*6=30. 1+6=7, 7+4=11, 11-30=-19. The answer is \\boxed{-19}.
        """
        rng = random.Random(seed)
        replies = []
        for r in requests:
            text = self.teacher.respond(r.persona, r.question, own=r.own, others=r.others, rng=rng)
            replies.append(AgentReply(text, count_chat_tokens(self.tokenizer, r.messages),
                                      _count_output(self.tokenizer, text)))
        return replies
