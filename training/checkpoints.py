"""Crash-safe trainer checkpoints: a checkpoint becomes visible only when complete, and a full disk says so.

The HF Trainer writes ``checkpoint-N/`` in place, so a kill or a full disk mid-save leaves a partial dir that
``get_last_checkpoint`` picks and every resume then fails on. `atomic_trainer` wraps a Trainer class (TRL's
``SFTTrainer`` or ``GRPOTrainer`` alike) so that each checkpoint is written under ``.saving/`` beside the
others, gets a completion record written last, and is renamed into place; `last_checkpoint` resumes from the
newest complete one and removes (and names) any that are not. The completion record also carries the running
sum of the per-step losses, so a resumed run's ``train_loss`` covers every step, not only the resumed ones.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator

from training.errors import UserError

COMPLETE = "checkpoint_complete.json"
STAGING = ".saving"
# What torch.save says when its zip writer hits a full disk: it never gives the errno.
_TORCH_WRITE_FAILURES = ("unexpected pos", "iostream error", "PytorchStreamWriter failed", "file write failed")
_STORAGE_FULL = ("No space left on device", "StorageFull", "Disk quota exceeded")


class DiskFullError(OSError, UserError):
    """No space left on the device while writing an artifact or checkpoint; the message is the whole story."""

    def __str__(self) -> str:
        return self.strerror


def _chain(exc: BaseException) -> Iterator[BaseException]:
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        yield exc
        exc = exc.__cause__ or exc.__context__


def is_disk_full(exc: BaseException, path: str | Path) -> bool:
    """Whether ``exc`` (or an exception it was raised from) comes from a full disk at ``path``.

    An ``OSError`` with ``ENOSPC``/``EDQUOT`` or a "No space left" message counts; so does torch's zip writer
    failing ("unexpected pos", "iostream error") while the filesystem holding ``path`` is nearly full, since
    torch drops the errno.

    Args:
        exc: the exception.
        path: where it was writing.

    Returns:
        True for a full disk.

    Example:
        >>> is_disk_full(OSError(errno.ENOSPC, "No space left on device"), "/tmp")
        True
    """
    torch_failure = False
    for e in _chain(exc):
        if isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        text = str(e)
        if any(s in text for s in _STORAGE_FULL):
            return True
        torch_failure |= any(s in text for s in _TORCH_WRITE_FAILURES)
    return torch_failure and _nearly_full(path)


def _nearly_full(path: str | Path) -> bool:
    probe = Path(path)
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    usage = shutil.disk_usage(probe)
    return usage.free < max(1 << 20, usage.total // 50)


def _free(path: str | Path) -> str:
    probe = Path(path)
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    return f"{shutil.disk_usage(probe).free / 2**20:.1f} MiB free"


@contextmanager
def disk_full_guard(path: str | Path, what: str, *, intact: str = "the previous good state is intact") -> Iterator[None]:
    """Turn a full-disk failure inside the block into one `DiskFullError` sentence naming ``path``.

    Args:
        path: where the block writes.
        what: what it writes, for the message ("checkpoint-4", "stage sft/main").
        intact: what the message promises was kept.

    Yields:
        Nothing; the block runs inside the guard.

    Raises:
        DiskFullError: the block failed for a full disk at ``path`` (any other exception passes through as is).

    Example:
        >>> with disk_full_guard("runs/toy/sft/main.partial", "stage sft/main"):  # doctest: +SKIP
        ...     model.save_pretrained("runs/toy/sft/main.partial")
    """
    try:
        yield
    except DiskFullError:
        raise
    except Exception as e:
        if is_disk_full(e, path):
            raise DiskFullError(errno.ENOSPC, f"no space left on the device while writing {what} to {path} "
                                f"({_free(path)}); {intact}; free some space and rerun to continue") from None
        raise


def _complete_record(ckpt: Path) -> dict | None:
    """The completion record of ``ckpt`` when every file it lists is there at its size, else None."""
    try:
        record = json.loads((ckpt / COMPLETE).read_text())
        if all((ckpt / rel).stat().st_size == size for rel, size in record["files"].items()):
            return record
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        pass
    return None


def _step(name: str) -> int | None:
    prefix, _, num = name.partition("-")
    return int(num) if prefix == "checkpoint" and num.isdigit() else None


def last_checkpoint(folder: str | Path, log: Callable[[str], None] = print) -> str | None:
    """The newest complete checkpoint under ``folder``, or None; incomplete ones are removed, each named in a line.

    Args:
        folder: the trainer's ``output_dir``.
        log: where the lines about removed checkpoints go.

    Returns:
        The checkpoint path to pass as ``resume_from_checkpoint``.

    Example:
        >>> trainer.train(resume_from_checkpoint=last_checkpoint("runs/toy/sft/main.partial/resume"))  # doctest: +SKIP
    """
    folder = Path(folder)
    if not folder.is_dir():
        return None
    for half in sorted((folder / STAGING).glob("checkpoint-*")):
        log(f"[resume] ignoring {half.name}: the run stopped while saving it; removed it")
    shutil.rmtree(folder / STAGING, ignore_errors=True)
    found = sorted(((_step(p.name), p) for p in folder.iterdir() if p.is_dir() and _step(p.name) is not None),
                   reverse=True)
    best = None
    for _, path in found:
        if best is None and _complete_record(path) is not None:
            best = path
        elif best is None:
            log(f"[resume] ignoring {path}: it is incomplete (the run stopped while saving it); removed it")
            shutil.rmtree(path, ignore_errors=True)
    if best is not None:
        log(f"[resume] resuming from {best}")
    return str(best) if best else None


class AtomicCheckpoints:
    """Mixin for a ``transformers.Trainer`` subclass: checkpoints appear only when complete; a resumed run's
    ``train_loss`` averages over every step. Use `atomic_trainer` rather than mixing it in by hand."""

    _la_staging = False
    _la_prior_loss = 0.0

    def _get_output_dir(self, trial) -> str:
        out = super()._get_output_dir(trial)
        return os.path.join(out, STAGING) if self._la_staging else out

    def _save_checkpoint(self, model, trial) -> None:
        from transformers.trainer_utils import rotate_checkpoints

        root = Path(super()._get_output_dir(trial))
        name = f"checkpoint-{self.state.global_step}"
        staging = root / STAGING
        if self.args.should_save:
            shutil.rmtree(staging, ignore_errors=True)
        self.accelerator.wait_for_everyone()
        kept = last_complete_name(root)
        self._la_staging = True
        try:
            with disk_full_guard(staging / name, name, intact=f"the last complete checkpoint "
                                 f"({kept or 'none yet'}) is intact"):
                super()._save_checkpoint(model, trial)
                self.accelerator.wait_for_everyone()
                if self.args.should_save:
                    _write_complete(staging / name, self.state.global_step, self._la_loss_sum())
        except BaseException:
            if self.args.should_save:
                shutil.rmtree(staging, ignore_errors=True)
            raise
        finally:
            self._la_staging = False
        if self.args.should_save:
            target = root / name
            if target.exists():
                shutil.rmtree(target)
            os.replace(staging / name, target)
            _fsync_dir(root)
            shutil.rmtree(staging, ignore_errors=True)
            rotate_checkpoints(output_dir=str(root), save_total_limit=self.args.save_total_limit,
                               best_model_checkpoint=self.state.best_model_checkpoint, use_mtime=False)
        self.accelerator.wait_for_everyone()

    def _la_loss_sum(self) -> float:
        pending = self._tr_loss.item() if hasattr(self, "_tr_loss") else 0.0
        return self._la_prior_loss + getattr(self, "_total_loss_scalar", 0.0) + pending

    def train(self, resume_from_checkpoint=None, *args, **kwargs):
        """``Trainer.train``, carrying on the per-step loss sum of the checkpoint it resumes from.

        Args:
            resume_from_checkpoint: The checkpoint to resume from: a path (`last_checkpoint`'s), ``True`` for the
                newest complete one in ``output_dir`` (incomplete ones are removed first), or ``None``.
            *args: Passed on to the trainer's ``train``.
            **kwargs: Passed on to the trainer's ``train``.

        Returns:
            The trainer's ``TrainOutput``; after a resume from a complete checkpoint, its ``training_loss`` and
            ``metrics["train_loss"]`` average over every step of the run.

        Example:
            >>> trainer = atomic_trainer(SFTTrainer)(model=model, args=args, train_dataset=ds)  # doctest: +SKIP
            >>> trainer.train(resume_from_checkpoint=last_checkpoint(args.output_dir)).training_loss  # doctest: +SKIP
            1.52
        """
        from transformers.trainer_utils import TrainOutput

        if resume_from_checkpoint is True:
            resume_from_checkpoint = last_checkpoint(self.args.output_dir) or True  # none: the trainer says so
        is_path = isinstance(resume_from_checkpoint, (str, os.PathLike))
        record = _complete_record(Path(resume_from_checkpoint)) if is_path else None
        self._la_prior_loss = record["loss_sum"] if record else 0.0
        out = super().train(resume_from_checkpoint, *args, **kwargs)
        if not record or not out.global_step:
            return out
        loss = (self._la_prior_loss + self._total_loss_scalar) / out.global_step
        return TrainOutput(out.global_step, loss, {**out.metrics, "train_loss": loss})


def last_complete_name(root: Path) -> str | None:
    """The name of the newest complete checkpoint under ``root``, or None (nothing is removed).

    Args:
        root: The trainer's ``output_dir``.

    Returns:
        The ``checkpoint-N`` of the highest step whose completion record matches its files, or ``None``.

    Example:
        >>> last_complete_name(Path("runs/toy/sft/main.partial/resume"))  # doctest: +SKIP
        'checkpoint-200'
    """
    if not root.is_dir():
        return None
    done = [(_step(p.name), p.name) for p in root.iterdir()
            if p.is_dir() and _step(p.name) is not None and _complete_record(p) is not None]
    return max(done)[1] if done else None


def _write_complete(ckpt: Path, step: int, loss_sum: float) -> None:
    files = {p.relative_to(ckpt).as_posix(): p.stat().st_size for p in sorted(ckpt.rglob("*")) if p.is_file()}
    for p in ckpt.rglob("*"):
        if p.is_file():
            with open(p, "rb") as f:
                os.fsync(f.fileno())
    tmp = ckpt / f".{COMPLETE}.tmp"
    tmp.write_text(json.dumps({"step": step, "loss_sum": loss_sum, "files": files}, indent=2) + "\n")
    os.replace(tmp, ckpt / COMPLETE)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_trainer(cls: type) -> type:
    """``cls`` (a ``transformers.Trainer`` subclass) with `AtomicCheckpoints` mixed in.

    Args:
        cls: e.g. ``trl.SFTTrainer`` or ``trl.GRPOTrainer``.

    Returns:
        A subclass whose checkpoints are written aside and renamed into place when complete.

    Example:
        >>> from trl import SFTTrainer
        >>> trainer = atomic_trainer(SFTTrainer)(model=model, args=args, train_dataset=ds)  # doctest: +SKIP
    """
    return type(f"Atomic{cls.__name__}", (AtomicCheckpoints, cls), {"__module__": __name__})
