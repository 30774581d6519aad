"""Shared test set-up: one thread per test process, deterministic seeds, isolated dinolab home."""

import os

import pytest
import torch

torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _isolated_home(tmp_path, monkeypatch):
    """Every test gets its own dinolab home and no inherited tracking URI."""
    monkeypatch.setenv("DINOLAB_HOME", str(tmp_path / "dinolab_home"))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    yield
