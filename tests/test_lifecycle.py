"""A trial's life (``dinolab.lifecycle``): the one decision of a launch (reuse / resume / fresh) and the one state
vocabulary, which ``dinolab status``, the report and the dashboard all show the same way on one store."""

from __future__ import annotations

import re
from pathlib import Path

import yaml

from dinolab import lifecycle
from dinolab.lifecycle import FRESH, RESUME, REUSE, TrialState, decide
from dinolab.track import contract
from dinolab.track.contract import RunRecord

REPO = Path(__file__).resolve().parents[1]
WORKDIR = Path("/storage/trials/t")


def run(run_id: str, status: str, start: int, **tags) -> RunRecord:
    return RunRecord(run_id, "0", status, start, None, {contract.TRIAL_ID: "t", **tags})


def test_a_finished_trial_is_reused_by_the_sweep_and_trained_again_by_run():
    done = run("a", "FINISHED", 1)
    assert decide([done], {}, WORKDIR).action == REUSE
    again = decide([done], {"run_id": "a", "status": "FINISHED"}, WORKDIR, reuse=False)
    assert again.action == FRESH and again.stale == [done] and again.why == "trained again"
    stopped = run("b", "KILLED", 2, **{contract.EARLY_STOPPED: "true"})
    assert decide([done, stopped], {}, WORKDIR).run is stopped  # done for its search
    assert decide([stopped], {"run_id": "b"}, WORKDIR, rerun=True, replace=[]).action == RESUME


def test_only_the_run_this_folder_holds_is_resumed_others_are_taken_over():
    failed = run("a", "FAILED", 1, **{contract.FAILURE_REASON: "boom"})
    assert decide([failed], {"run_id": "a", "attempts": 1}, WORKDIR).action == RESUME
    taken = decide([failed], {"run_id": "elsewhere"}, WORKDIR)
    assert taken.action == FRESH and taken.stale == [failed] and str(WORKDIR) in taken.why
    assert decide([], {}, WORKDIR).action == FRESH


def test_a_rerun_replaces_only_the_runs_its_plan_saw():
    old, new = run("a", "FINISHED", 1), run("b", "FINISHED", 2)
    sup = run("s", "FINISHED", 0, **{contract.SUPERSEDED: "true"})
    fresh = decide([sup, old], {"run_id": "a"}, WORKDIR, rerun=True, replace=["a"])
    assert fresh.action == FRESH and fresh.stale == [old] and fresh.why == "replaced by --rerun"
    # the same stale plan once another launch did the rerun: the new run is reused, nothing runs twice
    assert decide([old, new], {}, WORKDIR, rerun=True, replace=["a"]).run is new
    assert decide([old], {"run_id": "a"}, WORKDIR, reuse=False, rerun=True).why == "replaced by --fresh"


def test_states_from_mlflow_status_and_claim():
    r = run("a", "RUNNING", 1)
    assert [lifecycle.state_of(r, c) for c in (True, False, None)] == [TrialState.RUNNING, TrialState.INTERRUPTED,
                                                                         TrialState.RUNNING]
    assert lifecycle.state_of(run("a", "FINISHED", 1, **{contract.COLLAPSED: "true"}), False) == TrialState.COLLAPSED
    assert lifecycle.state_of(run("a", "FINISHED", 1, **{contract.SUPERSEDED: "true"}), False) == TrialState.SUPERSEDED
    assert lifecycle.state_of(run("a", "FAILED", 1), True) == TrialState.RUNNING  # a retry holds the claim
    assert lifecycle.state_of(None, False) == TrialState.MISSING


# ----------------------------------------------------------------------------- one store, three views

ROWS = ("finished", "collapsed", "failed", "interrupted", "cancelled", "stopped", "superseded", "running", "missing")
EXPECTED = {"finished": TrialState.FINISHED, "collapsed": TrialState.COLLAPSED, "failed": TrialState.FAILED,
            "interrupted": TrialState.INTERRUPTED, "cancelled": TrialState.CANCELLED, "stopped": TrialState.STOPPED,
            "superseded": TrialState.FAILED, "running": TrialState.RUNNING, "missing": TrialState.MISSING}


def test_status_report_and_dashboard_agree(tmp_path, capsys):
    from dinolab.cli import main
    from dinolab.config.grid import load_grid
    from dinolab.home import default_storage, default_tracking_uri
    from dinolab.report.dashboard import write_dashboard
    from dinolab.report.runs import load_runs
    from dinolab.report.synthetic import log_trial_run, new_sqlite_store, supersede
    from dinolab.report.table import build_table
    from dinolab.sweep.store import init_store, open_client

    path = tmp_path / "life.yaml"
    path.write_text(yaml.safe_dump({"grid": "life", "base": str(REPO / "tests" / "fixtures" / "tiny.yaml"), "set": {"train.epochs": 3},
                                    "rows": [{"name": r, "set": {"dino.momentum": 0.9 + i / 100}} for i, r in enumerate(ROWS)]}))
    grid = load_grid(path)
    trial = {t.row: t for t in grid.trials}
    uri = new_sqlite_store(Path(default_tracking_uri()[len("sqlite:///"):]))
    client = open_client(uri)
    exp = init_store(client, grid.trials[0].config.tracking.experiment)
    storage = default_storage()

    def log(row, **kw):
        t = trial[row]
        return log_trial_run(client, exp, t.config, t.trial_id, grids=["life"], history={"loss": [3.0, 2.0]}, **kw)

    final = {contract.KNN_TOP1: 40.0}
    log("finished", final=final)
    log("collapsed", final=final, collapsed=True, collapse_reason="uniform teacher")
    log("failed", status="FAILED", failure_reason="non-finite loss: nan")
    log("interrupted", status="RUNNING")
    lifecycle.begin_attempt(lifecycle.folder(storage, trial["interrupted"].trial_id), trial["interrupted"].trial_id, "x", uri)
    log("cancelled", status="KILLED", failure_reason="cancelled at epoch 1 step 0")
    lifecycle.mark_early_stopped(client, log("stopped", status="RUNNING"), "stopped early by ASHA after 1 epoch(s)")
    supersede(client, log("superseded", final={contract.KNN_TOP1: 99.0}))
    log("superseded", status="FAILED", failure_reason="RuntimeError: out of memory")
    log("running", status="RUNNING")
    claim = lifecycle.claim(storage, trial["running"].trial_id)
    claim.acquire()
    try:
        assert main(["status", str(path)]) == 0
        lines = [line for line in capsys.readouterr().out.splitlines() if not line.startswith("  ")]
        status = {row: next(line for line in lines if trial[row].trial_id in line) for row in ROWS}
        report = build_table(grid, load_runs(uri, [t.trial_id for t in grid.trials]), tracking_uri=uri)
        page, dash, _ = write_dashboard(grid, tmp_path / "life.html", uri, log_to_parent=False)
    finally:
        claim.release()

    for row, state in EXPECTED.items():
        assert re.search(rf"\b{state}\b", status[row]), (row, status[row])
        assert [t.status for t in report.row(row).trials] == [state], row
        assert [t.status for t in dash.row(row).trials] == [state], row
    assert report.cell("superseded", "k-NN").stat is None  # the superseded 99 never shows
    html = page.read_text()
    shown = re.findall(r'data-status="([^"]+)"', html)
    assert shown == [c.status for r in report.rows for c in r.cells]
    assert {"ok", "collapsed", "failed", "interrupted", "cancelled", "stopped early", "running", "missing"} <= set(shown)
