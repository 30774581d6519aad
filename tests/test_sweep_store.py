"""What the sweep reads from MLflow: runs by trial id, trial states, grid tags, the parent run (no Ray)."""

from __future__ import annotations

import time

import pytest

from dinolab import lifecycle
from dinolab.lifecycle import TrialState
from dinolab.sweep import store
from dinolab.track import contract
from dinolab.sweep.locks import FileLock, claim_path


@pytest.fixture(scope="module")
def mlflow_store(tmp_path_factory):
    """One SQLite store for the module (creating one takes seconds); each test uses its own trial ids."""
    from dinolab.track.mlflow_store import client_for

    client = client_for(f"sqlite:///{tmp_path_factory.mktemp('store') / 'mlflow.db'}")
    root = tmp_path_factory.mktemp("artifacts")
    return client, client.create_experiment("dinolab", artifact_location=root.as_uri())


def _run(client, exp, tid, status, **tags):
    run = client.create_run(exp, tags={contract.TRIAL_ID: tid, **tags})
    if status != "RUNNING":
        client.set_terminated(run.info.run_id, status=status)
    time.sleep(0.01)  # distinct start times: newest-first order is by start time
    return run.info.run_id


def test_runs_by_trial_newest_first_and_the_current_run_skips_superseded(mlflow_store):
    client, exp = mlflow_store
    old = _run(client, exp, "t1", "FINISHED", **{contract.SUPERSEDED: "true"})
    new = _run(client, exp, "t1", "FAILED", **{contract.FAILURE_REASON: "non-finite loss: nan"})
    other = _run(client, exp, "t2", "FINISHED")
    client.create_run(exp, tags={"unrelated": "1"})
    runs = store.trial_runs(client, ["t1", "t2", "t3"])
    assert [r.run_id for r in runs["t1"]] == [new, old]
    assert [r.run_id for r in runs["t2"]] == [other] and runs["t3"] == []
    assert store.current_run(runs["t1"]).run_id == new
    everything = store.trial_runs(client)  # no ids: one scan of every run that has a trial id
    assert {"t1", "t2"} <= set(everything) and "" not in everything
    state, detail = lifecycle.describe(store.current_run(runs["t1"]), claimed=False)
    assert state == TrialState.FAILED and "non-finite loss: nan" in detail


def test_trial_states_read_with_the_claim_lock(mlflow_store, tmp_path):
    client, exp = mlflow_store
    rid = _run(client, exp, "s1", "RUNNING", **{contract.HEARTBEAT: str(int(time.time()) - 100)})
    rec = store.current_run(store.trial_runs(client, ["s1"])["s1"])
    state, detail = lifecycle.describe(rec, lifecycle.claimed(tmp_path, "s1"))
    assert state == TrialState.INTERRUPTED and "owner gone" in detail and "heartbeat 10" in detail
    with FileLock(claim_path(tmp_path, "s1")):
        assert lifecycle.describe(rec, lifecycle.claimed(tmp_path, "s1"))[0] == TrialState.RUNNING
    assert lifecycle.describe(None, claimed=False)[0] == TrialState.MISSING
    assert lifecycle.describe(None, claimed=True)[0] == TrialState.RUNNING

    client.set_terminated(rid, status="KILLED")
    rec = store.current_run(store.trial_runs(client, ["s1"])["s1"])
    assert lifecycle.describe(rec, False)[0] == TrialState.CANCELLED
    lifecycle.mark_early_stopped(client, rid, "stopped early by ASHA after 1 epoch(s)")
    rec = store.current_run(store.trial_runs(client, ["s1"])["s1"])
    assert lifecycle.describe(rec, False) == (TrialState.STOPPED, f"run {rid}: stopped early by ASHA after 1 epoch(s)")
    assert TrialState.STOPPED in lifecycle.DONE


def test_grid_tags_merge_and_supersede_closes_running_runs(mlflow_store, tmp_path):
    client, exp = mlflow_store
    rid = _run(client, exp, "g1", "FINISHED", **{"dinolab.grid.a": "1", contract.GRIDS: "a"})
    assert store.add_grid(client, tmp_path, "g1", rid, "b") is True
    assert store.add_grid(client, tmp_path, "g1", rid, "b") is False
    tags = client.get_run(rid).data.tags
    assert tags["dinolab.grid.b"] == "1" and tags[contract.GRIDS] == "a,b"

    running = _run(client, exp, "g2", "RUNNING")
    recs = store.trial_runs(client, ["g2"])["g2"]
    assert lifecycle.supersede(client, recs, "replaced by --rerun") == [running]
    run = client.get_run(running)
    assert run.info.status == "KILLED" and run.data.tags[contract.SUPERSEDED] == "true"
    assert store.current_run(store.trial_runs(client, ["g2"])["g2"]) is None


def test_parent_run_is_created_once_and_reopened(mlflow_store, tmp_path):
    client, exp = mlflow_store
    first = store.open_parent_run(client, exp, "grid1", tmp_path, {"dinolab.grid": "grid1"})
    store.close_parent_run(client, first, "FINISHED", {"dinolab.trials_finished": "2"})
    assert client.get_run(first).info.status == "FINISHED"
    again = store.open_parent_run(client, exp, "grid1", tmp_path, {"dinolab.grid": "grid1"})
    assert again == first and client.get_run(first).info.status == "RUNNING"
    other = store.open_parent_run(client, exp, "grid2", tmp_path, {})
    assert other != first
    assert store.find_parent_run(client, exp, "grid1").run_id == first
