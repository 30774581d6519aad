"""``dinolab migrate`` on a store written at id scheme 1 (tests/fixtures/store_v1, made by make_store.py with
the code of that time): ids re-derived, two spellings of one network merged (the newest finished run current,
the other superseded), the failed trial's folder renamed; a relaunch then runs nothing it had finished and
resumes the failed trial from its checkpoint; a second migrate is a no-op; a held claim refuses it."""

from __future__ import annotations

import gzip
import importlib.util
import json
import shutil
import sqlite3
from pathlib import Path

import pytest

from dinolab.cli import main
from dinolab.config import ID_SCHEME, config_to_dict, load_experiment
from dinolab.home import default_tracking_uri, dinolab_home
from dinolab.migrate import MigrateRefused, migrate
from dinolab.sweep import store
from dinolab.track import contract
from dinolab.sweep.locks import FileLock, claim_path
from dinolab.sweep.trainable import TrialTask, execute_task
from dinolab.trial import trial_identity

FIXTURE = Path(__file__).parent / "fixtures" / "store_v1"
MADE_AT = "/tmp/v1out/home"  # the dinolab home make_store.py wrote the store in (artifact paths name it)
# The fixture's runs, as make_store.py printed them (scheme-1 trial ids).
V1 = {"a16": "0f6d19c4feb2f346", "anull": "6b70732c2d7c4a21", "b": "9103edf885318cdb"}


