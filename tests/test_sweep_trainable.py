"""The trial function's decisions without Ray: --rerun supersedes runs found by tag, a finished trial
is reused (and tagged with the new grid), a stale plan does not rerun twice, a cancelled grid starts nothing."""

from __future__ import annotations

from pathlib import Path

from dinolab.config import config_to_dict
from dinolab.home import default_tracking_uri
from dinolab.sweep import store
from dinolab.track import contract
from dinolab.sweep.locks import request_cancel
from dinolab.sweep.trainable import TrialTask, execute_task

def _task(tmp_path, write_grid, grid="tiny", **kw) -> TrialTask:
    from dinolab.config.grid import load_grid

    path = write_grid(tmp_path, "tiny", {"a": {"dino.momentum": 0.99}},
                      set={"train.steps_per_epoch": 1, "eval.linear_lrs": [0.1]})
    (trial,) = load_grid(path).trials
    cfg = trial.config.model_copy(deep=True)
    cfg.tracking.uri = default_tracking_uri()
    return TrialTask(trial_id=trial.trial_id, grid=grid, row=trial.row, seed=trial.seed, config=config_to_dict(cfg),
                     storage=str(tmp_path / "storage"), tracking_uri=cfg.tracking.uri, claim_poll_s=0.05, **kw)


def _runs(client, tid):
    return store.trial_runs(client, [tid])[tid]


def test_rerun_supersedes_a_run_found_by_tag_then_reuse(tmp_path, write_grid):
    task = _task(tmp_path, write_grid)
    client = store.open_client(task.tracking_uri)
    exp = store.init_store(client, "dinolab")
    # a finished run of this trial recorded elsewhere: no trial.json under this storage names it
    old = client.create_run(exp, tags={contract.TRIAL_ID: task.trial_id, "dinolab.grid.tiny": "1", contract.GRIDS: "tiny"})
    client.set_terminated(old.info.run_id, "FINISHED")

    task.rerun, task.replace = True, [old.info.run_id]
    summary = execute_task(task)
    assert summary["outcome"] == "finished" and summary["run_id"] != old.info.run_id
    new_run = client.get_run(summary["run_id"])
    assert new_run.info.status == "FINISHED" and new_run.data.tags[contract.GRIDS] == "tiny"
    assert client.get_run(old.info.run_id).data.tags[contract.SUPERSEDED] == "true"
    assert store.current_run(_runs(client, task.trial_id)).run_id == summary["run_id"]

    # the same stale plan again (another launch already did the rerun): nothing runs twice
    assert execute_task(task) == {"outcome": "reused", "trial_id": task.trial_id, "run_id": summary["run_id"]}
    # another grid using the finished trial: reused and tagged, no new run
    other = _task(tmp_path, write_grid, grid="other")
    assert execute_task(other)["outcome"] == "reused"
    tags = client.get_run(summary["run_id"]).data.tags
    assert tags["dinolab.grid.other"] == "1" and tags[contract.GRIDS] == "other,tiny"
    assert len(_runs(client, task.trial_id)) == 2


def test_a_cancelled_grid_starts_nothing(tmp_path, write_grid):
    task = _task(tmp_path, write_grid)
    request_cancel(task.storage, task.grid)
    assert execute_task(task) == {"outcome": "cancelled", "trial_id": task.trial_id}
    assert not (Path(task.storage) / "trials" / task.trial_id).exists()
    assert not Path(default_tracking_uri()[len("sqlite:///"):]).exists()  # not even the store was opened
