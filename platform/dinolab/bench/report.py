"""How fast `dinolab report` reads a large store: direct SQL on SQLite against mlflow.search_runs.

``build_store`` creates N trial runs over 20 grids (10 rows each, N/200 seeds) in a new SQLite MLflow store,
written straight into MLflow's tables (the same tags, params, latest metrics and per-epoch history rows a
trial leaves, about 2% superseded reruns, some failed, running and collapsed). ``time_paths`` then times:

  sql, report keys     load_runs(method="sql") with the keys the tables need, all 20 grids' runs
  report --all (sql)   the above + building and rendering the 20 tables
  sql, every key       load_runs(method="sql") of every run with every metric, param and tag
  one grid (sql)       a single grid's table
  client pages         load_runs(method="search"): the fallback for http/postgres stores
  mlflow.search_runs   the baseline: mlflow.search_runs over the experiment, to pandas (and for one grid)

bench/report_bench.py is the command-line face of this module; ``report_figure`` is the benchmark figure.
"""

from __future__ import annotations

import os
import random
import sqlite3
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

from dinolab.config.gridfile import Column
from dinolab.track import contract

from .context import BenchContext
from .record import Record, summary

N_GRIDS, N_ROWS = 20, 10
TARGET_S = 5.0  # every table of 10,000 runs over 20 grids in under 5 s
ALL_TABLES = "report --all (sql): 20 tables"
BASELINE = "mlflow.search_runs (baseline)"


# The grid interface the report reads (dinolab.config.grid.Grid), filled directly: expanding 10,000
# validated configs would time the config layer, not the report.
@dataclass
class Row:
    name: str
    overrides: dict
    default: bool = False
    paper: dict = field(default_factory=dict)
    labels: dict = field(default_factory=dict)
    reference_only: bool = False


@dataclass(eq=False)
class Trial:
    row: str
    seed: int
    trial_id: str
    config_hash: str
    config: None = None


@dataclass
class Grid:
    name: str
    rows: list
    trials: list
    columns: list
    seeds: list
    paper_table: str | None = None
    paper_setup: dict = field(default_factory=lambda: {"data": "imagenet", "arch": "vit_small", "epochs": 300})


