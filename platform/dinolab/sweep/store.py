"""What the MLflow store says about a grid's trials: runs by trial id, the grid's parent run, grid tags.

A trial is identified by the tag ``dinolab.trial_id``; it may have several runs (``--rerun`` tags the
old ones ``dinolab.superseded=true``). The run that counts is the newest one that is not superseded.
Its state is read together with the trial's claim lock (``locks.claim_path``): a RUNNING run whose
claim nobody holds belongs to a process that died (the ``dinolab.heartbeat`` tag says when it was
last seen) and is taken over by the next launch.

Every function takes an ``MlflowClient`` bound to an absolute tracking URI.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Optional

from .locks import FileLock, is_locked, claim_path, parent_lock_path, tags_lock_path

log = logging.getLogger(__name__)

TRIAL_TAG = "dinolab.trial_id"
PARENT_TAG = "dinolab.grid_parent"
SUPERSEDED_TAG = "dinolab.superseded"
GRIDS_TAG = "dinolab.grids"
GRID_TAG_PREFIX = "dinolab.grid."
EARLY_STOP_TAG = "dinolab.early_stopped"
HEARTBEAT_TAG = "dinolab.heartbeat"
REASON_TAG = "dinolab.failure_reason"

# Trial states shown by `dinolab status` / `--dry-run`.
FINISHED = "finished"
RUNNING = "running"
INTERRUPTED = "interrupted"  # RUNNING in MLflow, but nobody holds its claim: the owner died
FAILED = "failed"
CANCELLED = "cancelled"  # KILLED by --cancel: resumes from its checkpoint at the next launch
STOPPED = "stopped early"  # KILLED by the ASHA scheduler: done for that search
MISSING = "missing"
DONE_STATES = (FINISHED, STOPPED)


@dataclass
class RunRecord:
    run_id: str
    experiment_id: str
    status: str  # MLflow: RUNNING | FINISHED | FAILED | KILLED | SCHEDULED
    start_time: int  # ms
    end_time: Optional[int]
    tags: dict[str, str] = field(default_factory=dict)

    @property
    def trial_id(self) -> str:
        return self.tags.get(TRIAL_TAG, "")

    @property
    def superseded(self) -> bool:
        return self.tags.get(SUPERSEDED_TAG, "").lower() == "true"

    @property
    def early_stopped(self) -> bool:
        return self.tags.get(EARLY_STOP_TAG, "").lower() == "true"

    @property
    def grids(self) -> set[str]:
        return tag_grids(self.tags)

    @property
    def heartbeat(self) -> Optional[float]:
        try:
            return float(self.tags[HEARTBEAT_TAG])
        except (KeyError, ValueError):
            return None

    @property
    def reason(self) -> str:
        return self.tags.get(REASON_TAG, "")


def tag_grids(tags: dict[str, str]) -> set[str]:
    """The grids a run serves: ``dinolab.grid.<name>`` tags and the ``dinolab.grids`` list."""
    grids = {k[len(GRID_TAG_PREFIX):] for k, v in tags.items() if k.startswith(GRID_TAG_PREFIX) and v == "1"}
    grids.update(g for g in tags.get(GRIDS_TAG, "").split(",") if g)
    return grids


def _record(run) -> RunRecord:
    info = run.info
    return RunRecord(info.run_id, info.experiment_id, info.status, int(info.start_time or 0), info.end_time, dict(run.data.tags))


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
        out.extend(_record(r) for r in page)
        token = page.token
        if not token:
            break
    return out


def trial_runs(client, trial_ids: Optional[Iterable[str]] = None) -> dict[str, list[RunRecord]]:
    """Runs of each trial id (every experiment of the store), newest first; ids without runs map to []."""
    wanted = None if trial_ids is None else list(dict.fromkeys(trial_ids))
    experiments = active_experiment_ids(client)
    if wanted is not None and len(wanted) <= 8:  # a few ids: one indexed query each
        records = [r for tid in wanted for r in _search(client, experiments, f"tags.`{TRIAL_TAG}` = '{tid}'")]
    else:
        records = _search(client, experiments, f"tags.`{TRIAL_TAG}` IS NOT NULL")
    out: dict[str, list[RunRecord]] = {tid: [] for tid in wanted or []}
    for rec in records:
        if wanted is None or rec.trial_id in out:
            out.setdefault(rec.trial_id, []).append(rec)
    for recs in out.values():
        recs.sort(key=lambda r: (r.start_time, r.run_id), reverse=True)
    return out


def current_run(records: Iterable[RunRecord]) -> Optional[RunRecord]:
    """The newest run that is not superseded (``records`` newest first)."""
    return next((r for r in records if not r.superseded), None)


def trial_state(record: Optional[RunRecord], claimed: bool, now: Optional[float] = None) -> tuple[str, str]:
    """(state, detail) of a trial from its current run and whether its claim lock is held."""
    now = time.time() if now is None else now
    if record is None:
        return (RUNNING, "starting") if claimed else (MISSING, "")
    beat = record.heartbeat
    seen = f"heartbeat {now - beat:.0f} s ago" if beat else "no heartbeat"
    epochs = record.tags.get("dinolab.epochs_done")
    progress = f", {epochs} epochs done" if epochs else ""
    if claimed and record.status != "FINISHED":
        return RUNNING, f"run {record.run_id}, {seen}{progress}"
    if record.status == "FINISHED":
        return FINISHED, f"run {record.run_id}"
    if record.status == "RUNNING":
        return INTERRUPTED, f"run {record.run_id}: owner gone ({seen}{progress}); resumes at the next launch"
    if record.status == "KILLED":
        if record.early_stopped:
            return STOPPED, f"run {record.run_id}: {record.reason}"
        return CANCELLED, f"run {record.run_id}: {record.reason or 'killed'}{progress}; resumes at the next launch"
    if record.status == "FAILED":
        return FAILED, f"run {record.run_id}: {record.reason or 'no reason recorded'}"
    return MISSING, f"run {record.run_id} is {record.status}"


def claimed(storage: Path, trial_id: str) -> bool:
    return is_locked(claim_path(storage, trial_id))


# ----------------------------------------------------------------------------- changing runs


def add_grid(client, storage: Path, trial_id: str, run_id: str, grid: str) -> bool:
    """Tag a run as used by ``grid`` (``dinolab.grid.<grid>=1`` and the ``dinolab.grids`` list).

    A read-modify-write of the list, done under the trial's tags lock so two grids never lose
    each other's tag. Returns False when the run already had it.
    """
    from mlflow.entities import RunTag

    with FileLock(tags_lock_path(storage, trial_id)):
        tags = dict(client.get_run(run_id).data.tags)
        grids = tag_grids(tags)
        if grid in grids and tags.get(GRID_TAG_PREFIX + grid) == "1":
            return False
        grids.add(grid)
        client.log_batch(run_id, tags=[RunTag(GRID_TAG_PREFIX + grid, "1"), RunTag(GRIDS_TAG, ",".join(sorted(grids)))])
        return True


def supersede(client, records: Iterable[RunRecord], reason: str) -> list[str]:
    """Tag runs ``dinolab.superseded=true``; one still marked RUNNING is closed as KILLED first."""
    from mlflow.entities import RunTag

    done = []
    for rec in records:
        if rec.superseded:
            continue
        if rec.status == "RUNNING":
            client.set_terminated(rec.run_id, status="KILLED")
        client.log_batch(rec.run_id, tags=[RunTag(SUPERSEDED_TAG, "true"), RunTag("dinolab.superseded_reason", reason[:4000])])
        done.append(rec.run_id)
    return done


def clear_failure(client, rec: RunRecord) -> None:
    """A failed run that a retry continues: its old reason becomes history, not the outcome."""
    from mlflow.entities import RunTag

    if rec.reason:
        client.log_batch(rec.run_id, tags=[RunTag("dinolab.previous_failure", rec.reason[:4000])])
        client.delete_tag(rec.run_id, REASON_TAG)


def mark_early_stopped(client, run_id: str, reason: str) -> None:
    """An ASHA-stopped trial: KILLED, tagged early-stopped (done for its search, not resumed)."""
    from mlflow.entities import RunTag

    client.log_batch(run_id, tags=[RunTag(EARLY_STOP_TAG, "true"), RunTag(REASON_TAG, reason)])
    client.set_terminated(run_id, status="KILLED")


# ----------------------------------------------------------------------------- the grid's parent run


def find_parent_run(client, experiment_id: str, grid: str) -> Optional[RunRecord]:
    """The grid's parent run (tag ``dinolab.grid_parent=<grid>``), the oldest if several."""
    found = _search(client, [experiment_id], f"tags.`{PARENT_TAG}` = '{grid}'")
    return min(found, key=lambda r: (r.start_time, r.run_id)) if found else None


def open_parent_run(client, experiment_id: str, grid: str, storage: Path, tags: dict[str, str]) -> str:
    """Find the grid's parent run and mark it RUNNING, or create it; under the grid's parent lock."""
    from mlflow.entities import RunTag

    with FileLock(parent_lock_path(storage, grid)):
        rec = find_parent_run(client, experiment_id, grid)
        if rec is None:
            run = client.create_run(experiment_id, run_name=f"grid {grid}", tags={**tags, PARENT_TAG: grid})
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
