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

STARTED = time.time()  # a failure marker older than this process (less the launcher's spread) is stale


def rank() -> int:
    """This process's global rank under torchrun / accelerate (``RANK``), 0 in a single process.

    Returns:
        ``RANK`` (else ``LOCAL_RANK``) as an int; 0 when neither is set.

    Example:
        >>> rank()  # doctest: +SKIP
        0
    """
    return int(os.environ.get("RANK", os.environ.get("LOCAL_RANK", "0")))


def world_size() -> int:
    """How many processes the launcher started (``WORLD_SIZE``), 1 without a launcher.

    Returns:
        ``WORLD_SIZE`` as an int; 1 when it is not set.

    Example:
        >>> world_size()  # under torchrun --nproc-per-node 2  # doctest: +SKIP
        2
    """
    return int(os.environ.get("WORLD_SIZE", "1"))


def is_main() -> bool:
    """Whether this process builds the stages that are not distributed training.

    Returns:
        True for rank 0 (and in a single process).

    Example:
        >>> is_main()  # doctest: +SKIP
        True
    """
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
        if failed is not None and failed.exists() and failed.stat().st_mtime > STARTED - 30:
            raise RuntimeError(f"rank {rank()}: the main process failed building {what}: {failed.read_text()}")
        if timeout_s is not None and time.monotonic() - start > timeout_s:
            raise TimeoutError(f"rank {rank()}: {what} did not appear at {path} within {timeout_s:.0f}s")
        if not said:
            log(f"[{what}] rank {rank()} waits for the main process to build it")
            said = True
        time.sleep(poll_s)
    return path


FAILED = ".main-process-failed"


def failed_marker(run_dir: str | Path) -> Path:
    """The file the main process writes in the run dir when its command fails, so waiting processes stop.

    Args:
        run_dir: The run directory.

    Returns:
        ``run_dir/.main-process-failed``.

    Example:
        >>> from training.ranks import failed_marker
        >>> failed_marker("runs/toy")
        PosixPath('runs/toy/.main-process-failed')
    """
    return Path(run_dir) / FAILED


def main_stage(path: str | Path, build: Callable[[Path], dict], *, name: str, run_dir: str | Path,
               log: Callable[[str], None] = print, **fingerprint) -> None:
    """A stage that is not distributed training: built by the main process (`training.stages.run_stage`, with
    the peak accelerator memory added to its manifest), awaited by the others through its manifest.
    ``fingerprint`` (``keys``, ``inputs``, ...) goes to `run_stage` as is.

    Args:
        path: The stage dir.
        build: Builds the stage into the scratch dir it is given; returns the manifest's summary.
        name: The stage's name (``eval``, ``debates/main``), for the log and the manifest.
        run_dir: The run directory (where a failure marker stops the waiting processes).
        log: Progress lines.
        **fingerprint: Passed to `run_stage` (``keys``, ``inputs``, ...).

    Returns:
        None; the stage's manifest exists when it returns.

    Example:
        >>> main_stage(run_dir / "eval", build, name="eval", run_dir=run_dir)  # doctest: +SKIP
    """
    from training.stages import MANIFEST, run_stage

    path = Path(path)
    if not is_main():
        wait_for(path / MANIFEST, what=name, failed=failed_marker(run_dir), log=log)
        return
    run_stage(path, with_peak_memory(build), name=name, log=log, **fingerprint)


def with_peak_memory(build: Callable[[Path], dict]) -> Callable[[Path], dict]:
    """``build`` with ``peak_gpu_memory_gib`` (the CUDA allocator's peak while it ran) in its info when CUDA is
    in use.

    Args:
        build: A stage's build function (scratch dir → summary).

    Returns:
        A build function returning ``build``'s summary, plus ``peak_gpu_memory_gib`` when CUDA is available.

    Example:
        >>> from pathlib import Path
        >>> from training.ranks import with_peak_memory
        >>> with_peak_memory(lambda scratch: {"n_debates": 64})(Path("scratch"))["n_debates"]
        64
    """
    import torch

    def measured(scratch: Path) -> dict:
        if not torch.cuda.is_available():
            return build(scratch)
        torch.cuda.reset_peak_memory_stats()
        info = build(scratch) or {}
        return {**info, "peak_gpu_memory_gib": round(torch.cuda.max_memory_allocated() / 2**30, 3)}

    return measured
