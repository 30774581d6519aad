"""`dinolab ui` end to end: the real MLflow server over a dinolab store, queried through its REST API.

The store holds what a sweep leaves behind: the grid's parent run (opened by the sweep's own
``open_parent_run``) and one child run per trial (logged by the functions a trial uses), plus a run of
another grid that must not be mixed in. The test starts the console command, waits for the server,
and finds the grid's runs the way the UI's JavaScript does (``runs/search`` over HTTP).
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from dinolab.config.grid import load_grid
from dinolab.report.synthetic import log_trial_run
from dinolab.sweep.store import open_parent_run
from dinolab.track.contract import GRID_PREFIX as GRID_TAG_PREFIX, PARENT_GRID as PARENT_TAG, TRIAL_ID as TRIAL_TAG
from process_helpers import free_port, stop_group, wait_for

pytestmark = pytest.mark.slow

FP = "ui-test-fingerprint"


def _post(base: str, path: str, body: dict) -> dict:
    req = urllib.request.Request(base + path, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=10) as resp:
        return json.loads(resp.read())


def _search_runs(base: str, experiment_id: str, filter_string: str) -> list[dict]:
    runs, token = [], None
    while True:
        body = {"experiment_ids": [experiment_id], "filter": filter_string, "max_results": 100}
        if token:
            body["page_token"] = token
        page = _post(base, "/api/2.0/mlflow/runs/search", body)
        runs += page.get("runs", [])
        token = page.get("next_page_token")
        if not token:
            return runs


def _tags(run: dict) -> dict[str, str]:
    return {t["key"]: t["value"] for t in run["data"].get("tags", [])}


def _healthy(base: str) -> bool:
    try:
        with urllib.request.urlopen(base + "/health", timeout=2) as resp:
            return resp.status == 200
    except (urllib.error.URLError, ConnectionError, TimeoutError):
        return False


def _non_loopback_address() -> str | None:
    """An address of this machine other than 127.x, or None (a UDP connect sends nothing)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            s.connect(("192.0.2.1", 9))  # TEST-NET-1: never routed, only selects the outgoing interface
            addr = s.getsockname()[0]
        except OSError:
            return None
    return None if addr.startswith("127.") else addr


@pytest.fixture
def grid_store(store, tmp_path, write_grid):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=store)
    exp = client.create_experiment("dinolab", artifact_location=(tmp_path / "artifacts").as_uri())
    path = write_grid(tmp_path, "demo", {"DINO (centering)": {"dino.centering": "ema"}, "no centering": {"dino.centering": "none"}},
                      seeds=(0, 1, 2))
    grid = load_grid(path, fingerprint=lambda d: FP)
    parent = open_parent_run(client, exp, grid.name, tmp_path / "storage", {"dinolab.grid_file": str(path)})
    children = {}
    for t in grid.trials:
        children[log_trial_run(client, exp, t.config, t.trial_id, fingerprint=FP, grids=[grid.name], parent_run_id=parent,
                               history={"loss": [6.0, 5.5]}, final={"knn_top1": 40.0})] = t.trial_id
    client.set_terminated(parent, "FINISHED")
    # A run of another grid in the same experiment: the grid's search must not return it.
    other = load_grid(write_grid(tmp_path, "other", {"previous epoch": {"dino.teacher": "prev_epoch"}}), fingerprint=lambda d: FP)
    log_trial_run(client, exp, other.trials[0].config, other.trials[0].trial_id, fingerprint=FP, grids=[other.name])
    return {"uri": store, "experiment_id": exp, "grid": grid, "parent": parent, "children": children}


def test_dinolab_ui_serves_the_grid_runs_on_loopback(grid_store, tmp_path):
    port = free_port()
    exe = shutil.which("dinolab") or str(Path(sys.executable).with_name("dinolab"))
    env = {**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true"}
    log = tmp_path / "ui.log"
    with open(log, "w") as out:
        proc = subprocess.Popen([exe, "ui", "--port", str(port), "--backend", grid_store["uri"]], env=env,
                                stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    try:
        wait_for(lambda: _healthy(base), 90, "dinolab ui to answer /health", proc=proc, log=log)
        # The UI itself: the single-page app MLflow's JavaScript builds the run tables in.
        with urllib.request.urlopen(base + "/", timeout=10) as resp:
            assert resp.status == 200 and "<html" in resp.read().decode(errors="replace").lower()

        exps = _post(base, "/api/2.0/mlflow/experiments/search", {"max_results": 100})["experiments"]
        assert grid_store["experiment_id"] in {e["experiment_id"] for e in exps}
        exp, grid = grid_store["experiment_id"], grid_store["grid"]

        # The grid's trials, found by the grid tag every trial run carries: exactly the grid's trial ids.
        runs = _search_runs(base, exp, f"tags.`{GRID_TAG_PREFIX}{grid.name}` = '1'")
        assert {_tags(r)[TRIAL_TAG] for r in runs} == {t.trial_id for t in grid.trials}
        assert {r["info"]["run_id"] for r in runs} == set(grid_store["children"])
        # Grouped under the grid's parent run in the UI: every child names it as mlflow.parentRunId.
        parents = _search_runs(base, exp, f"tags.`{PARENT_TAG}` = '{grid.name}'")
        assert [p["info"]["run_id"] for p in parents] == [grid_store["parent"]]
        assert {_tags(r)["mlflow.parentRunId"] for r in runs} == {grid_store["parent"]}
        # Their metrics and identity params come through the server as logged.
        one = runs[0]
        assert {m["key"]: m["value"] for m in one["data"]["metrics"]}["knn_top1"] == 40.0
        params = {p["key"]: p["value"] for p in one["data"]["params"]}
        assert params["model.arch"] == "vit_tiny" and "data.root" not in params  # runtime fields are tags, not params

        # Bound to loopback only: another address of this machine refuses the connection.
        other = _non_loopback_address()
        if other is not None:
            with pytest.raises(OSError):
                socket.create_connection((other, port), timeout=3).close()
    finally:
        stop_group(proc)
