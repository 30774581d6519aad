"""Tracking-overhead figure: training epochs with MLflow logging against the same epochs without it.

An "epoch" is the demo experiment's steps per epoch (experiments/demo.yaml: 2000 images / batch 64 = 31
steps) of ``TrainingStep`` followed by what a trial sends at each epoch's end: the loop's one batched
``log_metrics`` call and the trial's heartbeat ``set_tags``. With logging they go to an ``MLflowReporter``
on a SQLite store (the default store), without it to a ``MemoryReporter``. Each repeat runs one epoch of
each, in alternating order.

Figure: per repeat, the wall time the MLflow calls took inside the logged epoch over the same repeat's
epoch without logging (median and min-max over the repeats): the time logging adds to each step. The
paired difference of the two epochs' wall times (``extra.paired_difference_pct``) measures the same thing
and also any slowdown of the steps themselves, but it cannot resolve a fraction of a percent of a
seconds-long epoch on a shared machine; it is reported beside the figure, with its spread. The store is
created and the run opened before timing (a trial pays that once, not per step). Steps run on fixed views
(no data loading), which makes the step shorter and the relative overhead larger, not smaller.
"""

from __future__ import annotations

import time

from dinolab.config import load_experiment
from dinolab.track import contract

from .context import BenchContext
from .record import PeakMemory, Record, summary
from .step import TrainingStep

TARGET_PCT = 2.0  # under 2% per step


def _epoch(step: TrainingStep, steps: int, reporter, epoch: int, cfg) -> tuple[float, float]:
    """(seconds of the steps + the epoch-end logging, seconds of the logging alone)."""
    start = time.perf_counter()
    losses = [step() for _ in range(steps)]
    mid = time.perf_counter()
    metrics = {
        contract.LOSS: sum(losses) / len(losses), contract.TEACHER_ENTROPY: 0.0, contract.KL: 0.0, contract.LR: cfg.train.lr,
        contract.WEIGHT_DECAY: cfg.train.weight_decay, contract.MOMENTUM: cfg.dino.momentum, contract.TEACHER_TEMP: cfg.dino.teacher_temp,
        contract.IMAGES_PER_S: steps * cfg.train.batch_size / max(mid - start, 1e-9),
    }
    reporter.log_metrics(metrics, step=epoch)  # the loop, once per epoch
    reporter.set_tags({contract.HEARTBEAT: str(int(time.time())), contract.EPOCHS_DONE: str(epoch + 1)})  # the trial
    end = time.perf_counter()
    return end - start, end - mid


def tracking_figure(ctx: BenchContext) -> Record:
    from dinolab.report.synthetic import new_sqlite_store
    from dinolab.track.mlflow_store import MLflowReporter, client_for, start_run
    from dinolab.track.reporter import MemoryReporter
    from dinolab.trial import trial_tags

    ctx.reset_threads()
    cfg = load_experiment(ctx.demo_experiment(), ["train.progress=false", f"train.device={ctx.device}"])
    steps_per_epoch = 3 if ctx.quick else cfg.data.synthetic_train // cfg.train.batch_size
    repeats = ctx.reps(5, 2)

    uri = new_sqlite_store(ctx.workdir / "tracking" / "mlflow.db")
    client = client_for(uri)
    experiment_id = client.create_experiment("bench_tracking", artifact_location=(ctx.workdir / "tracking" / "artifacts").as_uri())
    run_id = start_run(client, experiment_id, "bench_tracking", trial_tags(cfg, "bench-tracking", "synthetic"))
    mlflow_reporter, memory_reporter = MLflowReporter(client, run_id), MemoryReporter()

    with PeakMemory(ctx.device) as mem:
        step = TrainingStep(cfg, ctx.device)
        step()  # warm-up
        _epoch(step, 1, mlflow_reporter, 0, cfg)  # warm-up of the store's connection
        with_s, without_s, logging_s = [], [], []
        for r in range(repeats):
            order = (True, False) if r % 2 == 0 else (False, True)
            for logged in order:
                if logged:
                    total, log_only = _epoch(step, steps_per_epoch, mlflow_reporter, r + 1, cfg)
                    with_s.append(total)
                    logging_s.append(log_only)
                else:
                    without_s.append(_epoch(step, steps_per_epoch, memory_reporter, r + 1, cfg)[0])
    overhead = [100.0 * lg / b for lg, b in zip(logging_s, without_s)]
    paired = [100.0 * (w - b) / b for w, b in zip(with_s, without_s)]
    value, base = summary(overhead), summary(without_s)
    return ctx.record(
        name="tracking", title=f"tracking overhead: MLflow logging per epoch of {steps_per_epoch} demo steps",
        config={"experiment": "experiments/demo.yaml", "steps_per_epoch": steps_per_epoch, "batch": cfg.train.batch_size,
                "store": "SQLite (MlflowClient)", "threads": ctx.threads, "device": str(ctx.device)},
        value=value["median"], unit="% per step", baseline=base["median"] / steps_per_epoch,
        baseline_desc="the same steps without logging (s/step, MemoryReporter)",
        ratio=1.0 + value["median"] / 100.0, ratio_desc="(steps + logging) / steps",
        target=f"overhead < {TARGET_PCT:g}%", passed=value["median"] < TARGET_PCT, repeats=repeats, spread=value,
        baseline_spread=summary(b / steps_per_epoch for b in without_s), peak_memory_mb=mem.mb, peak_memory_kind=mem.kind,
        extra={"logging_s_per_epoch": summary(logging_s), "epoch_with_logging_s": summary(with_s),
               "epoch_without_logging_s": base, "paired_difference_pct": summary(paired)},
    )
