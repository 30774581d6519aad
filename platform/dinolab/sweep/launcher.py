"""Plan a grid against the MLflow store, then run what is missing on Ray Tune.

Planning (no Ray): expand the grid, look up each trial id's runs, and decide per trial:
  done   a FINISHED run (newest not superseded) exists: nothing runs; the run gets this grid's tag;
  run    missing, interrupted (owner died), cancelled, or claimed by a live launch (the trial waits
         for the claim, then reuses or resumes);
  skip   failed (unless --rerun-failed); --rerun makes every trial ``run`` from scratch.
Launching: start Ray locally (isolated) or join a cluster, check that one trial's resources fit the
nodes (or the largest node an autoscaler can add, or wait for nodes), on a cluster refuse a local
store and check that every node sees the storage root (``cluster``), create the store and experiment in the driver, find or create the grid's parent run under a
lock, and run one Tune trial per planned trial through ``Tuner`` (FIFO, or ASHA for searches) with
``FailureConfig(max_failures)``. Tune experiments are never restored (a search space cannot change
on restore): every launch is a new Tune experiment over the trials still missing, and each trial
finds its own checkpoint under ``<storage>/trials/<id>/``.
"""

from __future__ import annotations

import logging
import os
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Optional

from dinolab.config import ConfigError, config_to_dict
from dinolab.home import default_storage, redact_uri, resolve_tracking_uri

from dinolab import lifecycle
from dinolab.lifecycle import TrialState
from dinolab.track import contract

from . import cluster, store
from .locks import FileLock, clear_cancel, launch_lock_path, storage_root
from .trainable import TrialTask
from .view import DONE as DONE_VIEW, FAILED as FAILED_VIEW, GridView, TrialLine, tune_view

log = logging.getLogger(__name__)

SCHEDULERS = ("fifo", "asha")
ASHA_METRIC, ASHA_MODE = contract.KNN_TOP1, "max"
DONE, RUN, SKIP = "done", "run", "skip"


# ----------------------------------------------------------------------------- the grid


def resource_overrides(workers: Optional[int] = None, cpus_per_worker: Optional[float] = None,
                       gpus_per_worker: Optional[float] = None) -> list[tuple[str, object]]:
    """Command-line resources as overrides (runtime fields: trial ids do not change)."""
    out: list[tuple[str, object]] = []
    for key, value in (("workers", workers), ("cpus_per_worker", cpus_per_worker), ("gpus_per_worker", gpus_per_worker)):
        if value is not None:
            out.append((f"resources.{key}", value))
    return out


def load_sweep_grid(path, overrides: Iterable = (), workers=None, cpus_per_worker=None, gpus_per_worker=None):
    """The grid with ``--set`` overrides and command-line resources applied (they win over ``resources:``)."""
    from dinolab.config.grid import load_grid

    return load_grid(path, [*overrides, *resource_overrides(workers, cpus_per_worker, gpus_per_worker)])


@dataclass
class PlanItem:
    trial: object  # dinolab.config.grid.Trial
    trial_id: str
    state: TrialState
    detail: str
    action: str
    runs: list = field(default_factory=list)  # RunRecord, newest first

    @property
    def current(self) -> Optional[store.RunRecord]:
        return store.current_run(self.runs)


