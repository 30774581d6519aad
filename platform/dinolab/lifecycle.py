"""A trial's life, decided here and only here.

- ``TrialState``: the one vocabulary of what became of a trial (or a run), read from its MLflow run and its
  claim lock; ``dinolab status``, ``sweep --dry-run``, reports and dashboards all show these words.
- ``<storage>/trials/<id>/trial.json`` (``read_folder`` / ``begin_attempt`` / ``end_attempt``): the MLflow
  run whose checkpoints this folder holds, its status (MLflow's), and how many attempts the folder made.
- The claim (``claim``, ``claimed``): an flock on ``<storage>/trials/<id>/claim.lock``, held by whoever trains
  the trial; it dies with its process, so a RUNNING run nobody claims was left by a dead owner.
- ``decide``: what a launch does with a trial: reuse its finished run, resume the run its folder holds, or
  start fresh, superseding the runs it replaces (a rerun, or a take-over of a run trained elsewhere).
  ``prepare`` carries the decision out on the store and the folder; ``run_trial`` then records into the run.
- ``cancel``: the grid's cancel marker; running trials stop at their next step (runs KILLED, checkpoints kept).

The sweep schedules (``sweep/trainable.py`` asks ``decide`` under the claim); the trial trains and records
(``dinolab.trial``); neither decides a run's fate on its own.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Iterable, Optional

from dinolab.track import contract
from dinolab.track.contract import RunRecord, current_run


class TrialState(StrEnum):
    """What became of a trial: the state of its current run, read with its claim."""

    FINISHED = "finished"
    COLLAPSED = "collapsed"  # finished, but its teacher collapsed (tag dinolab.collapsed)
    STOPPED = "stopped early"  # KILLED by the ASHA scheduler: done for that search
    RUNNING = "running"  # its claim is held (or, where the claim cannot be seen, MLflow says RUNNING)
    INTERRUPTED = "interrupted"  # RUNNING in MLflow, but nobody holds its claim: the owner died; resumes
    CANCELLED = "cancelled"  # KILLED by --cancel: resumes from its checkpoint at the next launch
    FAILED = "failed"
    SUPERSEDED = "superseded"  # replaced by a newer run of the trial: never a trial's current run
    MISSING = "missing"  # never run


DONE = frozenset({TrialState.FINISHED, TrialState.COLLAPSED, TrialState.STOPPED})  # a launch runs these no more
MEASURED = frozenset({TrialState.FINISHED, TrialState.COLLAPSED})  # their numbers are final


def state_of(run: Optional[RunRecord], claimed: Optional[bool]) -> TrialState:
    """The state of a trial from its current run (None: it has none) and its claim.

    claimed: whether the trial's claim lock is held; None where it cannot be seen (the trial's folder is not
    on this machine): a run MLflow marks RUNNING is then taken at its word.
    """
    if run is None:
        return TrialState.RUNNING if claimed else TrialState.MISSING
    if run.superseded:
        return TrialState.SUPERSEDED
    if run.status == "FINISHED":
        return TrialState.COLLAPSED if run.collapsed else TrialState.FINISHED
    if claimed:
        return TrialState.RUNNING
    if run.status in ("RUNNING", "SCHEDULED"):
        return TrialState.RUNNING if claimed is None else TrialState.INTERRUPTED
    if run.status == "KILLED":
        return TrialState.STOPPED if run.early_stopped else TrialState.CANCELLED
    if run.status == "FAILED":
        return TrialState.FAILED
    return TrialState.MISSING


def describe(run: Optional[RunRecord], claimed: Optional[bool], now: Optional[float] = None) -> tuple[TrialState, str]:
    """(state, one line on it) of a trial, as ``dinolab status`` prints it."""
    state = state_of(run, claimed)
    if run is None:
        return state, "starting" if state == TrialState.RUNNING else ""
    now = time.time() if now is None else now
    beat = run.heartbeat
    seen = f"heartbeat {now - beat:.0f} s ago" if beat else "no heartbeat"
    progress = f", {run.epochs_done} epochs done" if run.epochs_done else ""
    detail = {
        TrialState.RUNNING: f"{seen}{progress}",
        TrialState.INTERRUPTED: f"owner gone ({seen}{progress}); resumes at the next launch",
        TrialState.CANCELLED: f"{run.reason or 'killed'}{progress}; resumes at the next launch",
        TrialState.STOPPED: run.reason,
        TrialState.FAILED: run.reason or "no reason recorded",
        TrialState.COLLAPSED: run.collapse_reason or "collapsed",
        TrialState.MISSING: f"is {run.status}",
    }.get(state)
    sep = ", " if state == TrialState.RUNNING else ": " if state != TrialState.MISSING else " "
    return state, f"run {run.run_id}" + (f"{sep}{detail}" if detail else "")


# ----------------------------------------------------------------------------- the trial folder and its claim


def folder(storage: Path, trial_id: str) -> Path:
    from dinolab.home import trial_dir

    return trial_dir(storage, trial_id)


def claim(storage: Path, trial_id: str):
    """The trial's claim lock (a ``FileLock``, not yet taken)."""
    from dinolab.sweep.locks import FileLock, claim_path

    return FileLock(claim_path(storage, trial_id))


