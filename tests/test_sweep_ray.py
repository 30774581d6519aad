"""Real sweeps on one session-wide local Ray (4 logical CPUs): dedup, extension, retries, a killed
driver, two launches at once, --cancel, an impossible request, and a 2-worker trial.

Launches run in this process (``dinolab.cli.main``, which reuses the connected Ray) or as
``python -m dinolab sweep --address <this Ray>`` subprocesses where a driver must die or two must race.
Every test has its own DINOLAB_HOME (SQLite store) and storage root.
"""

from __future__ import annotations

import logging
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from dinolab.cli import main
from dinolab.home import default_tracking_uri
from dinolab.sweep.locks import cancel_marker, claim_path, is_locked, request_cancel
from dinolab.train import faults
from process_helpers import wait_for

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
# Over the tests' tiny experiment: one step per epoch (a fault at global step 1 falls in epoch 1, after epoch 0's
# checkpoint) and one probe lr.
FAST = {"train.steps_per_epoch": 1, "eval.linear_lrs": [0.1]}


# Faults the session's Ray workers inject (run name -> global step), once per trial folder.
FAULTS = {"tiny/faulty/seed0": 1}


@pytest.fixture(scope="session")
def ray_address():
    """One local Ray for the whole session; in-process launches reuse it, subprocesses join it (without FAULTS)."""
    import ray

    ray.init(address="local", num_cpus=4, include_dashboard=False, logging_level=logging.WARNING,
             runtime_env=faults.runtime_env(FAULTS))
    yield ray.get_runtime_context().gcs_address
    ray.shutdown()


@pytest.fixture
def write_grid(write_grid):
    """conftest's write_grid with FAST under every grid's own ``set``."""
    def write(folder, name, rows, seeds=(0,), set=None, **top):
        return write_grid(folder, name, rows, seeds, {**FAST, **(set or {})}, **top)

    return write


