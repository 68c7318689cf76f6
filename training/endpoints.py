"""Endpoints a run starts itself: a preset's ``serve`` command (``vllm serve ...``, a local judge server) brought
up before the stages that call it and stopped after, so one command runs the whole study.

An endpoint that already answers is used as it is; one that does not answer within the timeout, or whose command
exits, is one clear error naming the command. Only loopback URLs can be served (nothing leaves the machine).
"""

from __future__ import annotations

import json
import shlex
import subprocess
import sys
import time
import urllib.error
import urllib.request
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator, Sequence
from urllib.parse import urlparse

LOOPBACK = ("127.0.0.1", "localhost", "::1")


class EndpointError(RuntimeError):
    """A served endpoint that would not come up."""


def answers(base_url: str, timeout_s: float = 2.0) -> bool:
    """Whether an OpenAI-compatible server answers ``GET {base_url}/models``.

    Args:
        base_url: The OpenAI-compatible base URL (``.../v1``).
        timeout_s: How long the request may take.

    Returns:
        True when it answers with status 200 and a JSON body holding ``data``; False on any error.

    Example:
        >>> answers("http://127.0.0.1:8000/v1")  # doctest: +SKIP
        True
    """
    try:
        with urllib.request.urlopen(base_url.rstrip("/") + "/models", timeout=timeout_s) as resp:
            return resp.status == 200 and "data" in json.loads(resp.read())
    except (urllib.error.URLError, OSError, ValueError):
        return False


@contextmanager
def serving(command: Sequence[str], base_url: str, *, cwd: str | Path, ready_timeout_s: float = 120.0,
            log: Callable[[str], None] = print) -> Iterator[None]:
    """Run ``command`` (``{python}`` → this interpreter) in ``cwd`` while the block runs, once it answers at
    ``base_url``; stop it afterwards. Does nothing when something already answers there.

    Args:
        command: the server command, as an argument list.
        base_url: the OpenAI-compatible base URL it serves (loopback only).
        cwd: its working directory (the preset file's directory).
        ready_timeout_s: how long it may take to answer.
        log: start/stop lines.

    Yields:
        Nothing; the server answers at ``base_url`` inside the block.

    Raises:
        EndpointError: ``base_url`` is not on loopback, or the command exits or does not answer within
            ``ready_timeout_s``.

    Example:
        >>> vllm = ["vllm", "serve", "m", "--port", "8000"]
        >>> with serving(vllm, "http://127.0.0.1:8000/v1", cwd="."):  # doctest: +SKIP
        ...     run_everything()
    """
    host = urlparse(base_url).hostname
    if host not in LOOPBACK:
        raise EndpointError(f"a served endpoint must be on loopback ({', '.join(LOOPBACK)}), but base_url is "
                            f"{base_url!r}; drop serve to use a remote endpoint as it is")
    if answers(base_url):
        log(f"[endpoint] {base_url} already answers; using it")
        yield
        return
    argv = [sys.executable if a == "{python}" else a for a in command]
    log(f"[endpoint] starting {shlex.join(argv)} for {base_url}")
    proc = subprocess.Popen(argv, cwd=str(cwd), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + ready_timeout_s
        while not answers(base_url):
            if proc.poll() is not None:
                raise EndpointError(f"the endpoint command {shlex.join(argv)} exited with code {proc.returncode} "
                                    f"before {base_url} answered: {(proc.stderr.read() or '').strip()[-300:]}")
            if time.monotonic() > deadline:
                raise EndpointError(f"the endpoint command {shlex.join(argv)} did not answer at {base_url} within "
                                    f"{ready_timeout_s:.0f}s")
            time.sleep(0.2)
        yield
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log(f"[endpoint] stopped {base_url}")


@contextmanager
def preset_endpoints(preset, log: Callable[[str], None] = print) -> Iterator[None]:
    """The endpoint ``[judge] serve`` names, served (by the main process) while the block runs; nothing when the
    preset names none.

    Args:
        preset: The run's `training.presets.Preset`.
        log: Start/stop lines.

    Yields:
        Nothing; the endpoint answers (when there is one) inside the block.

    Raises:
        EndpointError: the endpoint is not on loopback, or its command exits or does not answer in time.

    Example:
        >>> preset = load_preset("paper-standin")  # doctest: +SKIP
        >>> with preset_endpoints(preset):  # doctest: +SKIP
        ...     run_pipeline_stage("internalize", preset, "runs/paper-standin")
    """
    from training.llm_judge import JudgeConfig
    from training.ranks import is_main

    cfg = preset.section("judge", JudgeConfig)
    if not cfg.serve or not is_main():
        yield
        return
    with serving(cfg.serve, cfg.base_url, cwd=Path(preset.path).parent, ready_timeout_s=cfg.ready_timeout_s,
                 log=log):
        yield
