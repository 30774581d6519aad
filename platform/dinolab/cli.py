"""``dinolab`` command line: run, sweep, status, report, dashboard, ui, server, export, checkpoints, migrate, bench.

Bad input (a wrong key, a missing path, an impossible combination) ends the command with one
line on stderr naming the key and what is allowed, exit code 2, before anything is written.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from dinolab.config import ConfigError

log = logging.getLogger("dinolab")


def _print_home(tracking_uri: str, storage: Path) -> None:
    from dinolab.home import redact_uri

    print(f"dinolab: tracking store {redact_uri(tracking_uri)}", file=sys.stderr)
    print(f"dinolab: trials and checkpoints under {storage / 'trials'}", file=sys.stderr)


def cmd_run(args) -> int:
    from dinolab.config import load_experiment
    from dinolab.home import default_storage, resolve_tracking_uri
    from dinolab.trial import run_trial

    cfg = load_experiment(args.experiment, args.set)
    from dinolab.config.checks import check_device_here
    from dinolab.data.datasets import check_training_data
    from dinolab.home import home_label, writable_folder
    from dinolab.track.check import check_tracking, uri_source

    check_device_here(cfg.train.device)
    check_training_data(cfg)
    storage = writable_folder(args.storage or default_storage(), "--storage" if args.storage else home_label())
    uri = check_tracking(resolve_tracking_uri(cfg.tracking.uri), uri_source(None, cfg.tracking.uri), write=True)
    from dinolab.migrate import require_current_scheme

    require_current_scheme(uri, storage)
    _print_home(uri, storage)
    on_epoch = None
    if not sys.stderr.isatty():  # a terminal has the loop's progress bar; logs and CI get a line per epoch
        from dinolab.track.progress import EpochLog

        on_epoch = EpochLog(cfg.name, cfg.train.epochs)
    outcome = run_trial(cfg, storage=storage, fresh=args.fresh, on_epoch_end=on_epoch)
    print(f"run {outcome.run_id} {outcome.status}" + (f": {outcome.reason}" if outcome.reason else ""))
    from dinolab.track import contract

    for key in (contract.KNN_TOP1_RANDOM_INIT, contract.KNN_TOP1, contract.LINEAR_TOP1, contract.THROUGHPUT, contract.WALL_TIME_S, contract.PEAK_RSS_MB):
        if key in outcome.final:
            print(f"  {key:<24} {outcome.final[key]:.2f}")
    return 0 if outcome.status == "FINISHED" else 1


def cmd_ui(args) -> int:
    from dinolab.report.ui_links import print_ui_links
    from dinolab.serve import serve_ui

    # the runs page and the grids' parent runs, once the store and port passed serve_ui's checks
    return serve_ui(host=args.host, port=args.port, backend=args.backend,
                    announce=lambda uri: print_ui_links(uri, args.host, args.port))


def cmd_server(args) -> int:
    from dinolab.serve import serve_server

    return serve_server(backend=args.backend, artifacts=args.artifacts, host=args.host, port=args.port, workers=args.workers,
                        allowed_hosts=args.allowed_hosts, cors_allowed_origins=args.cors_allowed_origins, app_name=args.app_name)


def cmd_export(args) -> int:
    from dinolab.export import export_weights

    out = export_weights(args.run, Path(args.out), tracking_uri=args.tracking_uri)
    print(f"wrote {out} and {out.with_suffix('.config.yaml')}")
    return 0


def cmd_bench(args) -> int:
    from dinolab.bench.runner import command_line, format_table, run_bench

    out, markdown = Path(args.out), Path(args.markdown)
    command = command_line(args.only, args.quick, args.repeats, args.threads, args.out, args.markdown, args.assemble)
    outcome = run_bench(args.only, quick=args.quick, repeats=args.repeats, threads=args.threads, out=out, markdown=markdown,
                        command=command, assemble_only=args.assemble)
    if outcome.records:
        print(format_table(outcome.records))
    for name in outcome.skipped:
        print(f"{name}: skipped (needs CUDA)")
    for name, error in outcome.failures.items():
        print(f"{name}: FAILED: {error}", file=sys.stderr)
    wrote = [str(p) for p in (outcome.results_path, outcome.markdown_path) if p is not None]
    print(f"command: {command}\nwrote {' and '.join(wrote)}")
    return 1 if outcome.failures else 0


def cmd_backfill(args) -> int:
    from dinolab.backfill import backfill_grid

    done = backfill_grid(args.ablation, metric=args.metric, tracking_uri=args.tracking_uri, overrides=args.set)
    for run_id, metrics in done.items():
        print(f"{run_id} " + " ".join(f"{k}={v:.2f}" for k, v in metrics.items()))
    print(f"backfilled {args.metric} on {len(done)} finished run(s)")
    return 0


def cmd_checkpoints_upgrade(args) -> int:
    from dinolab.train.upgrade import upgrade_checkpoints

    outcomes = upgrade_checkpoints(Path(args.folder), dry_run=args.dry_run)
    for o in outcomes:
        print(f"{o.action:<13} {o.path}" + (f": {o.reason}" if o.reason else ""))
    counts = {a: sum(o.action == a for o in outcomes) for a in ("converted", "would convert", "already safe", "refused")}
    print(", ".join(f"{n} {a}" for a, n in counts.items() if n))
    return 1 if counts["refused"] else 0


def cmd_migrate(args) -> int:
    from dinolab.home import default_storage, resolve_tracking_uri
    from dinolab.migrate import MigrateRefused, migrate

    storage = Path(args.storage).expanduser().resolve() if args.storage else default_storage()
    uri = resolve_tracking_uri(args.tracking_uri)
    _print_home(uri, storage)
    try:
        return migrate(uri, storage, dry_run=args.dry_run)
    except MigrateRefused as e:
        print(f"dinolab: migrate refused: {_one_line(e)}", file=sys.stderr)
        return 2


class _Parser(argparse.ArgumentParser):
    """argparse whose errors are one line on stderr (exit 2), like every other bad input."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {_one_line(message)} (see {self.prog} --help)\n")