def runs(experiment: str = "dinolab"):
    """Every run of the test's store: (trial runs by trial id, parent runs by grid)."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(default_tracking_uri())
    exp = client.get_experiment_by_name(experiment)
    everything = client.search_runs([exp.experiment_id], max_results=1000) if exp else []
    trials: dict[str, list] = {}
    parents: dict[str, list] = {}
    for r in everything:
        if "dinolab.trial_id" in r.data.tags:
            trials.setdefault(r.data.tags["dinolab.trial_id"], []).append(r)
        if "dinolab.grid_parent" in r.data.tags:
            parents.setdefault(r.data.tags["dinolab.grid_parent"], []).append(r)
    return client, trials, parents


def steps(client, run, key="loss") -> list[int]:
    return sorted(m.step for m in client.get_metric_history(run.info.run_id, key))


def sweep(grid: Path, storage: Path, *extra: str) -> int:
    return main(["sweep", str(grid), "--storage", str(storage), "-q", *extra])


def spawn_sweep(grid: Path, storage: Path, address: str, log: Path) -> subprocess.Popen:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen(
        [sys.executable, "-m", "dinolab", "sweep", str(grid), "--storage", str(storage), "--address", address, "-q"],
        stdout=log.open("w"), stderr=subprocess.STDOUT, env=env, cwd=str(REPO),
    )


def checkpoints(storage: Path) -> list[Path]:
    return sorted(storage.glob("trials/*/checkpoints/epoch_*.pt"))


def assert_each_trial_finished_once(trials: dict, ids) -> None:
    for tid in ids:
        live = [r for r in trials[tid] if r.data.tags.get("dinolab.superseded") != "true"]
        assert [r.info.status for r in live] == ["FINISHED"], (tid, [(r.info.run_id, r.info.status) for r in trials[tid]])


def trial_ids(grid: Path) -> list[str]:
    from dinolab.config.grid import load_grid

    return [t.trial_id for t in load_grid(grid).trials]


# ----------------------------------------------------------------------------------------------


def test_sweep_runs_only_what_is_missing_and_retries_a_fault(ray_address, write_grid, tmp_path, capsys):
    storage = tmp_path / "storage"
    rows = {"ema": {"dino.momentum": 0.99}, "faulty": {"dino.momentum": 0.9, "train.keep_checkpoints": 3}}  # FAULTS
    every_epoch = {"eval.knn_every": 1}  # an identity field: every grid of this test sets it, to share trials
    grid = write_grid(tmp_path, "tiny", rows, set=every_epoch)
    request_cancel(storage, "tiny")  # a stale --cancel: the launch removes it (else nothing would train)
    capsys.readouterr()
    assert main(["sweep", str(grid), "--storage", str(storage)]) == 0  # not -q, output not a terminal: one line per event
    err = capsys.readouterr().err.splitlines()
    for row in rows:
        for epoch in (1, 2):  # the trial's row name, seed, epoch and k-NN (measured every epoch here)
            assert [x for x in err if re.match(rf"{row} seed 0 \[\w{{8}}\]: epoch {epoch}/2 .*k-NN \d+\.\d", x)], (row, epoch, err)
        assert [x for x in err if x.startswith(f"{row} seed 0 [") and ": finished k-NN" in x], err
    assert [x for x in err if x.startswith("faulty seed 0 [") and "retried from its checkpoint" in x and "InjectedFault" in x], err
    assert [x for x in err if x.endswith("| 2 done, 0 running, 0 pending, 0 failed; ETA 0s")], err
    assert not cancel_marker(storage, "tiny").exists()
    client, trials, parents = runs()
    ids = trial_ids(grid)
    assert set(trials) == set(ids) and len(parents["tiny"]) == 1
    parent = parents["tiny"][0]
    assert parent.info.status == "FINISHED"
    assert_each_trial_finished_once(trials, ids)
    for tid in ids:
        run = trials[tid][0]
        assert run.data.tags["mlflow.parentRunId"] == parent.info.run_id
        assert run.data.tags["dinolab.grid.tiny"] == "1" and run.data.tags["dinolab.grids"] == "tiny"
        assert steps(client, run) == [0, 1]  # every epoch logged exactly once
        assert (storage / "trials" / tid / "checkpoints").is_dir()
    ema, faulty = (trials[tid][0] for tid in ids)
    # the fault (step 1 = epoch 1, after the epoch-0 checkpoint) was retried by Tune in the same run,
    # which resumed after epoch 0: epoch 0 and the random-init k-NN are not logged twice
    assert faulty.data.tags["dinolab.attempts"] == "2" and ema.data.tags["dinolab.attempts"] == "1"
    assert "InjectedFault" in faulty.data.tags["dinolab.previous_failure"]
    assert "dinolab.failure_reason" not in faulty.data.tags
    assert len(steps(client, faulty, "knn_top1_random_init")) == 1

    before = {r.info.run_id for rs in trials.values() for r in rs} | {parent.info.run_id}
    assert sweep(grid, storage) == 0  # a finished grid: nothing runs, nothing is created
    _, trials_again, parents_again = runs()
    assert {r.info.run_id for rs in trials_again.values() for r in rs} | {p.info.run_id for p in parents_again["tiny"]} == before

    rows["faulty"] = {"dino.momentum": 0.9}  # keep_checkpoints is runtime: the same trials
    grid = write_grid(tmp_path, "tiny", rows, seeds=(0, 1), set=every_epoch)
    assert sweep(grid, storage) == 0
    _, trials, parents = runs()
    new_ids = trial_ids(grid)
    assert set(ids) < set(new_ids) and len(new_ids) == 4
    assert_each_trial_finished_once(trials, new_ids)
    assert {r.info.run_id for tid in ids for r in trials[tid]} == {ema.info.run_id, faulty.info.run_id}  # untouched
    assert [p.info.run_id for p in parents["tiny"]] == [parent.info.run_id]

    other = write_grid(tmp_path, "other", {"same as ema": {"dino.momentum": 0.99}}, set=every_epoch)  # shares one trial
    assert sweep(other, storage) == 0
    client, trials, parents = runs()
    shared = client.get_run(ema.info.run_id).data.tags
    assert shared["dinolab.grid.other"] == "1" and shared["dinolab.grids"] == "other,tiny"
    assert sum(len(v) for v in trials.values()) == 4 and "other" not in parents  # nothing new created


def test_driver_killed_mid_sweep_is_finished_by_the_same_command(ray_address, write_grid, tmp_path):
    storage = tmp_path / "storage"
    grid = write_grid(tmp_path, "killed", {"a": {"dino.momentum": 0.99}, "b": {"dino.momentum": 0.9}}, set={"train.epochs": 4})
    log = tmp_path / "driver.log"
    driver = spawn_sweep(grid, storage, ray_address, log)
    try:
        wait_for(lambda: checkpoints(storage), 300, "a checkpoint on disk", driver, log)
    finally:
        driver.send_signal(signal.SIGKILL)
        driver.wait(timeout=60)
    ids = trial_ids(grid)
    # Ray ends a dead driver's trial processes: their claims come free, their runs stay RUNNING
    wait_for(lambda: not any(is_locked(claim_path(storage, tid)) for tid in ids), 60, "the trial processes to die")
    _, trials, parents = runs()
    assert [r.info.status for rs in trials.values() for r in rs].count("RUNNING") >= 1
    assert parents["killed"][0].info.status == "RUNNING"
    assert sweep(grid, storage) == 0
    client, trials, parents = runs()
    assert_each_trial_finished_once(trials, ids)
    assert all(len(trials[tid]) == 1 for tid in ids)  # reopened, not duplicated
    everything = [r for rs in trials.values() for r in rs] + parents["killed"]
    assert len(parents["killed"]) == 1 and not [r for r in everything if r.info.status == "RUNNING"]
    assert max(int(trials[tid][0].data.tags["dinolab.attempts"]) for tid in ids) >= 2  # someone was taken over
    for tid in ids:
        assert steps(client, trials[tid][0])[-1] == 3


def test_two_launches_at_once_run_each_trial_once(ray_address, write_grid, tmp_path):
    storage = tmp_path / "storage"
    grid = write_grid(tmp_path, "twice", {"a": {"dino.momentum": 0.99}}, seeds=(0, 1))
    drivers = [spawn_sweep(grid, storage, ray_address, tmp_path / f"driver{i}.log") for i in range(2)]
    codes = [d.wait(timeout=600) for d in drivers]
    assert codes == [0, 0], (tmp_path / "driver0.log").read_text()[-3000:] + (tmp_path / "driver1.log").read_text()[-3000:]
    _, trials, parents = runs()
    ids = trial_ids(grid)
    assert len(parents["twice"]) == 1 and parents["twice"][0].info.status == "FINISHED"
    assert_each_trial_finished_once(trials, ids)
    assert all(len(trials[tid]) == 1 for tid in ids)


def test_cancel_stops_the_running_trials_and_keeps_checkpoints(ray_address, write_grid, tmp_path):
    storage = tmp_path / "storage"
    grid = write_grid(tmp_path, "stopme", {"a": {"dino.momentum": 0.99}}, set={"train.epochs": 50})
    log = tmp_path / "driver.log"
    driver = spawn_sweep(grid, storage, ray_address, log)
    try:
        wait_for(lambda: checkpoints(storage), 300, "a checkpoint on disk", driver, log)
        assert main(["sweep", str(grid), "--storage", str(storage), "--cancel"]) == 0
        assert driver.wait(timeout=120) == 1  # the launch ends by itself: the grid is not complete
    finally:
        if driver.poll() is None:
            driver.kill()
    (tid,) = trial_ids(grid)
    assert not is_locked(claim_path(storage, tid))  # the trial's process let go of it
    client, trials, parents = runs()
    (run,) = trials[tid]
    assert run.info.status == "KILLED" and "cancelled" in run.data.tags["dinolab.failure_reason"]
    assert checkpoints(storage) and len(steps(client, run)) < 50
    assert parents["stopme"][0].info.status == "KILLED"


def test_impossible_resource_request_fails_before_launch(ray_address, write_grid, tmp_path, capsys):
    grid = write_grid(tmp_path, "huge", {"a": {"dino.momentum": 0.99}})
    start = time.time()
    assert sweep(grid, tmp_path / "storage", "--gpus-per-worker", "2") == 2
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("dinolab: error")]
    assert len(err) == 1 and "no node has that much" in err[0] and "0 GPU" in err[0]
    assert time.time() - start < 60
    _, trials, parents = runs()
    assert not trials and not parents


def test_two_worker_trial_runs_as_a_ray_worker_group(ray_address, write_grid, tmp_path):
    storage = tmp_path / "storage"
    grid = write_grid(tmp_path, "ddp", {"a": {"dino.momentum": 0.99}},
                      resources={"workers": 2, "cpus_per_worker": 1, "gpus_per_worker": 0})
    assert sweep(grid, storage) == 0
    client, trials, _ = runs()
    (tid,) = trial_ids(grid)
    (run,) = trials[tid]
    assert run.info.status == "FINISHED"
    assert run.data.tags["dinolab.world_size"] == "2" and run.data.tags["runtime.resources.workers"] == "2"
    assert steps(client, run) == [0, 1]
    assert client.get_run(run.info.run_id).data.metrics["knn_top1"] >= 0
