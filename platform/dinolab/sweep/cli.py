"""``dinolab sweep`` and ``dinolab status``: the command-line face of the launcher.

  dinolab sweep ablations/demo.yaml --dry-run     the trial table: row, seed, overrides, id, status
  dinolab sweep ablations/demo.yaml               runs what is missing (locally: as many as fit)
  dinolab sweep ablations/dino_table7.yaml --address auto --gpus-per-worker 1 --workers 8
  dinolab sweep ablations/dino_table7.yaml --address auto --storage /shared/dinolab --max-node-gpus 8
  dinolab sweep ablations/demo.yaml --cancel      running trials stop at their next step (runs KILLED)
  dinolab status ablations/demo.yaml              per trial: finished, running, failed (why), missing, ...
  dinolab status ablations/demo.yaml --watch      the sweep's table, refreshed until the grid is done
  dinolab status                                  every grid in the store with its trials' counts
Exit codes: 0 every trial of the grid is done (or the request was written), 1 some trial is not,
2 bad input (one line on stderr).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from dinolab.config import ConfigError
from dinolab.home import redact_uri


def _env_float(value, env: str):
    """The flag's value, else the environment variable's (a site setting), else None."""
    if value is not None:
        return value
    text = os.environ.get(env)
    if not text:
        return None
    try:
        return float(text)
    except ValueError:
        raise ConfigError(f"${env} must be a number, got {text!r}") from None


def _storage(args) -> Path:
    """The storage root: --storage or the dinolab home, a folder that exists or can be created."""
    from dinolab.home import default_storage, home_label, writable_folder

    return writable_folder(args.storage or default_storage(), "--storage" if args.storage else home_label())


def _tracking(grid, write: bool) -> None:
    """The grid's store is usable (a one-line error within seconds otherwise)."""
    from dinolab.track.check import check_tracking, uri_source

    from .launcher import grid_tracking

    uri, _ = grid_tracking(grid)
    configured = next((t.config.tracking.uri for t in grid.trials if t.config.tracking.uri), None)
    check_tracking(uri, uri_source(None, configured), write=write)


def _grid(args):
    from .launcher import load_sweep_grid

    return load_sweep_grid(
        args.ablation, args.set, workers=getattr(args, "workers", None), cpus_per_worker=getattr(args, "cpus_per_worker", None),
        gpus_per_worker=getattr(args, "gpus_per_worker", None),
    )


def cmd_sweep(args) -> int:
    from .launcher import cancel, check_launch_options, format_plan, launch, plan_grid

    if args.cancel and (args.dry_run or args.rerun or args.rerun_failed):
        raise ConfigError("--cancel cannot be combined with --dry-run, --rerun or --rerun-failed")
    for flag, value in (("--workers", args.workers), ("--cpus-per-worker", args.cpus_per_worker),
                        ("--gpus-per-worker", args.gpus_per_worker)):
        if value is not None and not (value == value and abs(value) != float("inf")):
            raise ConfigError(f"{flag} must be a finite number, got {value}")
    max_node_cpus = _env_float(args.max_node_cpus, "DINOLAB_MAX_NODE_CPUS")
    max_node_gpus = _env_float(args.max_node_gpus, "DINOLAB_MAX_NODE_GPUS")
    check_launch_options(args.max_concurrent, args.max_failures, args.scheduler, max_node_cpus, max_node_gpus,
                         args.wait_for_resources)
    storage = _storage(args)
    grid = _grid(args)
    _tracking(grid, write=not args.dry_run)
    if args.cancel:
        marker, running = cancel(grid, storage)
        print(f"grid {grid.name}: cancel requested ({marker}); {len(running)} running trial(s) stop at their next step, "
              f"their runs are marked KILLED and their checkpoints kept; the next launch resumes them")
        return 0
    plan = plan_grid(grid, storage, rerun=args.rerun, rerun_failed=args.rerun_failed, strict=not args.dry_run)
    if args.dry_run:
        print(format_plan(plan), end="")
        return 0
    print(f"dinolab: tracking store {redact_uri(plan.tracking_uri)}, experiment {plan.experiment}", file=sys.stderr)
    print(f"dinolab: trials and checkpoints under {plan.storage / 'trials'}", file=sys.stderr)
    report = launch(
        plan, address=args.address, max_concurrent=args.max_concurrent, max_failures=args.max_failures,
        scheduler=args.scheduler, verbose=0 if args.quiet else 1, max_node_cpus=max_node_cpus,
        max_node_gpus=max_node_gpus, wait_for_resources_s=args.wait_for_resources,
    )
    after = report.after or plan
    print(format_plan(after, with_detail=True), end="")
    for tid, error in report.errors.items():
        print(f"trial {tid} failed after {args.max_failures} retries: {error}")
    skipped = [i for i in after.items if i.state == "failed"]
    tail = f"; {len(skipped)} failed trial(s) not retried (--rerun-failed retries them)" if skipped and not report.launched else ""
    print(f"grid {grid.name}: launched {report.launched} trial(s), tagged {report.tagged} finished run(s) with this grid"
          f" in {report.wall_s:.0f} s{tail}")
    return 0 if report.complete else 1


