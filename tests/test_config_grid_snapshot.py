"""Every shipped grid expands to the trials it expanded to before grids became typed models with ``extends:``.

tests/fixtures/grid_snapshot.json was written by the hand-validated grid code (commit 6bb8a7e) from the
ablation files of then, which spelled every CIFAR twin out in full and copied the paper values into each row.
Per grid it holds the rows (default, reference-only, labels, paper row, and the paper value the report's table
shows per paper column) and per trial the row, the seed and a hash of the whole resolved config
(runtime fields included; data.root written relative to ~ or to the checkout). Regenerate it, only after a
change that is meant to change trials, with

    DINOLAB_WRITE_GRID_SNAPSHOT=1 PYTHONPATH=platform python -m pytest -q tests/test_config_grid_snapshot.py
"""

import hashlib
import json
import os
from pathlib import Path

import pytest

from dinolab.config import config_to_dict
from dinolab.config.grid import expand_grid
from dinolab.config.paper_tables import PACKAGED, load_paper_tables
from dinolab.report.runs import load_runs
from dinolab.report.table import build_table

ROOT = Path(__file__).resolve().parents[1]
ABLATIONS = sorted((ROOT / "ablations").glob("*.yaml"))
SNAPSHOT = Path(__file__).parent / "fixtures" / "grid_snapshot.json"


def _portable(root):
    """data.root without this machine's home or checkout folder."""
    if not root:
        return root
    for prefix, mark in ((str(ROOT), "<repo>"), (str(Path.home()), "~")):
        if root.startswith(prefix + os.sep):
            return mark + root[len(prefix):]
    return root


def config_digest(cfg) -> str:
    data = config_to_dict(cfg)
    data["data"]["root"] = _portable(data["data"]["root"])
    data["train"].setdefault("fail_at_step", None)  # a runtime field when the snapshot was written, None in every grid
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:16]


def snapshot_of(path: Path, tracking_uri: str) -> dict:
    grid = expand_grid(path, fingerprint=lambda data_cfg: "no data")
    table = build_table(grid, load_runs(tracking_uri), paper_tables=load_paper_tables(PACKAGED))
    rows = []
    for gr, tr in zip(grid.rows, table.rows):
        paper = {c.label: cell.paper for c, cell in zip(table.columns, tr.cells) if c.paper}
        rows.append({"name": gr.name, "default": gr.default, "reference_only": gr.reference_only,
                     "labels": {k: str(v) for k, v in gr.labels.items()}, "paper_row": gr.paper_row, "paper": paper})
    return {
        "grid": grid.name, "paper_table": grid.paper_table, "paper_setup": grid.paper_setup, "seeds": grid.seeds,
        "columns": [[c.metric, c.label, c.agg, c.paper] for c in grid.columns], "rows": rows,
        "trials": [[t.row, t.seed, config_digest(t.config)] for t in grid.trials],
    }


def _dumps(snapshot: dict) -> str:
    """JSON with one line per grid's header, per row and per trial (a change shows as the lines it changes)."""
    parts = []
    for name, g in sorted(snapshot.items()):
        head = json.dumps({k: v for k, v in g.items() if k not in ("rows", "trials")}, ensure_ascii=False)[:-1]
        rows = ",\n  ".join(json.dumps(r, ensure_ascii=False) for r in g["rows"])
        trials = ",\n  ".join(json.dumps(t) for t in g["trials"])
        parts.append(f'{json.dumps(name)}: {head}, "rows": [\n  {rows}], "trials": [\n  {trials}]}}')
    return "{\n" + ",\n".join(parts) + "\n}\n"


@pytest.fixture(scope="module")
def snapshots(tmp_path_factory):
    uri = f"sqlite:///{tmp_path_factory.mktemp('store') / 'none.db'}"  # no store: no runs, paper values only
    now = {p.name: snapshot_of(p, uri) for p in ABLATIONS}
    if os.environ.get("DINOLAB_WRITE_GRID_SNAPSHOT"):
        SNAPSHOT.parent.mkdir(exist_ok=True)
        SNAPSHOT.write_text(_dumps(now), encoding="utf-8")
    return now


def test_every_shipped_grid_is_in_the_snapshot(snapshots):
    assert sorted(snapshots) == sorted(json.loads(SNAPSHOT.read_text(encoding="utf-8")))


@pytest.mark.parametrize("path", ABLATIONS, ids=lambda p: p.name)
def test_grid_expands_to_the_same_trials_and_paper_values(path, snapshots):
    before = json.loads(SNAPSHOT.read_text(encoding="utf-8"))[path.name]
    now = snapshots[path.name]
    for key in ("grid", "paper_table", "paper_setup", "seeds", "columns"):
        assert now[key] == before[key], key
    assert [r["name"] for r in now["rows"]] == [r["name"] for r in before["rows"]]
    for row_now, row_before in zip(now["rows"], before["rows"]):
        assert row_now == row_before, row_before["name"]
    assert now["trials"] == before["trials"]
