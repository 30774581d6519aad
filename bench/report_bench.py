"""How fast `dinolab report` reads a large store: direct SQL on SQLite against mlflow.search_runs.

Creates N trial runs over 20 grids (10 rows each, N/200 seeds) in a temporary SQLite MLflow store, written
straight into MLflow's tables (the same tags, params, latest metrics and per-epoch history rows a trial
leaves, about 2% superseded reruns, some failed, running and collapsed), then times:

  sql, report keys     load_runs(method="sql") with the keys the tables need, all 20 grids' runs
  report --all (sql)   the above + building and rendering the 20 tables
  sql, every key       load_runs(method="sql") of every run with every metric, param and tag
  client pages         load_runs(method="search"): the fallback for http/postgres stores
  mlflow.search_runs   the baseline: mlflow.search_runs over the experiment, to pandas
  one grid (sql / search_runs)   a single grid's table

    python bench/report_bench.py --runs 2000
    python bench/report_bench.py --runs 10000 --epochs 10 --skip-baseline
"""

from __future__ import annotations

import argparse
import os
import random
import sqlite3
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "platform"))
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")

from dinolab.config import ExperimentConfig, flatten, identity_dict, runtime_dict  # noqa: E402
from dinolab.report.render import render_markdown  # noqa: E402
from dinolab.report.runs import load_runs  # noqa: E402
from dinolab.report.synthetic import new_sqlite_store  # noqa: E402
from dinolab.report.table import build_table, required_keys, tables_for_grids  # noqa: E402

N_GRIDS, N_ROWS = 20, 10
PER_EPOCH = ("loss", "teacher_entropy", "kl", "lr", "weight_decay", "momentum", "teacher_temp", "images_per_s", "knn_top1")
FINALS = ("knn_top1", "linear_top1", "knn_top1_random_init", "throughput_images_per_s", "wall_time_s", "peak_rss_mb",
          "cuda_peak_mb", "cpu_hours", "gpu_hours", "epochs_done", "linear_val_top1", "train_seconds", "loop_wall_s")


# The grid interface the report reads (dinolab.config.grid.Grid), filled directly: expanding 10,000
# validated configs would time the config layer, not the report.
@dataclass
class Column:
    metric: str
    label: str
    agg: str = "final"
    paper: str | None = None


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
        cols = [Column("knn_top1", "k-NN", "final", "knn"), Column("linear_top1", "Linear", "final", "linear"),
                Column("knn_top1", "k-NN best", "best")]
        grids.append(Grid(f"bench_grid_{g:02d}", rows, trials, cols, seeds))
    return grids


