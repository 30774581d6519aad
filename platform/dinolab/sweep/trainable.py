"""The Ray Tune trial function: claim the trial, decide run / resume / reuse, call ``run_trial``.

Each Tune trial carries one ``TrialTask`` (everything absolute: Ray moves the trial's working
directory). The function

1. returns at once when the grid's cancel marker exists; fails (Tune retries elsewhere) on a node that
   does not see the launch's storage root (a node an autoscaler added after the pre-flight check);
2. takes the trial's claim (``lifecycle.claim``), waiting while another launch trains it (and giving up
   if the grid is cancelled meanwhile); the lock dies with this process;
3. under the claim, reads the trial's runs again and asks ``lifecycle.decide``: a FINISHED run that this
   launch does not replace means someone finished it while we waited, so the run is only tagged with
   this grid; otherwise the run the trial folder holds is resumed (a retry or a relaunch), or a new run
   supersedes the replaced / orphaned ones;
5. trains through ``dinolab.trial.run_trial`` (one process, or a worker group for ``workers > 1``),
   reporting each epoch to Tune; unexpected errors propagate so Tune retries from the checkpoint.
   The run records the Ray node it runs on (``dinolab.node``, ``dinolab.node_ip``) and every node
   it ran on, retries included (``dinolab.nodes``, comma list in order).

The trainer is imported inside the function (a launcher is only an adapter).
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Optional

from dinolab.track import contract

log = logging.getLogger(__name__)


@dataclass
class TrialTask:
    """What one Tune trial needs; plain data (sent to Ray as a dict)."""

    trial_id: str
    grid: str
    row: str
    seed: int
    config: dict  # the resolved config (config_to_dict), tracking.uri and resources set
    storage: str  # absolute storage root
    tracking_uri: str  # absolute
    parent_run_id: Optional[str] = None
    rerun: bool = False  # start over, superseding the runs in ``replace``
    replace: list[str] = field(default_factory=list)  # run ids the plan saw (the ones --rerun replaces)
    workers: int = 1
    cpus_per_worker: float = 1.0
    gpus_per_worker: float = 0.0
    claim_poll_s: float = 0.5
    storage_marker: Optional[str] = None  # the launch's nonce file under the storage root (cluster launches)
    storage_nonce: Optional[str] = None

    def to_dict(self) -> dict:
        return asdict(self)


def node_tags(previous: str = "") -> dict[str, str]:
    """Tags naming this process's Ray node; ``previous``: the run's ``dinolab.nodes`` so far. {} outside Ray."""
    from .cluster import current_node

    node = current_node()
    if not node:
        return {}
    nodes = [n for n in previous.split(",") if n]
    if not nodes or nodes[-1] != node["id"]:
        nodes.append(node["id"])
    return {contract.NODE: node["id"], contract.NODE_IP: node["ip"], contract.NODES: ",".join(nodes)}


def execute_task(task: TrialTask, on_epoch: Optional[Callable[[int, dict], None]] = None) -> dict:
    """Run one task to its end (see the module docstring); returns a summary dict for Tune.

    ``outcome``: finished | failed | killed (cancelled) | reused (finished elsewhere) | cancelled (before start).
    """
    from dinolab import lifecycle
    from dinolab.config import build_config

    from . import store
    from .locks import cancel_marker

    storage = Path(task.storage)
    tid = task.trial_id
    marker = cancel_marker(storage, task.grid)
    if marker.exists():
        return {"outcome": "cancelled", "trial_id": tid}
    if task.storage_marker:
        from .cluster import verify_launch_marker

        verify_launch_marker(task.storage_marker, task.storage_nonce or "", task.storage)
    claim = lifecycle.claim(storage, tid)
    if not claim.acquire(blocking=True, poll_s=task.claim_poll_s, abort=marker.exists):
        return {"outcome": "cancelled", "trial_id": tid}
    try:
        client = store.open_client(task.tracking_uri)
        runs = store.trial_runs(client, [tid])[tid]
        workdir = lifecycle.folder(storage, tid)
        decision = lifecycle.decide(runs, lifecycle.read_folder(workdir), workdir, rerun=task.rerun, replace=task.replace)
        if decision.action == lifecycle.REUSE:
            if decision.run.status == "FINISHED":
                # Finished by another launch (or grid) while this one waited: it serves this grid too.
                store.add_grid(client, storage, tid, decision.run.run_id, task.grid)
            return {"outcome": "reused", "trial_id": tid, "run_id": decision.run.run_id}
        resume = decision.action == lifecycle.RESUME
        cfg = build_config(task.config, source=f"grid {task.grid} row {task.row!r} seed {task.seed}")
        if cfg.train.threads is None:
            cfg.train.threads = max(1, int(task.cpus_per_worker))
        grids = {task.grid}.union(*(r.grids for r in runs)) if runs else {task.grid}

        train_fn = None
        if task.workers > 1:
            from .distributed import WorkerGroupTrainer

            train_fn = WorkerGroupTrainer(task.workers, task.cpus_per_worker, task.gpus_per_worker)
        where = node_tags(decision.run.tags.get(contract.NODES, "") if resume else "")
        if where:
            train_fn = _tagging(train_fn, where)

        from dinolab.trial import run_trial

        outcome = run_trial(
            cfg,
            tracking_uri=task.tracking_uri,
            storage=storage,
            parent_run_id=task.parent_run_id,
            grids=sorted(grids),
            decision=decision,
            should_stop=marker.exists,
            raise_errors=True,
            on_epoch_end=on_epoch,
            train_fn=train_fn,
        )
        summary = {"outcome": outcome.status.lower(), "trial_id": tid, "run_id": outcome.run_id}
        summary.update({k: float(v) for k, v in outcome.final.items() if k in (contract.KNN_TOP1, contract.LINEAR_TOP1)})
        return summary
    finally:
        claim.release()


def _tagging(train_fn: Optional[Callable], tags: dict[str, str]) -> Callable:
    """``train_fn`` (default: the trainer) that first writes ``tags`` on the run it trains into."""

    def train_here(cfg, reporter, **kwargs):
        from dinolab.train.loop import train

        reporter.set_tags(tags)
        return (train_fn or train)(cfg, reporter, **kwargs)

    return train_here


def tune_trial(config: dict, tasks: dict) -> None:
    """The function Ray Tune runs: ``config = {"trial_id": ...}``, ``tasks`` = {trial id: TrialTask dict}."""
    from ray import tune

    from dinolab.train.loop import TrainingCancelled

    task = TrialTask(**tasks[config["trial_id"]])

    def on_epoch(epoch: int, metrics: dict) -> None:
        result = {"epoch": epoch + 1, **{k: float(v) for k, v in metrics.items()}}
        try:
            tune.report(result)
        except SystemExit:  # Tune stops a trial from inside report(): the scheduler stopped it
            raise TrainingCancelled(f"stopped by the Tune scheduler after epoch {epoch}") from None

    summary = execute_task(task, on_epoch)
    tune.report(summary)
