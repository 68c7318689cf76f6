"""A training step of the toy base's shape, idle vs beside one CPU-bound process, under OpenMP's default wait
policy (threads spin) vs the CLI's thread policy (`training.threads`: they sleep). Each configuration runs in a
fresh process, because OpenMP reads its settings when torch loads it.

usage: .venv/bin/python benchmarks/bench_threads.py
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

from _busy import busy_process

ROOT = Path(__file__).resolve().parents[1]
POLICY_VARS = ("OMP_WAIT_POLICY", "OMP_NUM_THREADS", "TOKENIZERS_PARALLELISM", "GOMP_SPINCOUNT",
               "LATENT_AGENTS_THREADS")
THREADS = min(2, os.cpu_count() or 1)


def child(policy: str, steps: int) -> None:
    """Time ``steps`` training steps (forward, backward, AdamW) in this process; print the median as JSON."""
    if policy == "cli":
        from training.threads import configure

        configure()
    import torch

    from _tiny import tiny_llama

    torch.set_num_threads(THREADS)
    hf, _ = tiny_llama(n_layers=4, d_model=192)  # the toy base: d_model 192, 4 layers
    opt = torch.optim.AdamW(hf.parameters(), lr=1e-3)
    ids = torch.randint(0, hf.config.vocab_size, (8, 128))
    times = []
    for i in range(steps + 2):  # two warm-up steps
        start = time.perf_counter()
        loss = hf(input_ids=ids, labels=ids).loss
        loss.backward()
        opt.step()
        opt.zero_grad()
        if i >= 2:
            times.append(time.perf_counter() - start)
    print(json.dumps({"policy": policy, "step_s": statistics.median(times), "threads": torch.get_num_threads(),
                      "wait_policy": os.environ.get("OMP_WAIT_POLICY", "(default)")}))


def _step_time(policy: str, busy: bool, steps: int) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in POLICY_VARS}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), str(ROOT / "benchmarks")])
    with busy_process(busy, limit_s=300):
        out = subprocess.run([sys.executable, __file__, "--child", policy, str(steps)], env=env, check=True,
                             capture_output=True, text=True, timeout=600)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(steps: int = 5) -> dict[str, float]:
    """Median step time per (policy, load) and the ratios; returns the ratios.

    Example:
        >>> ratios = main(steps=5)   # about a minute on 2 cores
    """
    got = {(p, busy): _step_time(p, busy, steps) for p in ("default", "cli") for busy in (False, True)}
    for (p, busy), r in got.items():
        print(f"  {p:7s} ({r['wait_policy']:9s}, {r['threads']} threads) {'busy' if busy else 'idle'}: "
              f"{r['step_s'] * 1e3:.0f} ms/step")
    t = {k: r["step_s"] for k, r in got.items()}
    ratios = {"train step busy/idle, OpenMP default": t["default", True] / t["default", False],
              "train step busy/idle, CLI policy": t["cli", True] / t["cli", False],
              "train step idle, CLI policy/default": t["cli", False] / t["default", False],
              "train step busy, CLI policy/default": t["cli", True] / t["default", True]}
    print(f"training step (toy base shape, batch 8 x 128, {THREADS} threads) beside one CPU-bound process: "
          + "; ".join(f"{k} = {v:.2f}x" for k, v in ratios.items()))
    return ratios


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        child(sys.argv[2], int(sys.argv[3]))
    else:
        main()