def claimed(storage: Path, trial_id: str) -> bool:
    from dinolab.sweep.locks import claim_path, is_locked

    return is_locked(claim_path(storage, trial_id))


def claim_seen(storage: Path, trial_id: str) -> Optional[bool]:
    """``claimed``, or None when the trial's folder is not under ``storage`` here (the claim cannot be seen)."""
    return claimed(storage, trial_id) if folder(storage, trial_id).is_dir() else None


def read_folder(workdir: Path) -> dict:
    """The folder's ``trial.json``: {run_id, trial_id, status (MLflow's), attempts, reason, tracking_uri}; {} if none."""
    try:
        return json.loads((workdir / "trial.json").read_text())
    except (OSError, ValueError):
        return {}


def _write_folder(workdir: Path, state: dict) -> None:
    workdir.mkdir(parents=True, exist_ok=True)
    tmp = workdir / f"trial.json.tmp{os.getpid()}"
    tmp.write_text(json.dumps(state, indent=1))
    os.replace(tmp, workdir / "trial.json")


def begin_attempt(workdir: Path, trial_id: str, run_id: str, tracking_uri: str) -> int:
    """Record that this folder now trains ``run_id``; returns the folder's attempt number (1, 2, ...)."""
    attempts = int(read_folder(workdir).get("attempts", 0)) + 1
    _write_folder(workdir, {"run_id": run_id, "trial_id": trial_id, "status": "RUNNING", "attempts": attempts,
                            "tracking_uri": tracking_uri})
    return attempts


def end_attempt(workdir: Path, status: str, reason: str = "") -> None:
    """Record how the attempt ended (MLflow's status: FINISHED | FAILED | KILLED)."""
    state = read_folder(workdir)
    state.update(status=status, reason=reason)
    _write_folder(workdir, state)


# ----------------------------------------------------------------------------- the decision of a launch

REUSE, RESUME, FRESH = "reuse", "resume", "fresh"


@dataclass
class Decision:
    """What a launch does with a trial."""

    action: str  # REUSE | RESUME | FRESH
    run: Optional[RunRecord] = None  # REUSE: the done run; RESUME: the run continued
    stale: list[RunRecord] = field(default_factory=list)  # FRESH: the runs the new run supersedes
    why: str = ""  # FRESH: why the stale runs are superseded
    folder: dict = field(default_factory=dict)  # the trial.json it was decided on
    runs: list[RunRecord] = field(default_factory=list)  # every run of the trial


