"""Exact resume: a run interrupted mid-epoch and resumed from its epoch checkpoint ends bit-identical
to an uninterrupted run at the same thread count, and the resumed part logs only later epochs; also for a
trial interrupted before safe loading, once its checkpoints are converted by ``dinolab checkpoints upgrade``."""

import json
import random

import numpy as np
import pytest
import torch

from dinolab.cli import main
from dinolab.track.reporter import MemoryReporter
from dinolab.train import checkpoint as ckpt
from dinolab.train.faults import ENV, InjectedFault
from dinolab.train.loop import train


@pytest.fixture(scope="module")
def cfg(tiny_config):
    # ema teacher, multi-crop, drop path on: every source of randomness is exercised.
    return tiny_config("train.epochs=3", "eval.linear=false")


@pytest.fixture(scope="module")
def full(cfg, tmp_path_factory):
    """The uninterrupted run, trained once for this module: (its folder, its reporter)."""
    workdir = tmp_path_factory.mktemp("full")
    reporter = MemoryReporter()
    train(cfg, reporter, workdir=workdir)
    return workdir, reporter


def _interrupt(cfg, workdir, monkeypatch):
    """Fault in epoch 1 (global step 3 of 2 steps/epoch), after epoch 0's checkpoint exists. The hook stays set:
    the resume gets through because the fault fires once per trial folder."""
    monkeypatch.setenv(ENV, json.dumps({cfg.name: 3}))
    first = MemoryReporter()
    with pytest.raises(InjectedFault):
        train(cfg, first, workdir=workdir)
    assert [e for e, _ in ckpt.list_checkpoints(workdir)] == [0]
    assert first.steps() == [0]


def _resume_and_compare(cfg, workdir, full):
    full_dir, full_reporter = full
    second = MemoryReporter()
    result = train(cfg, second, workdir=workdir)
    assert result.start_epoch == 1
    assert second.steps() == [1, 2]  # only the epochs after the checkpoint are logged

    a = torch.load(full_dir / "final/teacher_backbone.pt")
    b = torch.load(workdir / "final/teacher_backbone.pt")
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    sa = ckpt.load_checkpoint(ckpt.latest_checkpoint(full_dir))
    sb = ckpt.load_checkpoint(ckpt.latest_checkpoint(workdir))
    for k in sa["student"]:
        assert torch.equal(sa["student"][k], sb["student"][k]), k
    assert torch.equal(sa["criterion"]["center"], sb["criterion"]["center"])
    # The logged curves agree epoch by epoch.
    assert full_reporter.history("loss")[1:] == second.history("loss")


def test_interrupted_and_resumed_run_is_bit_identical(cfg, full, tmp_path, monkeypatch):
    _interrupt(cfg, tmp_path / "resumed", monkeypatch)
    _resume_and_compare(cfg, tmp_path / "resumed", full)


def _rng_state_before_safe_loading() -> dict:
    """What ``checkpoint.rng_state`` returned before safe loading: numpy's own state tuple (a uint32 array)."""
    return {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}


def test_checkpoint_from_before_safe_loading_resumes_after_upgrade(cfg, full, tmp_path, monkeypatch, capsys):
    workdir = tmp_path / "storage/trials/abc"
    with monkeypatch.context() as m:  # the interrupted trial is written the way dinolab wrote it before
        m.setattr(ckpt, "rng_state", _rng_state_before_safe_loading)
        _interrupt(cfg, workdir, monkeypatch)
    old = ckpt.latest_checkpoint(workdir)
    with pytest.raises(ckpt.UnsafeCheckpoint, match="checkpoints upgrade"):
        ckpt.load_checkpoint(old)
    before = old.read_bytes()

    assert main(["checkpoints", "upgrade", str(tmp_path / "storage"), "--dry-run"]) == 0
    assert f"would convert {old}" in capsys.readouterr().out
    assert old.read_bytes() == before  # a dry run writes nothing
    assert main(["checkpoints", "upgrade", str(tmp_path / "storage")]) == 0
    assert f"converted     {old}" in capsys.readouterr().out
    assert isinstance(ckpt.load_checkpoint(old)["rng"]["numpy"]["key"], list)
    assert main(["checkpoints", "upgrade", str(workdir)]) == 0
    assert f"already safe  {old}" in capsys.readouterr().out

    _resume_and_compare(cfg, workdir, full)


def test_checkpoints_are_kept_to_the_last_n(cfg, full):
    assert cfg.train.keep_checkpoints == 2  # the uninterrupted run kept the default 2
    assert [e for e, _ in ckpt.list_checkpoints(full[0])] == [1, 2]
    assert (full[0] / "final/teacher_backbone.pt").exists()