def cmd_status(args) -> int:
    from .launcher import format_plan, plan_grid

    if args.ablation is None:
        return _status_all(args)
    if not 0 < args.interval < float("inf"):
        raise ConfigError(f"--interval must be a finite number of seconds > 0, got {args.interval:g}")
    storage = _storage(args)
    grid = _grid(args)
    _tracking(grid, write=False)
    plan = plan_grid(grid, storage, strict=False)
    print(f"dinolab: tracking store {redact_uri(plan.tracking_uri)}, experiment {plan.experiment}", file=sys.stderr)
    if args.watch:
        return _watch(lambda: plan_grid(grid, storage, strict=False), args.interval)
    print(format_plan(plan, with_detail=True), end="")
    return 0


def _watch(read_plan, interval: float) -> int:
    """Redraw the sweep's table from the store every ``interval`` s until no trial runs or waits to run.

    On a terminal the table is redrawn in place; otherwise it is printed again whenever it changes."""
    import time

    from .view import FAILED, DONE, from_plan

    view = from_plan(read_plan())
    live = None
    if sys.stdout.isatty():
        from .live import LiveTable

        live = LiveTable(lambda: view.table(), stream=sys.stdout, interval=0)
        live.start()
    shown = None
    try:
        while True:
            lines = view.table()
            if live is not None:
                live.draw(force=True)
            elif lines[1:] != shown:
                print("\n".join(lines), flush=True)
                shown = lines[1:]
            if all(line.state in (DONE, FAILED) for line in view.lines):
                break
            time.sleep(interval)
            view = from_plan(read_plan())
    finally:
        if live is not None:
            live.stop()
    return 0 if all(line.state == DONE for line in view.lines) else 1


def _status_all(args) -> int:
    from dinolab.home import resolve_tracking_uri
    from dinolab.track.check import check_tracking, uri_source

    from . import store
    from .overview import format_summaries, grid_summaries

    if args.watch:
        raise ConfigError("status --watch needs a grid YAML (e.g. dinolab status ablations/demo.yaml --watch)")
    uri = check_tracking(resolve_tracking_uri(args.tracking_uri), uri_source(args.tracking_uri))
    print(f"dinolab: tracking store {redact_uri(uri)}", file=sys.stderr)
    summaries = grid_summaries(store.open_client(uri), _storage(args)) if store.store_exists(uri) else []
    print(format_summaries(summaries), end="")
    return 0


def add_sweep_commands(subparsers) -> None:
    s = subparsers.add_parser("sweep", help="run an ablation grid on Ray Tune (only the trials not yet finished)")
    s.add_argument("ablation", help="grid YAML, e.g. ablations/demo.yaml")
    s.add_argument("--dry-run", action="store_true", help="print the trial table with each trial's status; run nothing")
    s.add_argument("--rerun", action="store_true", help="run every trial again from scratch (old runs tagged superseded)")
    s.add_argument("--rerun-failed", action="store_true", help="retry failed trials (from their latest checkpoint)")
    s.add_argument("--cancel", action="store_true", help="stop the grid's running trials (runs KILLED, checkpoints kept)")
    s.add_argument("--address", help="join this Ray cluster (default: $RAY_ADDRESS, else a local, isolated Ray)")
    s.add_argument("--storage", help="storage root for checkpoints and locks, shared by all nodes (default: $DINOLAB_HOME)")
    s.add_argument("--workers", type=int, help="data-parallel workers per trial (runtime; default: the grid's resources)")
    s.add_argument("--cpus-per-worker", type=float, help="CPUs per worker, fractions allowed")
    s.add_argument("--gpus-per-worker", type=float, help="GPUs per worker, fractions allowed (the models must fit together)")
    s.add_argument("--max-node-cpus", type=float, help="autoscaling cluster: CPUs of the largest node it can add "
                   "(pre-flight check; default $DINOLAB_MAX_NODE_CPUS)")
    s.add_argument("--max-node-gpus", type=float, help="autoscaling cluster: GPUs of the largest node it can add "
                   "(default $DINOLAB_MAX_NODE_GPUS)")
    s.add_argument("--wait-for-resources", type=float, default=0.0, metavar="SEC",
                   help="when a trial fits no node yet, wait up to SEC seconds for nodes to join (default 0: fail at once)")
    s.add_argument("--max-concurrent", type=int, help="trials at once (default: as many as the resources allow)")
    s.add_argument("--max-failures", type=int, default=2, help="retries of a trial that raises or whose worker dies (default 2)")
    s.add_argument("--scheduler", default="fifo", choices=["fifo", "asha"], help="fifo for ablation grids; asha stops weak trials early (searches)")
    s.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a field in every trial")
    s.add_argument("-q", "--quiet", action="store_true", help="no progress: neither the live table (terminal) nor the "
                   "per-event lines (logs)")
    s.set_defaults(func=cmd_sweep)

    t = subparsers.add_parser("status", help="each trial of a grid: finished, running, failed (why), missing, ...; "
                              "without a grid: every grid in the store with its counts")
    t.add_argument("ablation", nargs="?", help="grid YAML (omit it to list every grid in the store)")
    t.add_argument("--watch", action="store_true", help="redraw the sweep's live table (row, seed, epoch, k-NN, ETA) "
                   "until every trial is done or failed")
    t.add_argument("--interval", type=float, default=10.0, metavar="SEC", help="seconds between --watch refreshes (default 10)")
    t.add_argument("--tracking-uri", help="store to list grids from (no grid given; default: $MLFLOW_TRACKING_URI or "
                   "the dinolab home's store)")
    t.add_argument("--storage", help="storage root (default: $DINOLAB_HOME)")
    t.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="the same overrides the sweep used")
    t.set_defaults(func=cmd_status)
