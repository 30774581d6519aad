"""Sweep-overhead figure: a grid of one-worker trials on Ray Tune, 2 at a time, against the ideal wall time.

Trials: the demo experiment (experiments/demo.yaml) on the CPU with one thread, seeds 0..n-1 of one row,
k-NN and linear probe on 500 / 200 images, its length calibrated so that one trial takes about ``trial_s`` on this machine (one short calibration trial
measures the per-step time and the fixed cost: set-up, k-NN at random init and at the end, linear probe;
an untimed one-step trial before it pays the process's first-call costs).

Baseline: the same trials (the same grid file, expanded the same way) run one after another through
``dinolab.trial.run_trial`` in this process, without Ray, one thread each, each timed; the ideal wall time
of 2 at a time is their sum / 2. Figure: the wall time of ``dinolab sweep``'s public path (``plan_grid`` +
``launch`` with max_concurrent=2: Ray start, Tune, per-trial MLflow runs, Ray shutdown) on a fresh store.
Each part has its own SQLite store (initialised before timing) and storage folder; DINOLAB_HOME points into
the scratch folder while it runs, and RAY_ADDRESS is unset (the local machine is measured).
"""

from __future__ import annotations

import logging
import math
import os
import time
from contextlib import contextmanager
from pathlib import Path

import yaml

from dinolab.track.contract import TRAIN_SECONDS

from .context import BenchContext
from .record import Record, summary

log = logging.getLogger(__name__)

TARGET = 1.15  # wall within 1.15x of the ideal
CONCURRENT = 2


@contextmanager
def _environment(home: Path):
    saved = {k: os.environ.get(k) for k in ("DINOLAB_HOME", "RAY_ADDRESS", "MLFLOW_TRACKING_URI")}
    os.environ["DINOLAB_HOME"] = str(home)
    for k in ("RAY_ADDRESS", "MLFLOW_TRACKING_URI"):
        os.environ.pop(k, None)
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def write_grid(folder: Path, base: Path, n_trials: int, epochs: int, steps_per_epoch: int) -> Path:
    """The benchmark's grid file: one row over the demo experiment ``base``, seeds 0..n-1, one CPU thread per trial."""
    grid = {
        "grid": "bench_sweep",
        "base": str(base),
        "seeds": list(range(n_trials)),
        "resources": {"workers": 1, "cpus_per_worker": 1, "gpus_per_worker": 0},
        "set": {
            "train.epochs": epochs, "train.steps_per_epoch": steps_per_epoch, "train.warmup_epochs": 0,
            "train.progress": False, "train.device": "cpu", "train.threads": 1, "eval.knn_every": epochs,
            "eval.max_train_images": 500, "eval.max_test_images": 200,  # the fixed cost small beside the steps
            "tracking.experiment": "bench_sweep",
        },
        "rows": [{"name": "demo"}],
    }
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"grid_{epochs}x{steps_per_epoch}.yaml"
    path.write_text("# Written by dinolab bench (sweep overhead figure).\n" + yaml.safe_dump(grid, sort_keys=False))
    return path


def _store(path: Path) -> str:
    from dinolab.report.synthetic import new_sqlite_store

    return new_sqlite_store(path)


def _run_alone(trial, uri: str, storage: Path) -> float:
    """Wall seconds of one trial through run_trial (no Ray); raises if it did not finish."""
    from dinolab.trial import run_trial

    start = time.perf_counter()
    outcome = run_trial(trial.config, tracking_uri=uri, storage=storage, grids=["bench_sweep"], fresh=True)
    seconds = time.perf_counter() - start
    if outcome.status != "FINISHED":
        raise RuntimeError(f"baseline trial {outcome.trial_id} ended {outcome.status}: {outcome.reason}")
    return seconds


