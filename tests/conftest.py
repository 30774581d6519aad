"""Shared test set-up: one thread per test process, deterministic seeds, isolated dinolab home."""

from pathlib import Path

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


# The tests' own tiny experiment (a 1-block ViT/4 on 32 px synthetic images, out_dim 32); no test but the demo's
# learning test builds on experiments/demo.yaml, so tuning the demo changes no other test.
TINY_EXPERIMENT = Path(__file__).parent / "fixtures" / "tiny.yaml"


@pytest.fixture(scope="session")
def tiny_experiment() -> Path:
    return TINY_EXPERIMENT


@pytest.fixture(scope="session")
def tiny_config():
    """Factory: ``tiny_config("train.epochs=3", ...)`` -> the tiny experiment's config with these --set overrides."""
    from dinolab.config import load_experiment

    return lambda *overrides: load_experiment(TINY_EXPERIMENT, list(overrides))


@pytest.fixture(scope="session")
def write_grid():
    """Factory: ``write_grid(folder, name, rows, seeds=(0,), set=None, **top)`` writes ``folder/<name>.yaml``, a grid
    over the tiny experiment, and returns its path. rows: ``{row name: its --set delta}`` or a list of row mappings;
    set: the grid-level delta; other keyword arguments are top-level grid keys (resources, columns, ...)."""
    import yaml

    def write(folder, name: str, rows, seeds=(0,), set=None, **top) -> Path:
        if isinstance(rows, dict):
            rows = [{"name": row, "set": delta} for row, delta in rows.items()]
        doc = {"grid": name, "base": str(TINY_EXPERIMENT), "seeds": list(seeds), "set": dict(set or {}), "rows": rows, **top}
        path = Path(folder) / f"{name}.yaml"
        path.write_text(yaml.safe_dump(doc, sort_keys=False))
        return path

    return write


@pytest.fixture
def repo_root():
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