def fill_store(db: Path, experiment_id: int, artifact_root: str, grids: list[Grid], epochs: int, seed: int = 0) -> int:
    """Insert one run per trial (+2% superseded reruns) straight into MLflow's tables; returns the run count."""
    rnd = random.Random(seed)
    base = ExperimentConfig()
    params0 = {k: str(v) for k, v in flatten(identity_dict(base)).items()}
    runtime0 = {f"runtime.{k}": str(v) for k, v in flatten(runtime_dict(base)).items()}
    now = int(time.time() * 1000)
    runs, tags, params, latest, history = [], [], [], [], []

    def add_run(grid: Grid, t: Trial, start: int, superseded: bool) -> None:
        rid = uuid.uuid4().hex
        roll = rnd.random()
        status = "FAILED" if roll < 0.03 else "RUNNING" if roll < 0.05 else "FINISHED"
        runs.append((rid, f"{grid.name}/{t.row}/seed{t.seed}", "LOCAL", "", "", "bench", status, start,
                     None if status == "RUNNING" else start + 60_000, "", "active", f"{artifact_root}/{rid}/artifacts",
                     experiment_id))
        tg = {"dinolab.trial_id": t.trial_id, "dinolab.config_hash": t.config_hash, "dinolab.data_fingerprint": "fp",
              "dinolab.method_version": "1", "dinolab.version": "0.1.0", "dinolab.git_commit": "0" * 40,
              "dinolab.git_dirty": "false", "dinolab.torch": "2.14.1", "dinolab.cuda": "None", "dinolab.host": "bench",
              f"dinolab.grid.{grid.name}": "1", "dinolab.grids": grid.name, "dinolab.device": "cpu",
              "dinolab.heartbeat": str(start // 1000), "dinolab.attempts": "1", "dinolab.epochs_done": str(epochs),
              "mlflow.runName": f"{grid.name}/{t.row}/seed{t.seed}", "mlflow.user": "bench", **runtime0}
        if status == "FINISHED":
            tg["dinolab.collapsed"] = "true" if roll > 0.97 else "false"
            tg["dinolab.collapse_reason"] = "uniform teacher" if roll > 0.97 else ""
        if status == "FAILED":
            tg["dinolab.failure_reason"] = "RuntimeError: synthetic failure"
        if superseded:
            tg["dinolab.superseded"] = "true"
        tags.extend((k, v, rid) for k, v in tg.items())
        params.extend((k, v, rid) for k, v in {**params0, "train.seed": str(t.seed)}.items())
        knn = 60.0 - int(t.row[3:]) + rnd.gauss(0, 1)
        done = epochs if status == "FINISHED" else epochs // 2
        last: dict[str, tuple] = {}  # metric -> (value, step): what latest_metrics keeps
        for m in PER_EPOCH:
            vals = [knn * (e + 1) / epochs if m == "knn_top1" else rnd.random() for e in range(done)]
            history.extend((m, v, now, rid, e, 0) for e, v in enumerate(vals))
            if vals:
                last[m] = (vals[-1], done - 1)
                if status == "FINISHED":
                    for kind, v in (("final", vals[-1]), ("best", max(vals)), ("last3", sum(vals[-3:]) / len(vals[-3:]))):
                        last[f"{kind}/{m}"] = (v, epochs)
        if status == "FINISHED":
            for m in FINALS:
                v = knn if m == "knn_top1" else knn + 5 if m == "linear_top1" else rnd.random() * 100
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


def timed(fn, repeat: int = 1):
    best, out = float("inf"), None
    for _ in range(repeat):
        t = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t)
    return best, out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=2000, help="trial runs to create (default 2000)")
    ap.add_argument("--epochs", type=int, default=10, help="per-epoch history rows per metric (default 10)")
    ap.add_argument("--repeat", type=int, default=3, help="repetitions of each fast timing (best is shown)")
    ap.add_argument("--skip-baseline", action="store_true", help="do not time mlflow.search_runs (slow at 10k runs)")
    ap.add_argument("--keep", help="write the store here instead of a temporary folder")
    args = ap.parse_args(argv)

    import mlflow
    from mlflow.tracking import MlflowClient

    tmp = Path(args.keep or tempfile.mkdtemp(prefix="dinolab-report-bench-"))
    tmp.mkdir(parents=True, exist_ok=True)
    db = tmp / "mlflow.db"
    db.unlink(missing_ok=True)
    uri = new_sqlite_store(db)
    client = MlflowClient(tracking_uri=uri)
    exp = client.create_experiment("bench", artifact_location=(tmp / "artifacts").as_uri())
    grids = make_grids(args.runs)
    t0 = time.perf_counter()
    n = fill_store(db, int(exp), (tmp / "artifacts").as_uri(), grids, args.epochs)
    print(f"store: {n} runs ({sum(len(g.trials) for g in grids)} trials, {N_GRIDS} grids) written in "
          f"{time.perf_counter() - t0:.1f} s, {db.stat().st_size / 2**20:.0f} MiB: {db}")

    ids = [t.trial_id for g in grids for t in g.trials]
    keys = required_keys(grids)
    one = grids[0]
    one_ids = [t.trial_id for t in one.trials]
    results = []

    def add(name, n_runs, fn, repeat=args.repeat):
        sec, out = timed(fn, repeat)
        results.append((name, n_runs, sec))
        print(f"  {name:<34} {sec:7.2f} s", flush=True)
        return out

    frame = add("sql, report keys (20 grids)", n, lambda: load_runs(uri, ids, method="sql", **keys))
    assert len(frame) == n, (len(frame), n)
    add("report --all (sql): 20 tables", n,
        lambda: [render_markdown(t) for t in tables_for_grids(grids, uri, method="sql")])
    add("sql, every key (all runs)", n, lambda: load_runs(uri, method="sql"))
    add("one grid table (sql)", len(one_ids), lambda: build_table(one, load_runs(uri, one_ids, method="sql", **keys)))
    add("client pages, report keys", n, lambda: load_runs(uri, ids, method="search", **keys), repeat=1)
    if not args.skip_baseline:
        mlflow.set_tracking_uri(uri)
        base = add("mlflow.search_runs (baseline)", n,
                   lambda: mlflow.search_runs(experiment_ids=[exp], max_results=100_000), repeat=1)
        assert len(base) == n
        mlflow.set_tracking_uri(uri)
        add("one grid: search_runs (baseline)", len(one_ids), lambda: mlflow.search_runs(
            experiment_ids=[exp], filter_string=f"tags.`dinolab.grid.{one.name}` = '1'", max_results=100_000), repeat=1)

    print()
    print(f"| path | runs | seconds | runs/s |")
    print(f"|---|---:|---:|---:|")
    for name, runs, sec in results:
        print(f"| {name} | {runs} | {sec:.2f} | {runs / sec:,.0f} |")
    if not args.keep:
        import shutil

        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
