"""The CLI's thread policy (training.threads): what it sets in a fresh process, and what it leaves alone."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from training import threads

ROOT = Path(__file__).resolve().parents[1]
POLICY_VARS = ("OMP_WAIT_POLICY", "OMP_NUM_THREADS", "TOKENIZERS_PARALLELISM", threads.ENV)

# configure() first, then torch, as the CLI does; prints what the process ended up with
PROBE = """
import json, os, sys
from training import threads
policy = threads.configure()
import torch
print(json.dumps({"env": {k: os.environ.get(k) for k in %r}, "torch_threads": torch.get_num_threads(),
                  "intra_op": policy.intra_op, "generation": policy.generation, "env_set": policy.env_set}))
""" % (POLICY_VARS,)


def _probe(**env: str) -> dict:
    """Run PROBE in a fresh interpreter whose environment has none of the policy's variables but ``env``."""
    base = {k: v for k, v in os.environ.items() if k not in POLICY_VARS}
    out = subprocess.run([sys.executable, "-c", PROBE], env={**base, "PYTHONPATH": str(ROOT), **env},
                         capture_output=True, text=True, check=True, cwd=ROOT)
    return json.loads(out.stdout.strip().splitlines()[-1])


def _torch_default_threads() -> int:
    base = {k: v for k, v in os.environ.items() if k not in POLICY_VARS}
    out = subprocess.run([sys.executable, "-c", "import torch; print(torch.get_num_threads())"], env=base,
                         capture_output=True, text=True, check=True)
    return int(out.stdout)


def test_default_policy_sets_passive_wait_and_no_tokenizer_threads():
    got = _probe()
    assert got["env"]["OMP_WAIT_POLICY"] == "PASSIVE"
    assert got["env"]["TOKENIZERS_PARALLELISM"] == "false"
    assert got["env"]["OMP_NUM_THREADS"] is None            # thread count left to torch
    assert got["intra_op"] is None and got["generation"] == 1
    assert got["torch_threads"] == _torch_default_threads()
    assert got["env_set"] == {"OMP_WAIT_POLICY": "PASSIVE", "TOKENIZERS_PARALLELISM": "false"}


def test_the_knob_sets_torch_threads_and_generation_threads():
    got = _probe(LATENT_AGENTS_THREADS="1")
    assert got["env"]["OMP_NUM_THREADS"] == "1" and got["torch_threads"] == 1
    assert got["intra_op"] == 1 and got["generation"] == 1
    got = _probe(LATENT_AGENTS_THREADS="2")
    assert got["torch_threads"] == min(2, os.cpu_count()) and got["generation"] == 2  # torch caps at the cores


def test_user_set_values_are_never_overwritten():
    got = _probe(OMP_WAIT_POLICY="ACTIVE", TOKENIZERS_PARALLELISM="true", OMP_NUM_THREADS="1")
    assert got["env"] == {"OMP_WAIT_POLICY": "ACTIVE", "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "true",
                          threads.ENV: None}
    assert got["env_set"] == {} and got["torch_threads"] == 1 and got["intra_op"] == 1


def test_the_knob_wins_over_omp_num_threads_for_torch_without_rewriting_it():
    got = _probe(OMP_NUM_THREADS="1", LATENT_AGENTS_THREADS="2")
    assert got["env"]["OMP_NUM_THREADS"] == "1"   # the user's value stays in the environment
    assert got["torch_threads"] == 2 and got["generation"] == 2


@pytest.mark.parametrize("value", ["0", "-1", "two", "1.5"])
def test_a_bad_knob_is_one_sentence_and_changes_nothing(value):
    env = {threads.ENV: value}
    with pytest.raises(threads.ThreadsError, match=f"LATENT_AGENTS_THREADS='{value}' is not a thread count; "
                                                   "set it to a positive whole number"):
        threads.configure(env)
    assert env == {threads.ENV: value}


def test_the_cli_reports_a_bad_knob_as_one_line(monkeypatch, capsys):
    from analyses import cli

    monkeypatch.setenv(threads.ENV, "0")
    assert cli.main(["plan", "--preset", "smoke"]) == cli.USER_ERROR_STATUS
    err = capsys.readouterr().err.strip()
    assert err.startswith("latent-agents: LATENT_AGENTS_THREADS='0' is not a thread count") and "\n" not in err


def test_importing_the_cli_does_not_import_torch():
    """The policy must run before torch loads OpenMP; the CLI module may not import torch at import time."""
    code = "import sys, analyses.cli; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], env={**os.environ, "PYTHONPATH": str(ROOT)},
                         capture_output=True, text=True, check=True, cwd=ROOT)
    assert out.stdout.strip() == "False"


def test_generation_threads_sets_and_restores(monkeypatch):
    before = torch.get_num_threads()
    monkeypatch.delenv(threads.ENV, raising=False)
    with threads.generation_threads() as n:
        assert n == 1 and torch.get_num_threads() == 1
    assert torch.get_num_threads() == before
    monkeypatch.setenv(threads.ENV, "2")
    with threads.generation_threads() as n:
        assert n == 2 and torch.get_num_threads() == 2
    assert torch.get_num_threads() == before
