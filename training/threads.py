"""One thread policy for the whole ``latent-agents`` CLI: training, evaluation and the experiments.

Applied once at CLI start, before torch is imported, because OpenMP reads its settings when torch loads it:

* ``OMP_WAIT_POLICY=PASSIVE``: OpenMP threads sleep at a barrier instead of spinning. Beside one CPU-bound
  process a toy training step (2 threads, 2 cores) slowed 3.0× with the spinning default and 1.5× with this
  (issue 12); ``benchmarks/bench_threads.py`` measures it again.
* ``TOKENIZERS_PARALLELISM=false``: no tokenizer thread pool competing with torch's (and no fork warnings).
* intra-op threads: ``LATENT_AGENTS_THREADS`` when set, else ``OMP_NUM_THREADS`` when set, else torch's default
  (one per core); torch caps a count from the environment at the number of cores.
* the experiments' small batched generation runs on ``LATENT_AGENTS_THREADS`` threads, else on 1: it gains little
  from threads and loses much when the cores are shared (`generation_threads`).

``LATENT_AGENTS_THREADS`` is the one knob; a variable the user set explicitly is never overwritten.
"""

from __future__ import annotations

import os
import sys
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Iterator, MutableMapping

from training.errors import UserError

ENV = "LATENT_AGENTS_THREADS"
GENERATION_DEFAULT = 1
DEFAULTS = {"OMP_WAIT_POLICY": "PASSIVE", "TOKENIZERS_PARALLELISM": "false"}


class ThreadsError(UserError, ValueError):
    """``LATENT_AGENTS_THREADS`` holds something other than a positive whole number."""


@dataclass(frozen=True)
class ThreadPolicy:
    """What the policy decided.

    Attributes:
        intra_op: torch intra-op threads for training and evaluation; ``None`` leaves torch's default.
        generation: threads for the experiments' batched generation.
        env_set: the environment variables this policy set (those the user had not set), name to value.
    """

    intra_op: int | None
    generation: int
    env_set: dict[str, str] = field(default_factory=dict)


def requested_threads(environ: MutableMapping[str, str] = os.environ) -> int | None:
    """The thread count ``LATENT_AGENTS_THREADS`` asks for, or ``None`` when it is unset or empty.

    Args:
        environ: the environment to read.

    Returns:
        A positive int, or ``None``.

    Raises:
        ThreadsError: the variable is set to something other than a positive whole number.

    Example:
        >>> requested_threads({"LATENT_AGENTS_THREADS": "2"})
        2
    """
    raw = environ.get(ENV, "").strip()
    if not raw:
        return None
    if not raw.isdigit() or int(raw) < 1:
        raise ThreadsError(f"{ENV}={raw!r} is not a thread count; set it to a positive whole number such as 1 "
                           "or 2, or unset it for the default policy")
    return int(raw)


def configure(environ: MutableMapping[str, str] = os.environ) -> ThreadPolicy:
    """Apply the policy to ``environ`` (and to torch when it is already imported); call before importing torch:
    OpenMP settings set after torch loaded reach only processes started later.

    Args:
        environ: the environment to complete; only variables it lacks are set.

    Returns:
        The `ThreadPolicy` applied.

    Raises:
        ThreadsError: ``LATENT_AGENTS_THREADS`` is not a positive whole number (nothing is changed then).

    Example:
        >>> from training import threads
        >>> policy = threads.configure()   # first thing in a CLI, before `import torch`
        >>> import torch
    """
    requested = requested_threads(environ)
    user_omp = environ.get("OMP_NUM_THREADS", "").strip()
    wanted = dict(DEFAULTS)
    if requested is not None:
        wanted["OMP_NUM_THREADS"] = str(requested)
    env_set = {k: v for k, v in wanted.items() if not environ.get(k, "").strip()}
    environ.update(env_set)
    intra_op = requested if requested is not None else (int(user_omp) if user_omp.isdigit() else None)
    if intra_op is not None and ("torch" in sys.modules or (user_omp and user_omp != str(intra_op))):
        import torch  # the user's OMP_NUM_THREADS differs from the knob, which wins for torch

        torch.set_num_threads(intra_op)
    return ThreadPolicy(intra_op, requested or GENERATION_DEFAULT, env_set)


@contextmanager
def generation_threads(environ: MutableMapping[str, str] = os.environ) -> Iterator[int]:
    """Run the block on the experiments' generation thread count (``LATENT_AGENTS_THREADS``, else 1), then
    restore torch's previous count.

    Args:
        environ: the environment to read ``LATENT_AGENTS_THREADS`` from.

    Yields:
        The thread count in force inside the block.

    Example:
        >>> with generation_threads() as n:  # doctest: +SKIP
        ...     outs = lens.generate(model, prompts, alphas=[0.0, 5.0], interventions=sub)
    """
    import torch

    n = requested_threads(environ) or GENERATION_DEFAULT
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield n
    finally:
        torch.set_num_threads(before)
