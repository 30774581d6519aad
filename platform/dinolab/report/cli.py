"""``dinolab report`` and ``dinolab dashboard``.

    dinolab report ablations/dino_table7.yaml                  # Markdown table on stdout
    dinolab report ablations/dino_table7.yaml --format latex   # booktabs LaTeX
    dinolab report --all --out reports/                        # every grid: <grid>.md, .tex, .csv
    dinolab dashboard ablations/dino_table7.yaml               # dashboards/<grid>.html (+ on the grid's parent run)
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from dinolab.config import ConfigError

from .render import FORMATS, SUFFIX, render
from .runs import METHODS

log = logging.getLogger(__name__)


def _common(p) -> None:
    p.add_argument("--tracking-uri", help="MLflow store to read (default: the trials' tracking.uri, "
                                          "$MLFLOW_TRACKING_URI or the dinolab home's SQLite store)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="the overrides the grid was swept with (they change the trial ids)")
    p.add_argument("--method", choices=METHODS, default="auto", help=argparse.SUPPRESS)  # sql/search, for benchmarks


def add_report_commands(subparsers) -> None:
    r = subparsers.add_parser("report", help="a grid's ablation table from MLflow (Markdown, LaTeX, CSV)")
    r.add_argument("ablation", nargs="?", help="ablation YAML (e.g. ablations/dino_table7.yaml)")
    r.add_argument("--all", action="store_true", help="every grid in --ablations")
    r.add_argument("--ablations", default="ablations", help="folder of ablation YAMLs for --all (default: ablations)")
    r.add_argument("--out", help="write <grid>.md, <grid>.tex and <grid>.csv into this folder instead of printing")
    r.add_argument("--format", choices=FORMATS, default="md", help="printed format (default: md)")
    _common(r)
    r.set_defaults(func=cmd_report)

    d = subparsers.add_parser("dashboard", help="a grid's self-contained HTML dashboard (also logged on its parent run)")
    d.add_argument("ablation", help="ablation YAML")
    d.add_argument("--out", help="HTML file or folder (default: dashboards/<grid>.html)")
    d.add_argument("--no-log", action="store_true", help="do not log the page on the grid's parent run")
    _common(d)
    d.set_defaults(func=cmd_dashboard)


def _grid_paths(args) -> list[Path]:
    if args.all:
        if args.ablation:
            raise ConfigError("report: give an ablation YAML or --all, not both")
        folder = Path(args.ablations)
        paths = sorted(folder.glob("*.yaml")) + sorted(folder.glob("*.yml"))
        if not paths:
            raise ConfigError(f"report --all: no *.yaml in {folder} (set --ablations)")
        return paths
    if not args.ablation:
        raise ConfigError("report: give an ablation YAML (e.g. ablations/dino_table7.yaml) or --all")
    return [Path(args.ablation)]


def _check_stores(grids, args) -> None:
    """Each grid's store is usable (one line within seconds otherwise); reading never creates one."""
    from dinolab.track.check import check_tracking, uri_source

    from .table import grid_tracking_uri

    for g in grids:
        configured = next((t.config.tracking.uri for t in g.trials if getattr(t, "config", None) and t.config.tracking.uri), None)
        check_tracking(grid_tracking_uri(g, args.tracking_uri), uri_source(args.tracking_uri, configured))


def _check_out(out, is_file_ok: bool = False) -> None:
    from dinolab.home import writable_folder

    if out:
        path = Path(out)
        folder = path.parent if is_file_ok and not path.is_dir() and not str(out).endswith("/") and path.suffix else path
        writable_folder(folder, "--out")


def cmd_report(args) -> int:
    from .table import as_grid, tables_for_grids

    _check_out(args.out)
    grids, failed = [], 0
    for path in _grid_paths(args):
        try:
            grids.append(as_grid(path, args.set))
        except ConfigError as e:
            if not args.all:
                raise
            failed += 1
            print(f"dinolab: error: {e}", file=sys.stderr)
    _check_stores(grids, args)
    tables = tables_for_grids(grids, args.tracking_uri, method=args.method)
    for table in tables:
        if args.out:
            out = Path(args.out)
            out.mkdir(parents=True, exist_ok=True)
            for fmt in FORMATS:
                path = out / f"{table.grid}{SUFFIX[fmt]}"
                path.write_text(render(table, fmt), encoding="utf-8")
                print(path)
        else:
            sys.stdout.write(render(table, args.format))
            if len(tables) > 1:
                sys.stdout.write("\n")
    return 1 if failed else 0


def cmd_dashboard(args) -> int:
    from .dashboard import write_dashboard
    from .table import as_grid

    _check_out(args.out, is_file_ok=True)
    grid = as_grid(args.ablation, args.set)
    _check_stores([grid], args)
    path, table, parent = write_dashboard(grid, args.out, args.tracking_uri, args.set,
                                          log_to_parent=not args.no_log, method=args.method)
    print(path)
    if parent:
        print(f"logged on the parent run {parent} of grid {table.grid} (artifact dashboard/{table.grid}.html)", file=sys.stderr)
    return 0
