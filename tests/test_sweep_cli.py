"""``dinolab sweep --dry-run``, ``dinolab status`` and ``--cancel`` through the command line (no Ray)."""

from __future__ import annotations

import pytest

from dinolab.cli import main
from dinolab.home import default_tracking_uri, dinolab_home
from dinolab.trial import trial_identity


@pytest.fixture()
def grid_file(tmp_path, write_grid):
    return write_grid(tmp_path, "tiny", {"ema": {"dino.momentum": 0.99}, "fast ema": {"dino.momentum": 0.9}}, seeds=[0, 1])


def _ids(path) -> dict[tuple[str, int], str]:
    from dinolab.config.grid import load_grid

    return {(t.row, t.seed): trial_identity(t.config)[0] for t in load_grid(path).trials}


def test_dry_run_lists_every_trial_and_writes_nothing(grid_file, capsys):
    assert main(["sweep", str(grid_file), "--dry-run"]) == 0
    out = capsys.readouterr().out
    ids = _ids(grid_file)
    assert len(ids) == 4 and len(set(ids.values())) == 4
    lines = {tid: next(line for line in out.splitlines() if tid in line) for tid in ids.values()}
    for (row, seed), tid in ids.items():  # row, seed, overrides, id (the one run_trial records), status
        cells = lines[tid].split()
        assert lines[tid].startswith(row) and str(seed) in cells and "missing" in cells
        assert ("dino.momentum=0.99" if row == "ema" else "dino.momentum=0.9") in lines[tid]
    assert "a launch would run 4" in out
    assert not (dinolab_home() / "mlflow.db").exists()  # a dry run creates no store, no run, no folder
    assert not (dinolab_home() / "trials").exists()


def test_status_reads_runs_by_trial_id(grid_file, capsys, tmp_path):
    from dinolab.config import ID_SCHEME
    from dinolab.report.synthetic import new_sqlite_store
    from dinolab.track.mlflow_store import client_for, get_or_create_experiment

    ids = _ids(grid_file)
    new_sqlite_store(default_tracking_uri()[len("sqlite:///"):])  # a migrated copy: MLflow's migrations take ~20 s
    client = client_for(default_tracking_uri())
    exp = get_or_create_experiment(client, "dinolab")
    scheme = {"dinolab.id_scheme": str(ID_SCHEME)}  # runs of today's trial ids (older ones would need dinolab migrate)
    done = client.create_run(exp, tags={"dinolab.trial_id": ids[("ema", 0)], **scheme}).info.run_id
    client.set_terminated(done, "FINISHED")
    failed = client.create_run(exp, tags={"dinolab.trial_id": ids[("ema", 1)], "dinolab.failure_reason": "non-finite loss: nan", **scheme})
    client.set_terminated(failed.info.run_id, "FAILED")
    client.create_run(exp, tags={"dinolab.trial_id": ids[("fast ema", 0)], "dinolab.heartbeat": "1", **scheme})  # owner gone

    assert main(["status", str(grid_file)]) == 0
    out = capsys.readouterr().out
    table = [line for line in out.splitlines() if not line.startswith("  ")]  # detail lines are indented
    row = {tid: next(line for line in table if tid in line) for tid in ids.values()}
    assert "finished" in row[ids[("ema", 0)]]
    assert "failed" in row[ids[("ema", 1)]] and "non-finite loss: nan" in out
    assert "interrupted" in row[ids[("fast ema", 0)]] and "owner gone" in out
    assert "missing" in row[ids[("fast ema", 1)]]

    assert main(["sweep", str(grid_file), "--dry-run"]) == 0
    assert "a launch would run 2" in capsys.readouterr().out  # failed trials wait for --rerun-failed
    assert main(["sweep", str(grid_file), "--dry-run", "--rerun-failed"]) == 0
    assert "a launch would run 3" in capsys.readouterr().out
    assert main(["sweep", str(grid_file), "--dry-run", "--rerun"]) == 0
    assert "a launch would run 4" in capsys.readouterr().out


def test_cancel_writes_the_grid_marker(grid_file, tmp_path, capsys):
    storage = tmp_path / "store"
    assert main(["sweep", str(grid_file), "--cancel", "--storage", str(storage)]) == 0
    assert (storage / "grids" / "tiny" / "cancel").exists()
    assert "cancel requested" in capsys.readouterr().out
    assert main(["sweep", str(grid_file), "--cancel", "--dry-run"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("dinolab: error:") and "\n" not in err


def test_user_errors_exit_2_with_one_line(grid_file, capsys):
    assert main(["sweep", str(grid_file), "--dry-run", "--workers", "0"]) == 2
    assert main(["sweep", str(grid_file), "--dry-run", "--set", "dino.nonsense=1"]) == 2
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(lines) == 2 and all(line.startswith("dinolab: error:") for line in lines)