def calibrate(folder: Path, base: Path, trial_s: float) -> dict:
    """Epochs and steps per epoch for a trial of about ``trial_s`` seconds, from a short probe trial."""
    from dinolab.sweep import load_sweep_grid
    from dinolab.trial import run_trial

    probe_steps = 4
    uri = _store(folder / "calibration" / "mlflow.db")
    for steps in (1, probe_steps):  # the first trial in a process pays its imports and first-call costs: untimed
        path = write_grid(folder / "calibration", base, 1, 1, steps)
        trial = load_sweep_grid(path, [("tracking.uri", uri)]).trials[0]
        start = time.perf_counter()
        outcome = run_trial(trial.config, tracking_uri=uri, storage=folder / "calibration", fresh=True)
        total = time.perf_counter() - start
        if outcome.status != "FINISHED":
            raise RuntimeError(f"calibration trial ended {outcome.status}: {outcome.reason}")
    per_step = outcome.final[TRAIN_SECONDS] / probe_steps
    fixed = max(0.0, total - outcome.final[TRAIN_SECONDS])
    cfg = trial.config
    steps_available = max(1, cfg.data.synthetic_train // cfg.train.batch_size)
    total_steps = max(1, round((trial_s - fixed) / per_step))
    epochs = max(1, math.ceil(total_steps / steps_available))
    steps = max(1, math.ceil(total_steps / epochs))
    return {"per_step_s": per_step, "fixed_s": fixed, "epochs": epochs, "steps_per_epoch": steps,
            "predicted_trial_s": fixed + per_step * epochs * steps}


def sweep_figure(ctx: BenchContext) -> Record:
    from dinolab.sweep import launch, load_sweep_grid, plan_grid

    n_trials, trial_s = (2, 10.0) if ctx.quick else (8, 60.0)
    root, base = ctx.workdir / "sweep", ctx.demo_experiment()
    with _environment(root / "home"):
        cal = calibrate(root, base, trial_s)
        ctx.reset_threads()
        grid_path = write_grid(root, base, n_trials, cal["epochs"], cal["steps_per_epoch"])

        base_uri = _store(root / "baseline" / "mlflow.db")
        baseline = load_sweep_grid(grid_path, [("tracking.uri", base_uri)])
        alone = [_run_alone(t, base_uri, root / "baseline") for t in baseline.trials]
        ctx.reset_threads()

        sweep_uri = _store(root / "sweep" / "mlflow.db")
        grid = load_sweep_grid(grid_path, [("tracking.uri", sweep_uri)])
        start = time.perf_counter()
        plan = plan_grid(grid, root / "sweep")
        report = launch(plan, max_concurrent=CONCURRENT, verbose=0)
        wall = time.perf_counter() - start
        ctx.reset_threads()
    if report.errors or not report.complete:
        raise RuntimeError(f"sweep did not complete: {report.errors or (report.after.counts() if report.after else '')}")
    ideal = sum(alone) / CONCURRENT
    ratio = wall / ideal
    return ctx.record(
        name="sweep", title=f"sweep overhead: {n_trials} one-worker trials of about {trial_s:g} s, {CONCURRENT} at a time",
        config={"trials": n_trials, "concurrent": CONCURRENT, "experiment": "experiments/demo.yaml",
                "epochs": cal["epochs"], "steps_per_epoch": cal["steps_per_epoch"], "threads_per_trial": 1,
                "trial_target_s": trial_s, "store": "SQLite", "ray": "local (started and stopped by the launch)"},
        value=wall, unit="s wall", baseline=ideal,
        baseline_desc=f"ideal: the same trials run one after another without Ray (one thread each), sum / {CONCURRENT}",
        ratio=ratio, ratio_desc="sweep wall / ideal", target=f"ratio <= {TARGET}", passed=ratio <= TARGET,
        repeats=1, spread=summary([wall]), baseline_spread={}, peak_memory_mb=None, peak_memory_kind="",
        extra={"trial_alone_s": alone, "trial_alone_summary": summary(alone), "calibration": cal,
               "launch_wall_s": report.wall_s},
    )
