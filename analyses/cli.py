"""The ``latent-agents`` command: build the toy world, run the training stages, reproduce the study."""

from __future__ import annotations

import argparse
import os
import sys

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "disabled")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from training.layout import STAGES  # noqa: E402  (after the environment, which must be set before HF imports)


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--preset", default="toy", help="preset name (toy, smoke, llama3.1-8b, ...) or a .toml path")
    p.add_argument("--run-dir", default=None, help="run directory (default: runs/<preset>/)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="latent-agents", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    toy = sub.add_parser("toy", help="the toy world")
    toy_sub = toy.add_subparsers(dest="toy_command", required=True)
    _common(toy_sub.add_parser("base", help="train the toy base model from scratch"))
    for stage in STAGES:
        _common(sub.add_parser(stage, help=f"run the {stage} stage (cached; skipped when done)"))
    _common(sub.add_parser("reproduce", help="run every missing stage, then the three experiments and the report"))
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from analyses.models import resolve_model
    from training.presets import PresetError, default_run_dir, load_preset

    try:
        preset = resolve_model(load_preset(args.preset))
    except PresetError as e:
        print(f"latent-agents: {e}", file=sys.stderr)
        return 2
    run_dir = default_run_dir(preset, args.run_dir)
    if args.command == "toy":
        from training.toy_base import build_base

        build_base(preset, run_dir)
    elif args.command in STAGES:
        from training.pipeline import run_pipeline_stage

        run_pipeline_stage(args.command, preset, run_dir)
    else:
        from analyses.reproduce import reproduce

        reproduce(preset, run_dir)
    return 0


if __name__ == "__main__":
    sys.exit(main())