def _one_line(text: str, limit: int = 1000) -> str:
    """A message as one line of at most ``limit`` characters (an error never echoes a pasted blob)."""
    text = " ".join(str(text).split())
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text)} chars)"


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="dinolab", description=__doc__.splitlines()[0])
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = p.add_subparsers(dest="command", required=True)

    r = sub.add_parser("run", help="one trial from an experiment YAML")
    r.add_argument("experiment", help="experiment YAML (e.g. experiments/demo.yaml)")
    r.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config field, e.g. model.patch_size=8")
    r.add_argument("--storage", help="where trials keep checkpoints (default: $DINOLAB_HOME)")
    r.add_argument("--fresh", action="store_true", help="start over even if an interrupted checkpoint exists")
    r.set_defaults(func=cmd_run)

    u = sub.add_parser("ui", help="the MLflow UI for the dinolab store, on 127.0.0.1")
    u.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only); "
                   "0.0.0.0 or a network address exposes the UI, which has no login, to every machine that reaches this one")
    u.add_argument("--port", type=int, default=5000, help="TCP port 1-65535 (default 5000)")
    u.add_argument("--backend", help="backend store URI (default: $MLFLOW_TRACKING_URI or the dinolab home's SQLite store)")
    u.set_defaults(func=cmd_ui)

    v = sub.add_parser("server", help="the team's MLflow tracking server (PostgreSQL backend, proxied artifacts), on 127.0.0.1")
    v.add_argument("--backend", help="database URI without a password, e.g. postgresql://user@db/mlflow (password: PGPASSWORD "
                   "or ~/.pgpass; default $MLFLOW_BACKEND_STORE_URI or the dinolab home's SQLite store)")
    v.add_argument("--artifacts", help="folder or bucket the server keeps artifacts in (default: the dinolab home's mlartifacts)")
    v.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1; see docs/team_scale.md before widening)")
    v.add_argument("--port", type=int, default=5000, help="TCP port 1-65535 (default 5000)")
    v.add_argument("--workers", type=int, help="server worker processes (default: MLflow's)")
    v.add_argument("--allowed-hosts", help="Host headers the server answers, comma list (MLflow's DNS-rebinding guard)")
    v.add_argument("--cors-allowed-origins", help="browser origins allowed, comma list")
    v.add_argument("--app-name", help="MLflow server app, e.g. basic-auth (MLflow's login)")
    v.set_defaults(func=cmd_server)

    f = sub.add_parser("backfill", help="add a metric to a grid's finished runs from their saved final weights")
    f.add_argument("ablation", help="ablation YAML")
    f.add_argument("--metric", default="attention", help="what to compute (attention)")
    f.add_argument("--tracking-uri")
    f.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    f.set_defaults(func=cmd_backfill)

    e = sub.add_parser("export", help="write a finished run's trained teacher backbone weights")
    e.add_argument("run", help="MLflow run id")
    e.add_argument("--out", default="backbone.pt", help="weights file (its config beside it as <name>.config.yaml), "
                   "or an existing folder (or a path ending in /) to write backbone.pt and backbone.config.yaml into")
    e.add_argument("--tracking-uri")
    e.set_defaults(func=cmd_export)

    c = sub.add_parser("checkpoints", help="maintain trial checkpoints").add_subparsers(dest="action", required=True)
    cu = c.add_parser("upgrade", help="convert checkpoints written before safe loading so they load with weights_only=True")
    cu.add_argument("folder", help="a storage root, a trial folder or its checkpoints/ (searched recursively)")
    cu.add_argument("--dry-run", action="store_true", help="say what would be converted; write nothing")
    cu.set_defaults(func=cmd_checkpoints_upgrade)

    m = sub.add_parser("migrate", help="re-derive the trial ids of a store's runs and trial folders after an id-scheme change")
    m.add_argument("--dry-run", action="store_true", help="print what would change, change nothing")
    m.add_argument("--tracking-uri", help="the store (default: $MLFLOW_TRACKING_URI or the dinolab home's SQLite store)")
    m.add_argument("--storage", help="the storage folder holding trials/ (default: $DINOLAB_HOME)")
    m.set_defaults(func=cmd_migrate)

    b = sub.add_parser("bench", help="the benchmark figures: a table, bench/results/<machine>.json and BENCHMARKS.md")
    b.add_argument("--only", nargs="+", metavar="NAME", help="run only these figures: gemm_fp32 gemm_bf16 step_vit_tiny4 "
                   "step_vit_tiny16_paper step_vit_small16_paper augment_paper sweep tracking report")
    b.add_argument("--quick", action="store_true", help="shrunk figures and few repeats: a smoke test, not results")
    b.add_argument("--repeats", type=int, help="repeats of every figure (default: each figure's own)")
    b.add_argument("--threads", type=int, help="torch threads of the step and tracking figures (default: the CPUs this process may use)")
    b.add_argument("--out", default="bench/results", help="folder of the per-machine result files (default bench/results)")
    b.add_argument("--markdown", default="BENCHMARKS.md", help="the assembled markdown (default BENCHMARKS.md)")
    b.add_argument("--assemble", action="store_true", help="measure nothing: rebuild the markdown from the result files")
    b.set_defaults(func=cmd_bench)

    _add_package_commands(sub)
    return p


