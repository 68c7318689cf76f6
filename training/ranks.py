"""Several processes (``accelerate launch`` / ``torchrun``): which one builds a stage, and how the others wait.

Only distributed training (SFT, DebateGPT) runs in every process. Every other stage (debates, stage-2 GRPO
phases with their merges and evaluations, Table 1, the experiments, the report) is built by the main process
alone; the others poll for the stage's manifest on the shared run dir instead of sitting in a collective, which
would time out during a debate stage that takes hours. A stage is only ever marked done by the process that
built its artifact (`training.stages.run_stage` writes the manifest last).
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Callable

ENV_RANK = ("RANK", "LOCAL_RANK")


def rank() -> int:
    """This process's global rank under torchrun / accelerate (``RANK``), 0 in a single process."""
    return int(os.environ.get("RANK", os.environ.get("LOCAL_RANK", "0")))


def world_size() -> int:
    """How many processes the launcher started (``WORLD_SIZE``), 1 without a launcher."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def is_main() -> bool:
    """Whether this process builds the stages that are not distributed training."""
    return rank() == 0


def wait_for(path: str | Path, *, what: str, poll_s: float = 5.0, timeout_s: float | None = None,
             failed: Path | None = None, log: Callable[[str], None] = print) -> Path:
    """Block until ``path`` exists (the main process wrote it), polling; no collective, so no NCCL timeout.

    Args:
        path: the file the main process writes last (a stage manifest).
        what: the stage's name, for the log line.
        poll_s: seconds between checks.
        timeout_s: give up after this long (None: wait as long as the stage takes).
        failed: a file whose appearance means the main process failed; its text is raised.
        log: where the one waiting line goes.

    Returns:
        ``path``, once it exists.

    Example:
        >>> wait_for(run_dir / "debates" / "main" / "stage.json", what="debates/main")  # doctest: +SKIP
    """
    path = Path(path)
    start, said = time.monotonic(), False
    while not path.exists():
        if failed is not None and failed.exists():
            raise RuntimeError(f"rank {rank()}: the main process failed building {what}: {failed.read_text()}")
        if timeout_s is not None and time.monotonic() - start > timeout_s:
            raise TimeoutError(f"rank {rank()}: {what} did not appear at {path} within {timeout_s:.0f}s")
        if not said:
            log(f"[{what}] rank {rank()} waits for the main process to build it")
            said = True
        time.sleep(poll_s)
    return path
