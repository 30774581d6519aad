"""What the MLflow store says about a grid's trials: runs by trial id, the grid's parent run, grid tags.

A trial is identified by the tag ``dinolab.trial_id``; it may have several runs, of which one is current
(``contract.current_run``). What a trial's runs mean, and what a launch does with them, is
``dinolab.lifecycle``'s: this module only reads runs and keeps the grid tags and parent runs.

Every function takes an ``MlflowClient`` bound to an absolute tracking URI.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Iterable, Optional

from dinolab.track import contract
from dinolab.track.contract import RunRecord, current_run, tag_grids  # noqa: F401 (re-exported)

from .locks import FileLock, parent_lock_path, tags_lock_path

log = logging.getLogger(__name__)


def store_exists(uri: str) -> bool:
    """False for a SQLite store whose file is not there yet (reading it would create it)."""
    if uri.startswith("sqlite:///"):
        return Path(uri[len("sqlite:///"):]).exists()
    return True


def open_client(uri: str):
    """An MlflowClient whose store's tables exist (created here if needed).

    Two processes opening a fresh SQLite file at the same moment race in MLflow's schema migration
    ("duplicate column"), so for SQLite the first touch happens under a lock file beside the database.
    """
    from dinolab.track.mlflow_store import client_for

    if not uri.startswith("sqlite:///"):
        return client_for(uri)
    db = Path(uri[len("sqlite:///"):])
    db.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(db.with_name(db.name + ".init.lock")):
        return client_for(uri)  # MlflowClient builds its store at once: tables created / migrated here


def init_store(client, experiment: str) -> str:
    """The experiment's id, created by the driver before any trial writes."""
    from dinolab.track.mlflow_store import get_or_create_experiment

    return get_or_create_experiment(client, experiment)


def active_experiment_ids(client) -> list[str]:
    ids, token = [], None
    while True:
        page = client.search_experiments(max_results=1000, page_token=token)
        ids.extend(e.experiment_id for e in page)
        token = page.token
        if not token:
            return ids


def _search(client, experiment_ids: list[str], filter_string: str) -> list[RunRecord]:
    from mlflow.entities import ViewType

    out, token = [], None
    while experiment_ids:
        page = client.search_runs(experiment_ids, filter_string, run_view_type=ViewType.ACTIVE_ONLY, max_results=1000, page_token=token)
        out.extend(RunRecord.of(r) for r in page)
        token = page.token
        if not token:
            break
    return out


def trial_runs(client, trial_ids: Optional[Iterable[str]] = None) -> dict[str, list[RunRecord]]:
    """Runs of each trial id (every experiment of the store), newest first; ids without runs map to []."""
    wanted = None if trial_ids is None else list(dict.fromkeys(trial_ids))
    experiments = active_experiment_ids(client)
    if wanted is not None and len(wanted) <= 8:  # a few ids: one indexed query each
        records = [r for tid in wanted for r in _search(client, experiments, f"tags.`{contract.TRIAL_ID}` = '{tid}'")]
    else:
        records = _search(client, experiments, f"tags.`{contract.TRIAL_ID}` IS NOT NULL")
    out: dict[str, list[RunRecord]] = {tid: [] for tid in wanted or []}
    for rec in records:
        if wanted is None or rec.trial_id in out:
            out.setdefault(rec.trial_id, []).append(rec)
    for recs in out.values():
        recs.sort(key=lambda r: (r.start_time, r.run_id), reverse=True)
    return out


# ----------------------------------------------------------------------------- grid tags


def add_grid(client, storage: Path, trial_id: str, run_id: str, grid: str) -> bool:
    """Tag a run as used by ``grid`` (``dinolab.grid.<grid>=1`` and the ``dinolab.grids`` list).

    A read-modify-write of the list, done under the trial's tags lock so two grids never lose
    each other's tag. Returns False when the run already had it.
    """
    from mlflow.entities import RunTag

    with FileLock(tags_lock_path(storage, trial_id)):
        tags = dict(client.get_run(run_id).data.tags)
        grids = tag_grids(tags)
        if grid in grids and tags.get(contract.GRID_PREFIX + grid) == "1":
            return False
        grids.add(grid)
        client.log_batch(run_id, tags=[RunTag(contract.GRID_PREFIX + grid, "1"), RunTag(contract.GRIDS, ",".join(sorted(grids)))])
        return True


# ----------------------------------------------------------------------------- the grid's parent run


def find_parent_run(client, experiment_ids: str | Iterable[str], grid: str) -> Optional[RunRecord]:
    """The grid's parent run (tag ``dinolab.grid_parent=<grid>``) in these experiments, the oldest if several."""
    ids = [experiment_ids] if isinstance(experiment_ids, str) else list(experiment_ids)
    found = _search(client, ids, f"tags.`{contract.PARENT_GRID}` = '{grid}'")
    return min(found, key=lambda r: (r.start_time, r.run_id)) if found else None


def parent_runs(client, experiment_ids: Iterable[str]) -> dict[str, RunRecord]:
    """Every grid's parent run in these experiments: ``{grid: its oldest parent run}`` (as ``find_parent_run``)."""
    out: dict[str, RunRecord] = {}
    for rec in _search(client, list(experiment_ids), f"tags.`{contract.PARENT_GRID}` IS NOT NULL"):
        grid = rec.tags[contract.PARENT_GRID]
        if grid not in out or (rec.start_time, rec.run_id) < (out[grid].start_time, out[grid].run_id):
            out[grid] = rec
    return out


def open_parent_run(client, experiment_id: str, grid: str, storage: Path, tags: dict[str, str]) -> str:
    """Find the grid's parent run and mark it RUNNING, or create it; under the grid's parent lock."""
    from mlflow.entities import RunTag

    with FileLock(parent_lock_path(storage, grid)):
        rec = find_parent_run(client, experiment_id, grid)
        if rec is None:
            run = client.create_run(experiment_id, run_name=f"grid {grid}", tags={**tags, contract.PARENT_GRID: grid})
            log.info("grid %s: created parent run %s", grid, run.info.run_id)
            return run.info.run_id
        client.update_run(rec.run_id, status="RUNNING")
        client.log_batch(rec.run_id, tags=[RunTag(k, str(v)[:5000]) for k, v in tags.items()])
        log.info("grid %s: reopened parent run %s", grid, rec.run_id)
        return rec.run_id


def close_parent_run(client, run_id: str, status: str, summary: dict[str, str]) -> None:
    from mlflow.entities import RunTag

    client.log_batch(run_id, tags=[RunTag(k, str(v)) for k, v in summary.items()])
    client.set_terminated(run_id, status=status)