# Subcommands their own packages define: (module, its function that adds them, the commands it adds).
PACKAGE_COMMANDS = (
    ("dinolab.sweep.cli", "add_sweep_commands", ("sweep", "status")),
    ("dinolab.report.cli", "add_report_commands", ("report", "dashboard")),
)


def _add_package_commands(sub) -> None:
    """Each package's subcommands. When a module fails to import, its commands stay listed and, when run, say
    why in one line (exit 1) instead of vanishing from the command line."""
    import importlib

    for module, adder, names in PACKAGE_COMMANDS:
        try:
            add = getattr(importlib.import_module(module), adder)
        except ImportError as e:
            reason = f"cannot import {module} ({type(e).__name__}: {e})"
            for name in names:
                broken = sub.add_parser(name, add_help=False, help=f"unavailable: {reason}")
                broken.set_defaults(func=lambda args, name=name, reason=reason: _unavailable(name, reason), unavailable=True)
        else:
            add(sub)


def _unavailable(name: str, reason: str) -> int:
    print(f"dinolab: error: the {name} command is unavailable: {reason}", file=sys.stderr)
    return 1


def main(argv=None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)  # an unavailable command takes any arguments, to say it is unavailable
    if extra and not getattr(args, "unavailable", False):
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    for noisy in ("alembic", "mlflow", "urllib3", "filelock"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    try:
        return args.func(args)
    except ConfigError as e:
        print(f"dinolab: error: {_one_line(e)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("dinolab: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
