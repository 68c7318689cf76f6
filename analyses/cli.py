"""The ``latent-agents`` command: build the toy world, run the training stages, reproduce the study, plan a run.

Every command loads the preset (``extends`` and ``--set`` applied) and validates all of it before any work. An
error the project anticipates (a bad preset, bad input, a missing model, a full or read-only disk) is printed as
one line, ``latent-agents: <sentence>``, with exit status 2; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import os
import sys

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "disabled")

from training.layout import STAGES  # noqa: E402  (after the environment, which must be set before HF imports)
from training.threads import configure as configure_threads  # noqa: E402

USER_ERROR_STATUS = 2
# file-system conditions a user can fix (free space, another --run-dir, permissions); other OSErrors are bugs
FS_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM, errno.ENOTDIR, errno.EISDIR}


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--preset", default="toy", help="preset name (toy, smoke, llama3.1-8b, ...) or a .toml path")
    p.add_argument("--run-dir", default=None, help="run directory (default: runs/<preset>/)")
    p.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE", dest="overrides",
                   help="override one preset value (TOML syntax: sft.max_steps=2, model.device='\"cuda\"'); "
                        "repeatable, applied in order before anything reads the preset")
    p.add_argument("--keep-stale", action="store_true",
                   help="keep finished stages whose preset values or inputs changed (warned, also in the report)")
    p.add_argument("--verify", action="store_true", help="rehash every finished stage's files before using them")


def build_parser() -> argparse.ArgumentParser:
    """The ``latent-agents`` argument parser: ``toy base``, one command per stage, ``reproduce``, ``plan`` and
    ``spread``.

    Returns:
        The parser; ``command`` names the chosen command.

    Example:
        >>> from analyses.cli import build_parser
        >>> args = build_parser().parse_args(["plan", "--preset", "smoke", "--set", "sft.max_steps=2"])
        >>> args.command, args.preset, args.overrides
        ('plan', 'smoke', ['sft.max_steps=2'])
    """
    parser = argparse.ArgumentParser(prog="latent-agents", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    toy = sub.add_parser("toy", help="the toy world")
    toy_sub = toy.add_subparsers(dest="toy_command", required=True)
    _common(toy_sub.add_parser("base", help="train the toy base model from scratch"))
    for stage in STAGES:
        _common(sub.add_parser(stage, help=f"run the {stage} stage (cached; skipped when done)"))
    _common(sub.add_parser("reproduce", help="run every missing stage, then the three experiments and the report"))
    _common(sub.add_parser("plan", help="check what a run needs and say what it would do; builds nothing"))
    spread = sub.add_parser("spread", help="the spread of finished runs' results over their seeds (one run dir "
                                           "per seed, each finished by `reproduce`)")
    spread.add_argument("run_dirs", nargs="+", metavar="RUN_DIR")
    spread.add_argument("--out", default=None, help="also write spread.md, spread.json and the spread figures "
                                                    "(HTML) into this directory")
    return parser


def _anticipated() -> tuple[type[BaseException], ...]:
    from lens.errors import LensError  # lens cannot import training, so its errors have their own base
    from training.errors import UserError

    return UserError, LensError


def _spread(args: argparse.Namespace) -> int:
    from analyses.spread import seed_spread, to_markdown, write_spread

    spread = seed_spread(args.run_dirs)
    print(to_markdown(spread), end="")
    if args.out:
        for path in write_spread(spread, args.out):
            print(f"wrote {path}")
    return 0


def _run(args: argparse.Namespace) -> int:
    if args.command == "spread":
        return _spread(args)
    from analyses.models import resolve_model
    from analyses.validate import validate_preset
    from training.presets import default_run_dir, load_preset
    from training.stages import KEEP_STALE_ENV, VERIFY_ENV

    preset = load_preset(args.preset, args.overrides)
    validate_preset(preset)
    run_dir = default_run_dir(preset, args.run_dir)
    os.environ.update({**({KEEP_STALE_ENV: "1"} if args.keep_stale else {}),
                       **({VERIFY_ENV: "1"} if args.verify else {})})
    if args.command == "plan":
        from analyses.plan import plan

        return plan(preset, run_dir)
    preset = resolve_model(preset)
    from training.endpoints import preset_endpoints
    from training.ranks import failed_marker, is_main, world_size

    marker = failed_marker(run_dir)
    if is_main() and marker.parent.is_dir():
        marker.unlink(missing_ok=True)
    try:
        with preset_endpoints(preset):
            _dispatch(args, preset, run_dir)
    except BaseException as e:
        if world_size() > 1 and is_main():  # let the waiting processes stop instead of waiting forever
            with contextlib.suppress(OSError):  # the error being reported may be the run dir itself
                marker.parent.mkdir(parents=True, exist_ok=True)
                marker.write_text(f"{type(e).__name__}: {e}")
        raise
    return 0


def _dispatch(args, preset, run_dir) -> None:
    if args.command == "toy":
        from training.toy_base import build_base

        build_base(preset, run_dir)
    elif args.command in STAGES:
        from training.pipeline import run_pipeline_stage

        run_pipeline_stage(args.command, preset, run_dir)
    else:
        from analyses.reproduce import reproduce

        reproduce(preset, run_dir)


def _fail(message: str) -> int:
    print(f"latent-agents: {' '.join(message.split())}", file=sys.stderr)
    return USER_ERROR_STATUS


def main(argv: list[str] | None = None) -> int:
    """Run one command; returns the exit status (0 done, 1 ``plan`` found a failing check, 2 an anticipated
    error, printed as one line).

    Args:
        argv: The arguments after the program name (None: ``sys.argv[1:]``).

    Returns:
        The exit status.

    Example:
        >>> main(["plan", "--preset", "smoke"])  # doctest: +SKIP
        0
    """
    args = build_parser().parse_args(argv)
    try:
        configure_threads()  # before torch is imported: OpenMP reads its settings when it loads
        return _run(args)
    except _anticipated() as e:
        return _fail(str(e))
    except OSError as e:
        if e.errno not in FS_ERRNOS:
            raise
        where = f": {e.filename}" if e.filename else ""
        return _fail(f"{e.strerror}{where}; free space there, fix its permissions or choose another --run-dir")


if __name__ == "__main__":
    sys.exit(main())
