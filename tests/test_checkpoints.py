"""Crash-safe checkpoints on a real HF Trainer with a tiny model: complete-only visibility, resume, full disk."""

from __future__ import annotations

import errno
import json
import shutil
from pathlib import Path

import pytest
import torch

from training import checkpoints
from training.checkpoints import COMPLETE, DiskFullError, atomic_trainer, is_disk_full, last_checkpoint
from training.tiny_models import TinyModelSpec, make_tiny_model


class Stop(Exception):
    """Stands in for a kill right after a checkpoint was saved."""


def _trainer(tokenizer, out: Path, *, stop_after_save: int | None = None, max_steps: int = 4):
    from datasets import Dataset
    from transformers import Trainer, TrainerCallback, TrainingArguments

    model = make_tiny_model(TinyModelSpec(d_model=32, n_layers=1, n_heads=2, d_mlp=64, n_ctx=64), tokenizer, seed=0)
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(5, len(tokenizer), (16, 8), generator=g).tolist()
    data = Dataset.from_list([{"input_ids": r, "labels": r, "attention_mask": [1] * 8} for r in ids])
    args = TrainingArguments(output_dir=str(out), max_steps=max_steps, per_device_train_batch_size=2,
                             learning_rate=1e-2, save_strategy="steps", save_steps=2, save_total_limit=1,
                             logging_steps=3, use_cpu=True, report_to="none", seed=0, data_seed=0,
                             dataloader_num_workers=0, disable_tqdm=True)

    class Killer(TrainerCallback):
        def on_save(self, args, state, control, **kw):
            if state.global_step == stop_after_save:
                raise Stop

    return atomic_trainer(Trainer)(model=model, args=args, train_dataset=data,
                                   callbacks=[Killer()] if stop_after_save else None)


def _weights(trainer) -> dict:
    return {k: v.detach().clone() for k, v in trainer.model.state_dict().items()}


def test_checkpoints_appear_complete_and_resume_matches_uninterrupted(tiny_tokenizer, tmp_path):
    ref = _trainer(tiny_tokenizer, tmp_path / "ref")
    ref_out = ref.train()
    assert sorted(p.name for p in (tmp_path / "ref").iterdir()) == ["checkpoint-4"]
    record = json.loads((tmp_path / "ref" / "checkpoint-4" / COMPLETE).read_text())
    assert record["step"] == 4 and "trainer_state.json" in record["files"]
    assert record["loss_sum"] == pytest.approx(4 * ref_out.training_loss, rel=1e-6)

    with pytest.raises(Stop):
        _trainer(tiny_tokenizer, tmp_path / "k", stop_after_save=2).train()
    lines = []
    last = last_checkpoint(tmp_path / "k", lines.append)
    assert Path(last).name == "checkpoint-2" and lines == [f"[resume] resuming from {last}"]
    resumed = _trainer(tiny_tokenizer, tmp_path / "k")
    out = resumed.train(resume_from_checkpoint=last)
    assert out.global_step == 4
    # train_loss covers all four steps, not only the two resumed ones
    assert out.training_loss == pytest.approx(ref_out.training_loss, rel=1e-5)
    assert out.metrics["train_loss"] == out.training_loss
    a, b = _weights(ref), _weights(resumed)
    assert all(torch.equal(a[k], b[k]) for k in a)



@pytest.mark.parametrize("how", ["path", "true"])
def test_resume_from_a_path_object_or_true_also_averages_over_every_step(tiny_tokenizer, tmp_path, how):
    ref_out = _trainer(tiny_tokenizer, tmp_path / "ref").train()
    with pytest.raises(Stop):
        _trainer(tiny_tokenizer, tmp_path / "k", stop_after_save=2).train()
    resume = Path(last_checkpoint(tmp_path / "k", [].append)) if how == "path" else True
    out = _trainer(tiny_tokenizer, tmp_path / "k").train(resume_from_checkpoint=resume)
    assert out.global_step == 4
    assert out.training_loss == pytest.approx(ref_out.training_loss, rel=1e-5)

def test_incomplete_checkpoints_are_ignored_removed_and_named(tiny_tokenizer, tmp_path):
    _trainer(tiny_tokenizer, tmp_path, max_steps=2).train()
    (tmp_path / "checkpoint-6").mkdir()  # kill -9 right as the HF Trainer created the dir
    partial = tmp_path / "checkpoint-4"
    shutil.copytree(tmp_path / "checkpoint-2", partial)  # a save cut short: no completion record
    (partial / COMPLETE).unlink()
    (tmp_path / checkpoints.STAGING / "checkpoint-8").mkdir(parents=True)
    lines = []
    assert last_checkpoint(tmp_path, lines.append) == str(tmp_path / "checkpoint-2")
    assert lines == [
        "[resume] ignoring checkpoint-8: the run stopped while saving it; removed it",
        f"[resume] ignoring {tmp_path / 'checkpoint-6'}: it is incomplete (the run stopped while saving it); removed it",
        f"[resume] ignoring {partial}: it is incomplete (the run stopped while saving it); removed it",
        f"[resume] resuming from {tmp_path / 'checkpoint-2'}"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint-2"]
    # a file cut short after the record was written also disqualifies the checkpoint
    with open(tmp_path / "checkpoint-2" / "trainer_state.json", "r+b") as f:
        f.truncate(10)
    assert last_checkpoint(tmp_path, lines.append) is None


def test_full_disk_during_a_save_names_it_and_keeps_the_last_checkpoint(tiny_tokenizer, tmp_path, monkeypatch):
    from transformers import Trainer

    real = Trainer._save_optimizer_and_scheduler

    def save(self, output_dir):
        if self.state.global_step == 4:
            (Path(output_dir) / "optimizer.pt").write_bytes(b"half")
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(self, output_dir)

    monkeypatch.setattr(Trainer, "_save_optimizer_and_scheduler", save)
    with pytest.raises(DiskFullError) as e:
        _trainer(tiny_tokenizer, tmp_path).train()
    msg = str(e.value)
    assert msg.startswith(f"no space left on the device while writing checkpoint-4 to "
                          f"{tmp_path / checkpoints.STAGING / 'checkpoint-4'} (")
    assert msg.endswith("MiB free); the last complete checkpoint (checkpoint-2) is intact; free some space and "
                        "rerun to continue")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint-2"]
    assert last_checkpoint(tmp_path, [].append) == str(tmp_path / "checkpoint-2")


def test_torch_write_failure_counts_as_full_disk_only_when_the_disk_is_full(tmp_path, monkeypatch):
    err = RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 551168 vs 551056")
    assert is_disk_full(OSError(errno.ENOSPC, "x"), tmp_path)
    assert not is_disk_full(err, tmp_path)
    monkeypatch.setattr(checkpoints, "_nearly_full", lambda path: True)
    assert is_disk_full(err, tmp_path)
    assert not is_disk_full(ValueError("bad"), tmp_path)
