"""Shared test set-up: one thread per test process, deterministic seeds, isolated dinolab home."""

import os

import pytest
import torch

torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _one_thread_after_each_test():
    """A test may train with more threads (``train.threads=2`` sets torch's global count); every later test gets
    one thread back. Without this a test that forks workers after it (tests/test_losses_distributed.py) hangs:
    a child forked from a process whose OpenMP pool ran 2 threads waits forever in its first parallel region."""
    yield
    torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _isolated_home(tmp_path, monkeypatch):
    """Every test gets its own dinolab home and no inherited tracking URI."""
    monkeypatch.setenv("DINOLAB_HOME", str(tmp_path / "dinolab_home"))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    yield


# A trial small enough for unit tests: a 1-block ViT/4 on 32 px synthetic images, out_dim 32.
TINY = [
    "train.epochs=2",
    "train.steps_per_epoch=2",
    "train.batch_size=16",
    "train.warmup_epochs=1",
    "train.progress=false",
    "train.threads=1",
    "data.synthetic_train=64",
    "data.synthetic_test=32",
    "dino.out_dim=32",
    "dino.hidden_dim=32",
    "dino.bottleneck_dim=16",
    "model.embed_dim=32",
    "model.depths=[1]",
    "model.num_heads=2",
    "crops.local_number=2",
    "eval.linear_epochs=2",
]


@pytest.fixture
def tiny_overrides():
    return list(TINY)


@pytest.fixture
def repo_root():
    from pathlib import Path

    return Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def _template_store(tmp_path_factory):
    """An initialised MLflow SQLite store, built once: creating one runs ~20 s of alembic migrations."""
    from mlflow.tracking import MlflowClient

    path = tmp_path_factory.mktemp("mlflow_template") / "mlflow.db"
    MlflowClient(tracking_uri=f"sqlite:///{path}").search_experiments()
    return path


@pytest.fixture
def store(_template_store, tmp_path):
    """A fresh, already-migrated SQLite tracking URI for one test."""
    import shutil

    path = tmp_path / "mlflow.db"
    shutil.copy(_template_store, path)
    return f"sqlite:///{path}"
