"""MLflow as dinolab uses it: runs created, reopened and closed by dinolab itself (never by Ray's
callback, which duplicates runs on restore), metrics written in one batch per epoch.

Everything goes through ``MlflowClient`` bound to an explicit, absolute tracking URI: no fluent
global state, so several trials in one process (Ray actors) never share an active run.
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path
from typing import Optional

import numpy as np

from dinolab.home import default_artifact_root
from dinolab.track.contract import MLFLOW_PARENT_RUN

log = logging.getLogger(__name__)

MAX_TAG = 5000  # MLflow's tag value limit


def client_for(uri: str):
    from mlflow.tracking import MlflowClient

    from dinolab.home import redact_uri

    if redact_uri(uri) != uri:  # MLflow prints "View run at <tracking URI>", password included, when a run ends
        os.environ["MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT"] = "true"
    return MlflowClient(tracking_uri=uri)


def get_or_create_experiment(client, name: str) -> str:
    """Experiment id for ``name``; a SQLite store gets an absolute artifact folder in the dinolab home."""
    exp = client.get_experiment_by_name(name)
    if exp is not None:
        return exp.experiment_id
    location = None
    if client.tracking_uri.startswith("sqlite:"):
        location = (default_artifact_root() / name).as_uri()
    try:
        return client.create_experiment(name, artifact_location=location)
    except Exception:  # created concurrently by another process
        exp = client.get_experiment_by_name(name)
        if exp is None:
            raise
        return exp.experiment_id


def _clip(value) -> str:
    text = str(value)
    return text if len(text) <= MAX_TAG else text[: MAX_TAG - 3] + "..."


class MLflowReporter:
    """A ``Reporter`` writing into one MLflow run."""

    def __init__(self, client, run_id: str) -> None:
        self.client = client
        self.run_id = run_id

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        batch = [Metric(k, float(v), now, int(step)) for k, v in metrics.items() if v is not None and np.isfinite(v)]
        for i in range(0, len(batch), 1000):
            self.client.log_batch(self.run_id, metrics=batch[i : i + 1000])

    def set_tags(self, tags: dict[str, str]) -> None:
        from mlflow.entities import RunTag

        self.client.log_batch(self.run_id, tags=[RunTag(k, _clip(v)) for k, v in tags.items()])

    def log_params(self, params: dict[str, object]) -> None:
        from mlflow.entities import Param

        items = [Param(k, _clip(v)[:6000]) for k, v in params.items()]
        for i in range(0, len(items), 100):
            self.client.log_batch(self.run_id, params=items[i : i + 100])

    def log_artifact(self, path: Path, artifact_path: Optional[str] = None) -> None:
        self.client.log_artifact(self.run_id, str(path), artifact_path)

    def log_text(self, text: str, artifact_file: str) -> None:
        self.client.log_text(self.run_id, text, artifact_file)

    def log_image(self, image: np.ndarray, key: str, step: int) -> None:
        self.client.log_image(self.run_id, image, key=key, step=step)


def start_run(client, experiment_id: str, run_name: str, tags: dict[str, str], parent_run_id: Optional[str] = None) -> str:
    tags = {k: _clip(v) for k, v in tags.items()}
    if parent_run_id:
        tags[MLFLOW_PARENT_RUN] = parent_run_id
    run = client.create_run(experiment_id, run_name=run_name, tags=tags)
    return run.info.run_id


def reopen_run(client, run_id: str) -> None:
    """Mark an interrupted run RUNNING again; the resumed trial continues it."""
    client.update_run(run_id, status="RUNNING")


def end_run(client, run_id: str, status: str) -> None:
    client.set_terminated(run_id, status=status)