def make_grids(n_runs: int) -> list[Grid]:
    seeds = list(range(max(1, n_runs // (N_GRIDS * N_ROWS))))
    grids = []
    for g in range(N_GRIDS):
        rows = [Row(f"row{r}", {"dino.momentum": 0.9 + r / 100}, default=r == 0, paper={"knn": 70.0 - r}) for r in range(N_ROWS)]
        trials = [Trial(f"row{r}", s, f"g{g:02d}r{r:02d}s{s:04d}", f"h{g:02d}{r:02d}{s:04d}") for r in range(N_ROWS) for s in seeds]
        cols = [Column(metric=contract.KNN_TOP1, label="k-NN", paper="knn"),
                Column(metric=contract.LINEAR_TOP1, label="Linear", paper="linear"),
                Column(metric=contract.KNN_TOP1, label="k-NN best", agg="best")]
        grids.append(Grid(f"bench_grid_{g:02d}", rows, trials, cols, seeds))
    return grids


def fill_store(db: Path, experiment_id: int, artifact_root: str, grids: list[Grid], epochs: int, seed: int = 0) -> int:
    """Insert one run per trial (+2% superseded reruns) straight into MLflow's tables; returns the run count."""
    from dinolab.config import ExperimentConfig, flatten, identity_dict, runtime_dict

    rnd = random.Random(seed)
    base = ExperimentConfig()
    params0 = {k: str(v) for k, v in flatten(identity_dict(base)).items()}
    runtime0 = {contract.RUNTIME_PREFIX + k: str(v) for k, v in flatten(runtime_dict(base)).items()}
    now = int(time.time() * 1000)
    runs, tags, params, latest, history = [], [], [], [], []

    def add_run(grid: Grid, t: Trial, start: int, superseded: bool) -> None:
        rid = uuid.uuid4().hex
        roll = rnd.random()
        status = "FAILED" if roll < 0.03 else "RUNNING" if roll < 0.05 else "FINISHED"
        runs.append((rid, f"{grid.name}/{t.row}/seed{t.seed}", "LOCAL", "", "", "bench", status, start,
                     None if status == "RUNNING" else start + 60_000, "", "active", f"{artifact_root}/{rid}/artifacts",
                     experiment_id))
        tg = {contract.TRIAL_ID: t.trial_id, contract.CONFIG_HASH: t.config_hash, contract.DATA_FINGERPRINT: "fp",
              contract.METHOD_VERSION: "1", contract.VERSION: "0.1.0", contract.GIT_COMMIT: "0" * 40,
              contract.GIT_DIRTY: "false", contract.TORCH: "2.14.1", contract.CUDA: "None", contract.HOST: "bench",
              contract.GRID_PREFIX + grid.name: "1", contract.GRIDS: grid.name, contract.DEVICE: "cpu",
              contract.HEARTBEAT: str(start // 1000), contract.ATTEMPTS: "1", contract.EPOCHS_DONE: str(epochs),
              contract.MLFLOW_RUN_NAME: f"{grid.name}/{t.row}/seed{t.seed}", contract.MLFLOW_USER: "bench", **runtime0}
        if status == "FINISHED":
            tg[contract.COLLAPSED] = "true" if roll > 0.97 else "false"
            tg[contract.COLLAPSE_REASON] = "uniform teacher" if roll > 0.97 else ""
        if status == "FAILED":
            tg[contract.FAILURE_REASON] = "RuntimeError: synthetic failure"
        if superseded:
            tg[contract.SUPERSEDED] = "true"
        tags.extend((k, v, rid) for k, v in tg.items())
        params.extend((k, v, rid) for k, v in {**params0, "train.seed": str(t.seed)}.items())
        knn = 60.0 - int(t.row[3:]) + rnd.gauss(0, 1)
        done = epochs if status == "FINISHED" else epochs // 2
        last: dict[str, tuple] = {}  # metric -> (value, step): what latest_metrics keeps
        for m in (m for m in contract.PER_EPOCH_METRICS if m != contract.UNREADABLE_IMAGES):  # synthetic data decodes no files
            vals = [knn * (e + 1) / epochs if m == contract.KNN_TOP1 else rnd.random() for e in range(done)]
            history.extend((m, v, now, rid, e, 0) for e, v in enumerate(vals))
            if vals:
                last[m] = (vals[-1], done - 1)
                if status == "FINISHED":
                    for key, v in ((contract.final_key(m), vals[-1]), (contract.best_key(m), max(vals)),
                                   (contract.last_key(m), sum(vals[-3:]) / len(vals[-3:]))):
                        last[key] = (v, epochs)
        if status == "FINISHED":
            for m in contract.FINAL_METRICS:
                v = knn if m == contract.KNN_TOP1 else knn + 5 if m == contract.LINEAR_TOP1 else rnd.random() * 100
                last[m] = (v, epochs)
                history.append((m, v, now, rid, epochs, 0))
        latest.extend((m, v, now, step, 0, rid) for m, (v, step) in last.items())

    for grid in grids:
        for t in grid.trials:
            start = now - rnd.randint(0, 10**7)
            if rnd.random() < 0.02:
                add_run(grid, t, start - 10**7, superseded=True)
            add_run(grid, t, start, superseded=False)

    con = sqlite3.connect(db)
    con.execute("PRAGMA synchronous = OFF")
    with con:
        con.executemany("INSERT INTO runs (run_uuid, name, source_type, source_name, entry_point_name, user_id, status,"
                        " start_time, end_time, source_version, lifecycle_stage, artifact_uri, experiment_id)"
                        " VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?)", runs)
        con.executemany("INSERT INTO tags (key, value, run_uuid) VALUES (?,?,?)", tags)
        con.executemany("INSERT INTO params (key, value, run_uuid) VALUES (?,?,?)", params)
        con.executemany("INSERT INTO latest_metrics (key, value, timestamp, step, is_nan, run_uuid) VALUES (?,?,?,?,?,?)", latest)
        con.executemany("INSERT OR IGNORE INTO metrics (key, value, timestamp, run_uuid, step, is_nan) VALUES (?,?,?,?,?,?)", history)
    con.close()
    return len(runs)


@dataclass
class Store:
    uri: str
    db: Path
    experiment_id: str
    grids: list
    n_runs: int
    build_s: float


def build_store(folder: Path, n_runs: int, epochs: int) -> Store:
    """A new SQLite store in ``folder`` holding ``n_runs`` trial runs (see the module docstring)."""
    from mlflow.tracking import MlflowClient

    from dinolab.report.synthetic import new_sqlite_store

    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    folder.mkdir(parents=True, exist_ok=True)
    db = folder / "mlflow.db"
    db.unlink(missing_ok=True)
    uri = new_sqlite_store(db)
    exp = MlflowClient(tracking_uri=uri).create_experiment("bench", artifact_location=(folder / "artifacts").as_uri())
    grids = make_grids(n_runs)
    start = time.perf_counter()
    n = fill_store(db, int(exp), (folder / "artifacts").as_uri(), grids, epochs)
    return Store(uri, db, exp, grids, n, time.perf_counter() - start)


def _times(fn: Callable[[], object], repeat: int) -> tuple[list[float], object]:
    out, values = None, []
    for _ in range(repeat):
        t = time.perf_counter()
        out = fn()
        values.append(time.perf_counter() - t)
    return values, out


def time_paths(store: Store, repeat: int = 3, baseline: bool = True,
               on_result: Optional[Callable[[str, int, list[float]], None]] = None) -> dict[str, dict]:
    """{path name: {"runs": n, "seconds": [per repeat]}} for each read path (module docstring)."""
    import mlflow

    from dinolab.report.render import render_markdown
    from dinolab.report.runs import load_runs
    from dinolab.report.table import build_table, required_keys, tables_for_grids

    uri, grids, n = store.uri, store.grids, store.n_runs
    ids = [t.trial_id for g in grids for t in g.trials]
    keys = required_keys(grids)
    one = grids[0]
    one_ids = [t.trial_id for t in one.trials]
    results: dict[str, dict] = {}

    def add(name, n_runs, fn, times=repeat):
        seconds, out = _times(fn, times)
        results[name] = {"runs": n_runs, "seconds": seconds}
        if on_result is not None:
            on_result(name, n_runs, seconds)
        return out

    frame = add("sql, report keys (20 grids)", n, lambda: load_runs(uri, ids, method="sql", **keys))
    if len(frame) != n:
        raise RuntimeError(f"load_runs returned {len(frame)} runs, the store holds {n}")
    add(ALL_TABLES, n, lambda: [render_markdown(t) for t in tables_for_grids(grids, uri, method="sql")])
    add("sql, every key (all runs)", n, lambda: load_runs(uri, method="sql"))
    add("one grid table (sql)", len(one_ids), lambda: build_table(one, load_runs(uri, one_ids, method="sql", **keys)))
    add("client pages, report keys", n, lambda: load_runs(uri, ids, method="search", **keys), times=1)
    if baseline:
        mlflow.set_tracking_uri(uri)
        base = add(BASELINE, n, lambda: mlflow.search_runs(experiment_ids=[store.experiment_id], max_results=100_000),
                   times=1)
        if len(base) != n:
            raise RuntimeError(f"mlflow.search_runs returned {len(base)} runs, the store holds {n}")
        add("one grid: search_runs (baseline)", len(one_ids), lambda: mlflow.search_runs(
            experiment_ids=[store.experiment_id], filter_string=f"tags.`dinolab.grid.{one.name}` = '1'",
            max_results=100_000), times=1)
    return results


def report_figure(ctx: BenchContext) -> Record:
    n_runs, epochs = (200, 2) if ctx.quick else (10_000, 10)
    repeats = ctx.reps(3, 1)
    store = build_store(ctx.workdir / "report_store", n_runs, epochs)
    results = time_paths(store, repeat=repeats, baseline=True)
    value, base = summary(results[ALL_TABLES]["seconds"]), summary(results[BASELINE]["seconds"])
    return ctx.record(
        name="report", title=f"report: {store.n_runs:,} runs over {N_GRIDS} grids in a SQLite store, every table",
        config={"runs": store.n_runs, "grids": N_GRIDS, "rows_per_grid": N_ROWS, "epochs_of_history": epochs,
                "store": "SQLite", "store_build_s": round(store.build_s, 2)},
        value=value["median"], unit="s", baseline=base["median"],
        baseline_desc="the same runs read through plain mlflow.search_runs (to pandas; tables not built)",
        ratio=value["median"] / base["median"], ratio_desc="report --all / mlflow.search_runs",
        target=f"all tables in < {TARGET_S:g} s", passed=value["median"] < TARGET_S, repeats=repeats, spread=value,
        baseline_spread=base, peak_memory_mb=None, peak_memory_kind="",
        extra={"paths_s": {k: summary(v["seconds"]) for k, v in results.items()}},
    )