def _recipe():
    spec = importlib.util.spec_from_file_location("make_store", FIXTURE / "make_store.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _today(overrides: list[str]) -> list[str]:
    """The recipe's overrides as today's schema takes them: its fault knob (runtime, so not in the trial id)
    left the schema for $DINOLAB_FAULT_AT_STEP; the fixture's trial already failed with it."""
    return [o for o in overrides if not o.startswith("train.fail_at_step=")]


@pytest.fixture
def v1_store(tmp_path):
    """The fixture restored as this test's dinolab home: (tracking uri, storage, {row: config})."""
    home = dinolab_home()
    home.mkdir(parents=True)
    sql = gzip.open(FIXTURE / "store.sql.gz", "rt").read().replace(MADE_AT, str(home))
    db = sqlite3.connect(home / "mlflow.db")
    db.executescript(sql)
    db.close()
    shutil.copytree(FIXTURE / "trials", home / "trials")
    recipe = _recipe()
    base = tmp_path / "base.yaml"
    base.write_text("name: v1\nmodel: {arch: vit_tiny}\n")
    configs = {row: load_experiment(base, _today(recipe.TINY + extra) + [f"name={row}"]) for row, extra in recipe.ROWS.items()}
    return default_tracking_uri(), home, configs


def _runs_by_row(client):
    runs = [r for recs in store.trial_runs(client).values() for r in recs]
    return {r.tags["mlflow.runName"]: r for r in runs}


def test_migrate_merges_renames_and_a_relaunch_resumes(v1_store, capsys):
    uri, storage, configs = v1_store
    client = store.open_client(uri)
    before = _runs_by_row(client)
    assert {row: r.trial_id for row, r in before.items()} == V1
    new = {row: trial_identity(cfg)[0] for row, cfg in configs.items()}
    assert new["a16"] == new["anull"] != new["b"] and not set(new.values()) & set(V1.values())

    # --dry-run: the plan, and nothing changed
    assert main(["migrate", "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert f"trial {V1['a16']} -> {new['a16']}" in out and f"trials/{V1['b']} -> trials/{new['b']}" in out
    assert {row: r.trial_id for row, r in _runs_by_row(client).items()} == V1
    assert sorted(p.name for p in (storage / "trials").iterdir()) == sorted(V1.values())
    assert not (storage / "migrate-backup").exists()

    assert main(["migrate"]) == 0
    after = _runs_by_row(client)
    assert {row: r.trial_id for row, r in after.items()} == new
    assert after["anull"].tags.get(contract.SUPERSEDED) is None  # the newer finished run stays current
    assert after["a16"].superseded and after["a16"].status == "FINISHED"
    assert after["a16"].tags["dinolab.previous_trial_ids"] == V1["a16"]
    assert all(r.tags["dinolab.id_scheme"] == str(ID_SCHEME) for r in after.values())
    params = client.get_run(after["a16"].run_id).data.params
    assert params["resolved.model.patch_size"] == "16" and params["model.patch_size"] == "16"
    assert client.get_run(after["anull"].run_id).data.params["resolved.model.patch_size"] == "16"
    # the unfinished trial's folder follows its id; trial.json names the same run
    assert not (storage / "trials" / V1["b"]).exists()
    state = json.loads((storage / "trials" / new["b"] / "trial.json").read_text())
    assert state["trial_id"] == new["b"] and state["run_id"] == before["b"].run_id
    (backup,) = (storage / "migrate-backup").iterdir()
    saved = json.loads((backup / "runs.json").read_text())
    assert saved[before["a16"].run_id]["tags"]["dinolab.trial_id"] == V1["a16"]
    assert (backup / "mlflow.db").stat().st_size > 0 and (backup / "trials" / V1["b"] / "trial.json").exists()
    assert json.loads((storage / "id_scheme.json").read_text())["id_scheme"] == ID_SCHEME

    # again: nothing to do
    capsys.readouterr()
    assert main(["migrate"]) == 0
    assert "nothing to migrate" in capsys.readouterr().out
    assert len(list((storage / "migrate-backup").iterdir())) == 1

    # relaunch today's configs: the merged trial is reused, the failed one resumes its run from epoch 1's checkpoint
    outcomes = {}
    for row, cfg in configs.items():
        cfg = cfg.model_copy(deep=True)
        cfg.tracking.uri = uri
        outcomes[row] = execute_task(TrialTask(trial_id=new[row], grid="v1", row=row, seed=0, config=config_to_dict(cfg),
                                               storage=str(storage), tracking_uri=uri, claim_poll_s=0.05))
    assert outcomes["a16"] == outcomes["anull"] == {"outcome": "reused", "trial_id": new["a16"], "run_id": after["anull"].run_id}
    assert outcomes["b"]["outcome"] == "finished" and outcomes["b"]["run_id"] == before["b"].run_id
    losses = client.get_metric_history(before["b"].run_id, "loss")
    assert sorted(m.step for m in losses) == [0, 1]  # epoch 0 from before the failure, epoch 1 after: each once
    assert len(store.trial_runs(client, [new["b"]])[new["b"]]) == 1


def test_migrate_refuses_while_a_claim_is_held(v1_store):
    uri, storage, _ = v1_store
    lock = FileLock(claim_path(storage, V1["b"]))
    assert lock.acquire(blocking=False)
    try:
        with pytest.raises(MigrateRefused, match=f"trial {V1['b']}"):
            migrate(uri, storage)
        assert main(["migrate"]) == 2
    finally:
        lock.release()
    client = store.open_client(uri)
    assert {row: r.trial_id for row, r in _runs_by_row(client).items()} == V1  # nothing changed


def test_a_launch_onto_an_unmigrated_store_is_refused_until_migrate_ran(v1_store, tmp_path, capsys):
    uri, storage, configs = v1_store
    exp = tmp_path / "b.yaml"
    exp.write_text("name: b\nmodel: {arch: vit_tiny}\n")
    argv = ["run", str(exp)] + [f"--set={s}" for s in _today(_recipe().TINY + _recipe().ROWS["b"])]
    client = store.open_client(uri)
    n_runs = len([r for recs in store.trial_runs(client).values() for r in recs])
    capsys.readouterr()
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "older trial-id scheme" in err[0] and "dinolab migrate" in err[0]
    assert len([r for recs in store.trial_runs(client).values() for r in recs]) == n_runs  # nothing started
    assert main(["migrate"]) == 0
    from dinolab.migrate import require_current_scheme

    require_current_scheme(uri, storage, client)  # migrated: a launch may go on


def test_a_config_recorded_at_scheme_1_loads_today():
    """backfill rebuilds a finished run's network from its config.yaml: one written by the fixture's code holds the
    retired fault knob and scheme-1 family defaults, and loads through the chain."""
    import yaml

    from dinolab.config import build_config
    from dinolab.migrate import recorded_config

    recorded = yaml.safe_load((FIXTURE / "trials" / V1["b"] / "config.yaml").read_text())
    assert "fail_at_step" in recorded["train"]
    cfg = build_config(recorded_config(recorded, 1), source="fixture b config.yaml")
    assert cfg.model.arch == "vit_tiny" and cfg.dino.momentum == 0.99
