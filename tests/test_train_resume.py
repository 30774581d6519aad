"""Exact resume: a run interrupted mid-epoch and resumed from its epoch checkpoint ends bit-identical
to an uninterrupted run at the same thread count, and the resumed part logs only later epochs."""

import pytest
import torch

from dinolab.config import load_experiment
from dinolab.track.reporter import MemoryReporter
from dinolab.train import checkpoint as ckpt
from dinolab.train.loop import InjectedFault, train


@pytest.fixture
def cfg(repo_root, tiny_overrides):
    # ema teacher, multi-crop, drop path on: every source of randomness is exercised.
    return load_experiment(repo_root / "experiments/demo.yaml", tiny_overrides + ["train.epochs=3", "eval.linear=false"])


def test_interrupted_and_resumed_run_is_bit_identical(cfg, tmp_path):
    full = MemoryReporter()
    train(cfg, full, workdir=tmp_path / "full")

    # Fault in epoch 1 (global step 3 of 2 steps/epoch), after epoch 0's checkpoint exists.
    faulty = cfg.model_copy(update={"train": cfg.train.model_copy(update={"fail_at_step": 3})})
    first = MemoryReporter()
    with pytest.raises(InjectedFault):
        train(faulty, first, workdir=tmp_path / "resumed")
    assert [e for e, _ in ckpt.list_checkpoints(tmp_path / "resumed")] == [0]
    assert first.steps() == [0]

    second = MemoryReporter()
    result = train(faulty, second, workdir=tmp_path / "resumed")
    assert result.start_epoch == 1
    assert second.steps() == [1, 2]  # only the epochs after the checkpoint are logged

    a = torch.load(tmp_path / "full/final/teacher_backbone.pt")
    b = torch.load(tmp_path / "resumed/final/teacher_backbone.pt")
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    sa = ckpt.load_checkpoint(ckpt.latest_checkpoint(tmp_path / "full"))
    sb = ckpt.load_checkpoint(ckpt.latest_checkpoint(tmp_path / "resumed"))
    for k in sa["student"]:
        assert torch.equal(sa["student"][k], sb["student"][k]), k
    assert torch.equal(sa["criterion"]["center"], sb["criterion"]["center"])
    # The logged curves agree epoch by epoch.
    assert full.history("loss")[1:] == second.history("loss")


def test_checkpoints_are_kept_to_the_last_n(cfg, tmp_path):
    keep2 = cfg.model_copy(update={"train": cfg.train.model_copy(update={"keep_checkpoints": 2})})
    train(keep2, MemoryReporter(), workdir=tmp_path)
    assert [e for e, _ in ckpt.list_checkpoints(tmp_path)] == [1, 2]
    assert (tmp_path / "final/teacher_backbone.pt").exists()