def decide(runs: Iterable[RunRecord], folder_state: dict, workdir: Path, *, reuse: bool = True, rerun: bool = False,
           replace: Optional[Iterable[str]] = None) -> Decision:
    """Reuse, resume or start fresh; see the module docstring.

    runs: every run of the trial. folder_state: its folder's ``trial.json``.
    reuse: keep a finished (or early-stopped) current run (the sweep); ``dinolab run`` trains again.
    rerun: start over, superseding the current run when it is one of ``replace`` (None: whatever it is).
    Only a run this folder holds the checkpoints of (``trial.json`` names it) is resumed; another unfinished
    run is taken over: superseded, and the trial starts fresh here.
    """
    runs = list(runs)
    current = current_run(runs)
    replaced = rerun and current is not None and (replace is None or current.run_id in set(replace))
    if reuse and current is not None and not replaced:
        if current.status == "FINISHED" or (current.early_stopped and not rerun):
            return Decision(REUSE, current, folder=folder_state, runs=runs)
    if (current is not None and not replaced and current.status != "FINISHED"
            and folder_state.get("run_id") == current.run_id):
        return Decision(RESUME, current, folder=folder_state, runs=runs)
    if replaced:
        why = "replaced by --rerun" if replace is not None else "replaced by --fresh"
    elif current is not None and current.status == "FINISHED":
        why = "trained again"
    else:
        why = f"taken over: its checkpoints are not under {workdir}"
    return Decision(FRESH, None, [r for r in runs if not r.superseded], why, folder_state, runs)


def prepare(client, decision: Decision, workdir: Path) -> None:
    """Carry a RESUME or FRESH decision out: a resumed run's old failure becomes history; a fresh start
    supersedes the stale runs and empties the folder's checkpoints."""
    if decision.action == RESUME:
        clear_failure(client, decision.run)
    elif decision.action == FRESH:
        supersede(client, decision.stale, decision.why)
        shutil.rmtree(workdir / "checkpoints", ignore_errors=True)
        shutil.rmtree(workdir / "final", ignore_errors=True)


# ----------------------------------------------------------------------------- changing runs


def supersede(client, records: Iterable[RunRecord], reason: str) -> list[str]:
    """Tag runs ``dinolab.superseded=true``; one still marked RUNNING is closed as KILLED first."""
    from mlflow.entities import RunTag

    done = []
    for rec in records:
        if rec.superseded:
            continue
        if rec.status == "RUNNING":
            client.set_terminated(rec.run_id, status="KILLED")
        client.log_batch(rec.run_id, tags=[RunTag(contract.SUPERSEDED, "true"), RunTag(contract.SUPERSEDED_REASON, reason[:4000])])
        done.append(rec.run_id)
    return done


def clear_failure(client, rec: RunRecord) -> None:
    """A failed run that a retry continues: its old reason becomes history, not the outcome."""
    from mlflow.entities import RunTag

    if rec.reason:
        client.log_batch(rec.run_id, tags=[RunTag(contract.PREVIOUS_FAILURE, rec.reason[:4000])])
        client.delete_tag(rec.run_id, contract.FAILURE_REASON)


def mark_early_stopped(client, run_id: str, reason: str) -> None:
    """An ASHA-stopped trial: KILLED, tagged early-stopped (done for its search, not resumed)."""
    from mlflow.entities import RunTag

    client.log_batch(run_id, tags=[RunTag(contract.EARLY_STOPPED, "true"), RunTag(contract.FAILURE_REASON, reason)])
    client.set_terminated(run_id, status="KILLED")


def cancel(grid, storage: Path) -> tuple[Path, list[str]]:
    """Write the grid's cancel marker; returns it and the ids of the trials running now."""
    from dinolab.sweep.locks import request_cancel

    marker = request_cancel(storage, grid.name)
    ids = list(dict.fromkeys(t.trial_id for t in grid.trials))
    return marker, [tid for tid in ids if claimed(storage, tid)]
