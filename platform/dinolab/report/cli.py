"""``dinolab report`` and ``dinolab dashboard``.

    dinolab report ablations/dino_table7.yaml                  # Markdown table on stdout (fits 120 columns)
    dinolab report ablations/dino_table7.yaml --costs          # the full table: every cost column, seed counts
    dinolab report ablations/dino_table7.yaml --format latex   # booktabs LaTeX
    dinolab report --all --out reports/                        # every grid: <grid>.md, .tex, .csv
    dinolab dashboard ablations/dino_table7.yaml               # dashboards/<grid>.html (+ on the grid's parent run)
    dinolab dashboard --all                                    # every grid's page and dashboards/index.html
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
    r.add_argument("--costs", action="store_true", help="Markdown: the full table (every cost column, seed counts, the "
                   "paper's effects, failure reasons); the default fits 120 columns")
    _common(r)
    r.set_defaults(func=cmd_report)

    d = subparsers.add_parser("dashboard", help="a grid's self-contained HTML dashboard (also logged on its parent run); "
                              "--all: every grid's, and dashboards/index.html linking them")
    d.add_argument("ablation", nargs="?", help="ablation YAML")
    d.add_argument("--all", action="store_true", help="every grid in --ablations, and an index.html linking their pages")
    d.add_argument("--ablations", default="ablations", help="folder of ablation YAMLs for --all (default: ablations)")
    d.add_argument("--out", help="HTML file or folder (default: dashboards/<grid>.html; --all: a folder, default dashboards/)")
    d.add_argument("--no-log", action="store_true", help="do not log the page on the grid's parent run")
    _common(d)
    d.set_defaults(func=cmd_dashboard)


def _grid_paths(args) -> list[Path]:
    if args.all:
        if args.ablation:
            raise ConfigError(f"{args.command}: give an ablation YAML or --all, not both")
        folder = Path(args.ablations)
        paths = sorted(folder.glob("*.yaml")) + sorted(folder.glob("*.yml"))
        if not paths:
            raise ConfigError(f"{args.command} --all: no *.yaml in {folder} (set --ablations)")
        return paths
    if not args.ablation:
        raise ConfigError(f"{args.command}: give an ablation YAML (e.g. ablations/dino_table7.yaml) or --all")
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
                path.write_text(render(table, fmt, costs=args.costs), encoding="utf-8")
                print(path)
        else:
            sys.stdout.write(render(table, args.format, costs=args.costs))
            if len(tables) > 1:
                sys.stdout.write("\n")
    return 1 if failed else 0


def cmd_dashboard(args) -> int:
    from .dashboard import DEFAULT_DIR

    if not args.all:
        return _dashboard(args, args.ablation, args.out)[0]
    folder = Path(args.out) if args.out else DEFAULT_DIR
    if folder.suffix == ".html":
        raise ConfigError(f"dashboard --all: --out must be a folder (it gets <grid>.html and index.html), got {folder}")
    _check_out(folder)
    pages, failed = [], 0
    for path in _grid_paths(args):
        try:
            code, written, table = _dashboard(args, path, folder)
        except ConfigError as e:
            failed += 1
            print(f"dinolab: error: {e}", file=sys.stderr)
            continue
        pages.append((table, written))
    from .index import write_index

    print(write_index(pages, folder))
    return 1 if failed else 0


def _dashboard(args, ablation, out):
    from .dashboard import write_dashboard
    from .table import as_grid

    _check_out(out, is_file_ok=True)
    grid = as_grid(ablation, args.set)
    _check_stores([grid], args)
    path, table, parent = write_dashboard(grid, out, args.tracking_uri, args.set,
                                          log_to_parent=not args.no_log, method=args.method)
    print(path)
    if parent:
        print(f"logged on the parent run {parent} of grid {table.grid} (artifact dashboard/{table.grid}.html)", file=sys.stderr)
    return 0, path, table