@dataclass
class Plan:
    grid: object  # dinolab.config.grid.Grid
    storage: Path
    tracking_uri: str
    experiment: str
    items: list[PlanItem]
    rerun: bool = False

    @property
    def to_run(self) -> list[PlanItem]:
        return [i for i in self.items if i.action == RUN]

    def counts(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for item in self.items:
            out[item.state] = out.get(item.state, 0) + 1
        return out


def grid_tracking(grid) -> tuple[str, str]:
    """(absolute tracking URI, experiment name) shared by every trial of the grid."""
    pairs = {(resolve_tracking_uri(t.config.tracking.uri), t.config.tracking.experiment) for t in grid.trials}
    if len(pairs) > 1:
        raise ConfigError(f"{grid.path}: tracking.uri / tracking.experiment differ between rows ({sorted(pairs)}); "
                          f"a grid records into one store and experiment")
    if not pairs:
        raise ConfigError(f"{grid.path}: the grid has no runnable trials")
    return pairs.pop()


def plan_grid(grid, storage: Optional[Path] = None, *, rerun: bool = False, rerun_failed: bool = False,
              strict: bool = True) -> Plan:
    """Each trial's state (MLflow + claim locks) and what a launch would do with it; writes nothing.

    strict=False (dry run, status): a trial whose id cannot be computed (its data folder is not on this
    machine) is left out of the plan instead of raising; the table shows it with id ``?``.
    """
    storage = storage_root(storage or default_storage())
    uri, experiment = grid_tracking(grid)
    seen: dict[str, object] = {}
    trials = []
    for t in grid.trials:
        try:
            tid = t.trial_id
        except ConfigError:
            if strict:
                raise
            continue
        if tid in seen:  # rows that differ only in runtime fields are one trial
            continue
        seen[tid] = t
        trials.append((tid, t))
    runs: dict[str, list] = {tid: [] for tid, _ in trials}
    if store.store_exists(uri):
        from dinolab.migrate import require_current_scheme

        client = store.open_client(uri)
        require_current_scheme(uri, storage, client)
        runs = store.trial_runs(client, [tid for tid, _ in trials])
    items = []
    for tid, t in trials:
        current = store.current_run(runs[tid])
        state, detail = lifecycle.describe(current, lifecycle.claimed(storage, tid))
        if rerun:
            action = RUN
        elif state in lifecycle.DONE:
            action = DONE
        elif state == TrialState.FAILED:
            action = RUN if rerun_failed else SKIP
        else:
            action = RUN
        items.append(PlanItem(t, tid, state, detail, action, runs[tid]))
    return Plan(grid, storage, uri, experiment, items, rerun=rerun)


def format_plan(plan: Plan, with_detail: bool = True) -> str:
    """The trial table (row, seed, overrides, id, status) of the grid module, plus each trial's detail."""
    from dinolab.config.grid import dry_run_table

    statuses = {i.trial_id: i.state + ("" if i.action != RUN or i.state == TrialState.MISSING else " -> runs") for i in plan.items}
    text = dry_run_table(plan.grid, statuses)
    notes = [f"  {i.trial_id}  {i.trial.row} seed {i.trial.seed}: {i.detail}" for i in plan.items if i.detail and with_detail]
    if notes:
        text += "\n" + "\n".join(notes) + "\n"
    counts = ", ".join(f"{n} {s}" for s, n in sorted(plan.counts().items()))
    text += f"\n{len(plan.items)} trials: {counts}; a launch would run {len(plan.to_run)}\n"
    return text


# ----------------------------------------------------------------------------- Ray


def connect_ray(address: Optional[str] = None) -> bool:
    """Join ``address`` (or $RAY_ADDRESS), else start an isolated local Ray; True if this call started it.
    The job's workers get the driver's test hooks (``dinolab.train.faults``) in their environment."""
    import ray

    from dinolab.train.faults import runtime_env

    if ray.is_initialized():
        return False
    address = address or os.environ.get("RAY_ADDRESS")
    if address:
        ray.init(address=address, logging_level=logging.WARNING, runtime_env=runtime_env())
    else:
        ray.init(address="local", include_dashboard=False, logging_level=logging.WARNING, runtime_env=runtime_env())
    return True


def _fmt_res(cpu: float, gpu: float) -> str:
    return f"{cpu:g} CPU, {gpu:g} GPU"


def check_resources(requests: Iterable[tuple[int, float, float]], nodes: list[dict]) -> None:
    """Fail before launch (ConfigError, one line) when a trial's request fits no node / the cluster.

    requests: (workers, cpus_per_worker, gpus_per_worker) per trial; nodes: ``ray.nodes()``.
    A worker's bundle must fit one node; a trial's workers together must fit the alive nodes.
    """
    alive = [n.get("Resources", {}) for n in nodes if n.get("Alive", True)]
    if not alive:
        raise ConfigError("resources: the Ray cluster has no alive node")
    biggest = max(alive, key=lambda r: (r.get("GPU", 0.0), r.get("CPU", 0.0)))
    total_cpu = sum(r.get("CPU", 0.0) for r in alive)
    total_gpu = sum(r.get("GPU", 0.0) for r in alive)
    cluster = f"{len(alive)} node(s), {_fmt_res(total_cpu, total_gpu)} in all, largest node {_fmt_res(biggest.get('CPU', 0.0), biggest.get('GPU', 0.0))}"
    for workers, cpu, gpu in sorted(set(requests)):
        fits_a_node = any(r.get("CPU", 0.0) >= cpu and r.get("GPU", 0.0) >= gpu for r in alive)
        if not fits_a_node:
            raise ConfigError(
                f"resources: one worker asks for {_fmt_res(cpu, gpu)} but no node has that much ({cluster}); "
                f"lower --cpus-per-worker / --gpus-per-worker or join a bigger cluster with --address"
            )
        # Whole workers per node (a bundle cannot straddle nodes); fractional requests pack.
        slots = sum(_slots(r, cpu, gpu) for r in alive)
        if slots < workers:
            raise ConfigError(
                f"resources: a trial asks for {workers} workers x ({_fmt_res(cpu, gpu)}) but the cluster holds only "
                f"{slots} such worker(s) ({cluster}); lower --workers or join a bigger cluster with --address"
            )


def _slots(node: dict, cpu: float, gpu: float) -> int:
    n_cpu = int(node.get("CPU", 0.0) // cpu + 1e-9) if cpu > 0 else 10**9
    n_gpu = int(node.get("GPU", 0.0) // gpu + 1e-9) if gpu > 0 else 10**9
    return min(n_cpu, n_gpu)


def _scheduler(name: str, max_epochs: int):
    if name not in SCHEDULERS:
        raise ConfigError(f"--scheduler {name!r} is not allowed; expected one of {', '.join(SCHEDULERS)}")
    if name == "fifo":
        return None
    from ray.tune.schedulers import ASHAScheduler, TrialScheduler

    class RecordingASHA(ASHAScheduler):
        """ASHA that remembers which trials it stopped (their runs are closed as early-stopped)."""

        def __init__(self, **kw):
            super().__init__(**kw)
            self.stopped: dict[str, int] = {}

        def on_trial_result(self, tune_controller, trial, result):
            decision = super().on_trial_result(tune_controller, trial, result)
            if decision == TrialScheduler.STOP:
                self.stopped[trial.config["trial_id"]] = int(result.get("epoch", 0))
            return decision

    # Results without the metric (epochs without a k-NN evaluation, the final summary) are skipped by ASHA.
    os.environ["TUNE_DISABLE_STRICT_METRIC_CHECKING"] = "1"
    # stop_last_trials=False: a trial reaching its last epoch is not "stopped", it goes on to its evaluation.
    return RecordingASHA(time_attr="epoch", metric=ASHA_METRIC, mode=ASHA_MODE, max_t=max(1, max_epochs), grace_period=1,
                         stop_last_trials=False)


# ----------------------------------------------------------------------------- launching


def check_launch_options(max_concurrent: Optional[int] = None, max_failures: int = 2, scheduler: str = "fifo",
                         max_node_cpus: Optional[float] = None, max_node_gpus: Optional[float] = None,
                         wait_for_resources_s: Optional[float] = 0.0) -> None:
    """ConfigError (one line naming the flag) for a launch option out of range; the CLI calls it first."""
    import math

    if scheduler not in SCHEDULERS:
        raise ConfigError(f"--scheduler {scheduler!r} is not allowed; expected one of {', '.join(SCHEDULERS)}")
    if max_concurrent is not None and max_concurrent < 1:
        raise ConfigError(f"--max-concurrent must be >= 1, got {max_concurrent}")
    if max_failures < -1:
        raise ConfigError(f"--max-failures must be >= 0 (or -1: retry forever), got {max_failures}")
    for flag, value in (("--max-node-cpus", max_node_cpus), ("--max-node-gpus", max_node_gpus),
                        ("--wait-for-resources", wait_for_resources_s)):
        if value is not None and not (math.isfinite(value) and value >= 0):
            raise ConfigError(f"{flag} must be a finite number >= 0, got {value:g}")


@dataclass
class LaunchReport:
    launched: int
    tagged: int  # finished runs newly tagged with this grid
    errors: dict[str, str]  # trial id -> Tune error (retries exhausted)
    after: Optional[Plan]
    parent_run_id: Optional[str] = None
    wall_s: float = 0.0

    @property
    def complete(self) -> bool:
        return self.after is not None and all(i.state in lifecycle.DONE for i in self.after.items)


def _task(item: PlanItem, plan: Plan, parent: str, poll_s: float, marker: tuple = (None, None)) -> TrialTask:
    cfg = item.trial.config.model_copy(deep=True)
    cfg.tracking.uri = plan.tracking_uri
    r = cfg.resources
    return TrialTask(
        trial_id=item.trial_id, grid=plan.grid.name, row=item.trial.row, seed=item.trial.seed, config=config_to_dict(cfg),
        storage=str(plan.storage), tracking_uri=plan.tracking_uri, parent_run_id=parent, rerun=plan.rerun,
        replace=[x.run_id for x in item.runs if not x.superseded], workers=r.workers, cpus_per_worker=r.cpus_per_worker,
        gpus_per_worker=r.gpus_per_worker, claim_poll_s=poll_s, storage_marker=marker[0], storage_nonce=marker[1],
    )


def _parent_tags(plan: Plan) -> dict[str, str]:
    from dinolab import __version__
    from dinolab.trial import git_state

    commit, dirty = git_state()
    tags = {
        contract.PARENT_GRID_NAME: plan.grid.name,
        contract.PARENT_GRID_FILE: str(plan.grid.path),
        contract.PARENT_TRIALS: str(len(plan.items)),
        contract.PARENT_STORAGE: str(plan.storage),
        contract.VERSION: __version__,
        contract.GIT_COMMIT: commit,
        contract.GIT_DIRTY: dirty,
    }
    if getattr(plan.grid, "paper_table", None):
        tags[contract.PARENT_PAPER_TABLE] = plan.grid.paper_table
    return tags


def launch(
    plan: Plan,
    *,
    address: Optional[str] = None,
    max_concurrent: Optional[int] = None,
    max_failures: int = 2,
    scheduler: str = "fifo",
    claim_poll_s: float = 0.5,
    verbose: int = 1,
    max_node_cpus: Optional[float] = None,
    max_node_gpus: Optional[float] = None,
    wait_for_resources_s: float = 0.0,
) -> LaunchReport:
    """Run the plan's ``run`` trials on Ray Tune; returns what happened and the grid's state after.

    max_node_cpus / max_node_gpus: the largest node an autoscaling cluster can add (the pre-flight
    check accepts a trial that fits it). wait_for_resources_s: wait this long for nodes to join when
    a trial fits no node yet.
    """
    start = time.time()
    grid = plan.grid
    check_launch_options(max_concurrent, max_failures, scheduler, max_node_cpus, max_node_gpus, wait_for_resources_s)

    tagged = 0
    done = [i for i in plan.items if i.action == DONE and i.current is not None and grid.name not in i.current.grids]
    if done:  # finished trials shared with other grids now serve this one too
        client = store.open_client(plan.tracking_uri)
        tagged = sum(store.add_grid(client, plan.storage, i.trial_id, i.current.run_id, grid.name) for i in done)
    todo = plan.to_run
    if not todo:
        log.info("grid %s: nothing to run (%s)", grid.name, plan.counts())
        return LaunchReport(0, tagged, {}, plan, wall_s=time.time() - start)

    if clear_cancel(plan.storage, grid.name):
        log.info("grid %s: removed the cancel marker of an earlier --cancel", grid.name)
    started = connect_ray(address)
    joined = bool(address or os.environ.get("RAY_ADDRESS"))
    active = FileLock(launch_lock_path(plan.storage, grid.name), shared=True)
    parent = client = after = None
    marker: tuple = (None, None)
    errors: dict[str, str] = {}
    try:
        import ray

        scaling = cluster.autoscaling(max_node_cpus, max_node_gpus)
        cluster.require_shared_tracking(plan.tracking_uri, len(cluster.alive_nodes(ray.nodes())), scaling)
        requests = [(i.trial.config.resources.workers, i.trial.config.resources.cpus_per_worker,
                     i.trial.config.resources.gpus_per_worker) for i in todo]
        cluster.wait_for_resources(
            lambda: cluster.check_cluster_resources(requests, ray.nodes(), max_node_cpus, max_node_gpus),
            wait_for_resources_s or 0.0,
        )
        nodes = cluster.alive_nodes(ray.nodes())
        cluster.require_shared_tracking(plan.tracking_uri, len(nodes), scaling)  # nodes may have joined meanwhile
        if joined or len(nodes) > 1:
            if plan.tracking_uri.startswith("sqlite:"):
                log.warning("grid %s: SQLite store %s on a cluster: every node must see that file and writes are serialised; "
                            "the documented path is an MLflow server (see docs/team_scale.md)", grid.name,
                            redact_uri(plan.tracking_uri))
            cluster.check_shared_storage(plan.storage, nodes)
            marker = cluster.write_launch_marker(plan.storage)  # nodes added later are checked by each trial
        # The driver creates the store (schema migration) and the experiment before any trial writes.
        client = store.open_client(plan.tracking_uri)
        experiment_id = store.init_store(client, plan.experiment)
        active.acquire()
        parent = store.open_parent_run(client, experiment_id, grid.name, plan.storage, _parent_tags(plan))
        tasks = {i.trial_id: _task(i, plan, parent, claim_poll_s, marker).to_dict() for i in todo}
        sched = _scheduler(scheduler, max(i.trial.config.train.epochs for i in todo))
        results = _fit(plan, tasks, sched, max_concurrent, max_failures, verbose)
        for res in results:
            if res.error is not None and res.config:
                lines = str(res.error).strip().splitlines() or [""]
                errors[res.config["trial_id"]] = f"{type(res.error).__name__}: {lines[-1]}"
        if sched is not None:
            _close_early_stopped(client, plan, sched.stopped)
    finally:
        try:
            if parent is not None:
                after = plan_grid(grid, plan.storage)
                _maybe_close_parent(client, parent, after, active, plan)
        finally:
            active.release()
            cluster.remove_launch_marker(marker[0])
            if started:
                import ray

                ray.shutdown()
    return LaunchReport(len(todo), tagged, errors, after, parent, time.time() - start)


def _fit(plan: Plan, tasks: dict, sched, max_concurrent, max_failures, verbose):
    from ray import tune
    from ray.tune import FailureConfig, RunConfig, TuneConfig, Tuner

    from .distributed import bundles
    from .trainable import tune_trial

    def resources(config: dict):
        t = tasks[config["trial_id"]]
        return tune.PlacementGroupFactory(bundles(t["workers"], t["cpus_per_worker"], t["gpus_per_worker"]), strategy="PACK")

    trainable = tune.with_resources(tune.with_parameters(tune_trial, tasks=tasks), resources)
    grid_view = launch_view(plan, tasks)
    live = None
    callbacks = []
    if verbose:  # dinolab's view of the trials; Ray's own status table stays off (verbose=0 below)
        import sys

        plain = not sys.stderr.isatty()
        if not plain:
            from .live import LiveTable

            live = LiveTable(grid_view.table)
        callbacks.append(tune_view(grid_view, live.draw if live else None, plain))
    name = f"{plan.grid.name}-{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:6]}"
    tuner = Tuner(
        trainable,
        param_space={"trial_id": tune.grid_search(list(tasks))},
        tune_config=TuneConfig(
            scheduler=sched,
            max_concurrent_trials=max_concurrent,
            # One actor process per concurrent slot, reused by the next trial: a new process pays ~10 s of
            # imports (torch, timm, MLflow) here. A trial sets its threads and seeds itself, and a trial that
            # raises gets a fresh actor from Tune.
            reuse_actors=True,
            trial_name_creator=lambda trial: trial.config["trial_id"],
            trial_dirname_creator=lambda trial: trial.config["trial_id"],
        ),
        run_config=RunConfig(
            name=name,
            storage_path=str(plan.storage / "ray_results"),
            failure_config=FailureConfig(max_failures=max_failures),
            verbose=0,
            callbacks=callbacks,
        ),
    )
    log.info("grid %s: launching %d trial(s) as Tune experiment %s", plan.grid.name, len(tasks), name)
    if live is None:
        return tuner.fit()
    with live:
        return tuner.fit()


def launch_view(plan: Plan, tasks: dict) -> GridView:
    """The live view's trials: the grid's trials in order; those not launched are done (or skipped) already."""
    lines = []
    for item in plan.items:
        line = TrialLine(item.trial_id, item.trial.row, item.trial.seed, item.trial.config.train.epochs)
        if item.trial_id not in tasks:
            line.state, line.note = (DONE_VIEW, "earlier") if item.action == DONE else (FAILED_VIEW, "not retried")
            line.epoch = line.epochs if item.action == DONE else line.epoch
        lines.append(line)
    return GridView(plan.grid.name, lines)


def _close_early_stopped(client, plan: Plan, stopped: dict[str, int]) -> None:
    for tid, epoch in stopped.items():
        claim = lifecycle.claim(plan.storage, tid)
        if not claim.acquire(timeout=60):
            log.warning("trial %s: stopped by ASHA but its claim is still held; left as is", tid)
            continue
        try:
            current = store.current_run(store.trial_runs(client, [tid])[tid])
            if current is not None and current.status != "FINISHED":
                lifecycle.mark_early_stopped(client, current.run_id, f"stopped early by ASHA after {epoch} epoch(s)")
        finally:
            claim.release()


def _maybe_close_parent(client, parent: str, after: Plan, active: FileLock, plan: Plan) -> None:
    """The last live launch of the grid closes its parent run (FINISHED when every trial is done)."""
    active.release()
    last = FileLock(launch_lock_path(plan.storage, plan.grid.name))
    if not last.acquire(blocking=False):
        log.info("grid %s: another launch is still running; it closes the parent run", plan.grid.name)
        return
    try:
        counts = after.counts()
        if all(i.state in lifecycle.DONE for i in after.items):
            status = "FINISHED"
        elif counts.get(TrialState.CANCELLED):
            status = "KILLED"
        else:
            status = "FAILED"
        summary = {contract.PARENT_COUNT_PREFIX + k.replace(" ", "_"): str(v) for k, v in counts.items()}
        store.close_parent_run(client, parent, status, summary)
    finally:
        last.release()


# ----------------------------------------------------------------------------- cancel


def cancel(grid, storage: Optional[Path] = None) -> tuple[Path, list[str]]:
    """Write the grid's cancel marker (``lifecycle.cancel``); returns it and the ids of the trials running now."""
    return lifecycle.cancel(grid, storage_root(storage or default_storage()))
