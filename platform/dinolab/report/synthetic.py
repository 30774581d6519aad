"""Runs recorded exactly as ``dinolab.trial.run_trial`` records them, without training: for report tests,
the report benchmark and demos of the tables on a fresh store.

The tags, params and summaries come from the trial's own functions (``trial_tags``, ``flatten(identity_dict)``,
``summaries``), so a change to what a trial logs reaches these runs too.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Iterable, Mapping, Optional, Sequence

from dinolab.config import ExperimentConfig, flatten, identity_dict, resolved_params
from dinolab.track import contract

STATUSES = ("FINISHED", "FAILED", "KILLED", "RUNNING")


def new_sqlite_store(path: str | os.PathLike) -> str:
    """An empty, initialised MLflow SQLite store at ``path``; returns its ``sqlite:////abs`` URI.

    MLflow builds a new database by running its migrations (10-20 s here); the result for the installed
    MLflow version is kept once in the temp folder and copied, so tests and benchmarks start in well under a second.
    """
    import mlflow
    from mlflow.tracking import MlflowClient

    path = Path(path).expanduser().resolve()
    path.parent.mkdir(parents=True, exist_ok=True)
    template = Path(tempfile.gettempdir()) / f"dinolab-mlflow-{mlflow.__version__}-{os.getuid()}.db"
    if not template.is_file():
        tmp = template.with_name(f"{template.name}.{os.getpid()}.tmp")
        MlflowClient(tracking_uri=f"sqlite:///{tmp}").search_experiments()  # runs the migrations
        os.replace(tmp, template)
    shutil.copyfile(template, path)
    return f"sqlite:///{path}"


def log_trial_run(
    client,
    experiment_id: str,
    cfg: ExperimentConfig,
    trial_id: str,
    *,
    status: str = "FINISHED",
    history: Optional[Mapping[str, Sequence[float]]] = None,
    final: Optional[Mapping[str, float]] = None,
    collapsed: bool = False,
    collapse_reason: str = "",
    failure_reason: str = "",
    grids: Iterable[str] = (),
    fingerprint: str = "synthetic",
    parent_run_id: Optional[str] = None,
    heartbeat: Optional[float] = None,
    device: str = "cpu",
) -> str:
    """Record one trial run; returns its run id.

    history: per-epoch metrics ``{name: [value per epoch]}`` logged at step = epoch, as the training loop does.
    final: the end-of-trial metrics (``knn_top1``, ``linear_top1``, ``throughput_images_per_s``, ...), logged
        with the ``final/ best/ last3/`` summaries of ``history`` when status is FINISHED.
    status: FINISHED | FAILED | KILLED | RUNNING (left open, with a heartbeat tag).
    """
    from mlflow.entities import Metric, Param, RunTag

    from dinolab.track.mlflow_store import end_run, start_run
    from dinolab.trial import summaries, trial_tags

    if status not in STATUSES:
        raise ValueError(f"status must be one of {', '.join(STATUSES)}, got {status!r}")
    history = {k: list(v) for k, v in (history or {}).items()}
    run_id = start_run(client, experiment_id, cfg.tracking.run_name or cfg.name, trial_tags(cfg, trial_id, fingerprint, grids), parent_run_id)
    ms = int(time.time() * 1000)
    epochs = max((len(v) for v in history.values()), default=0)
    # The same values the trial logs, written in few transactions (one per kind) to keep tests fast.
    metrics = [Metric(k, float(v[e]), ms, e) for e in range(epochs) for k, v in history.items() if e < len(v)]
    beat = heartbeat if heartbeat is not None else time.time()
    tags = {contract.DEVICE: device, contract.HEARTBEAT: str(int(beat)), contract.ATTEMPTS: "1",
            contract.EPOCHS_DONE: str(epochs)}
    if status == "FINISHED":
        finals = {**summaries(history), **dict(final or {}), contract.EPOCHS_DONE_METRIC: epochs}
        metrics += [Metric(k, float(v), ms, epochs) for k, v in finals.items()]
        tags.update({contract.COLLAPSED: "true" if collapsed else "false", contract.COLLAPSE_REASON: collapse_reason})
    if failure_reason:
        tags[contract.FAILURE_REASON] = failure_reason
    params = [Param(k, str(v)) for k, v in {**flatten(identity_dict(cfg)), **resolved_params(cfg)}.items()]
    run_tags = [RunTag(k, v) for k, v in tags.items()]
    if len(params) <= 100 and len(run_tags) <= 100 and len(params) + len(run_tags) + len(metrics) <= 1000:
        client.log_batch(run_id, metrics=metrics, params=params, tags=run_tags)  # MLflow's per-batch limits
    else:
        for i in range(0, len(params), 100):
            client.log_batch(run_id, params=params[i : i + 100])
        for i in range(0, len(metrics), 1000):
            client.log_batch(run_id, metrics=metrics[i : i + 1000])
        client.log_batch(run_id, tags=run_tags)
    if status != "RUNNING":
        end_run(client, run_id, status)
    return run_id


def supersede(client, run_id: str) -> None:
    """Mark a run replaced, as ``run_trial(fresh=True)`` does before it starts the new one."""
    client.set_tag(run_id, contract.SUPERSEDED, "true")
