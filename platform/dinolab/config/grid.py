"""Ablation grids expanded into validated trials with stable ids (the file itself: ``gridfile.GridFile``).

Expansion is pure: it reads the grid file (and the grids it extends), its base experiment chain and the paper
tables, never the data folder and never Ray or MLflow. Each trial's ``config_hash`` is known at expansion; its
``trial_id`` also hashes the data's content fingerprint (``dinolab.data.datasets.data_fingerprint``, independent of
where data.root lies), so it is computed on first access, once per distinct data section: that is when a missing
data folder is an error.

Each runnable row is crossed with ``seeds``. A trial's config is built in this order, later layers winning:

    base experiment < grid ``resources`` < grid ``set`` < row ``set`` < command-line overrides < seed

``train.seed`` comes from ``seeds`` only: setting it anywhere else is an error.

Default row: the row whose effect the others are measured against. At most one row may say ``default: true``;
when none does, the first row that is not ``reference_only`` is the default (with ``axes:``, the first generated
row). A reference-only row carries paper values and makes no trials.

Every error is a one-line ``ConfigError`` naming the file, the row (where there is one) and the key.
"""

from __future__ import annotations

import copy
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Optional

from .gridfile import (
    NAME_MUST, NAME_PATTERN, SEED_KEY, Column, GridFile, GridRow, absolute_overrides, format_overrides, read_grid,
)
from .identity import config_hash as compute_config_hash
from .identity import trial_id as compute_trial_id
from .keys import schema_field, unknown
from .loader import ConfigError, apply_overrides, build_config, load_layers, parse_override
from .paper_tables import PaperTable, load_paper_tables
from .schema import DataConfig, ExperimentConfig

Fingerprint = Callable[[DataConfig], str]


class DataFingerprints:
    """``data_fingerprint`` per distinct data section, computed on first use (it reads the data folder)."""

    def __init__(self, fingerprint: Optional[Fingerprint] = None) -> None:
        self._fingerprint = fingerprint
        self._cache: dict[str, str] = {}

    def __call__(self, data_cfg: DataConfig) -> str:
        key = data_cfg.model_dump_json()
        if key not in self._cache:
            fn = self._fingerprint
            if fn is None:
                from dinolab.data.datasets import data_fingerprint as fn
            self._cache[key] = fn(data_cfg)
        return self._cache[key]


@dataclass(eq=False)
class Trial:
    """One run: ``overrides`` are every delta over the base experiment, in application order.

    ``config_hash`` needs only the config. ``trial_id`` also hashes the data's fingerprint, so it is computed
    on first access, when the data must be there (a missing data.root raises ConfigError then, not at
    expansion): expanding a grid never touches the data folder.
    """

    row: str
    seed: int
    overrides: dict[str, Any]
    config: ExperimentConfig
    config_hash: str
    fingerprints: DataFingerprints = field(repr=False, default_factory=DataFingerprints)

    @property
    def data_fingerprint(self) -> str:
        return self.fingerprints(self.config.data)

    @property
    def trial_id(self) -> str:
        return compute_trial_id(self.config, self.data_fingerprint)


@dataclass
class Grid:
    """An expanded grid: ``rows`` in file order (reference-only ones included), ``trials`` = runnable rows x seeds."""

    name: str
    path: Path
    base: Path
    paper_table: Optional[str]
    paper_setup: dict[str, Any]
    seeds: list[int]
    columns: list[Column]
    rows: list[GridRow]
    trials: list[Trial]
    set: dict[str, Any] = field(default_factory=dict)  # grid-level overrides (resources included)
    cli_overrides: dict[str, Any] = field(default_factory=dict)

    @property
    def default_row(self) -> GridRow:
        return next(r for r in self.rows if r.default)

    def trials_of(self, row: str) -> list[Trial]:
        return [t for t in self.trials if t.row == row]

    def trial_ids(self) -> list[str]:
        """Every trial's id, in order; reads the data folders (ConfigError naming data.root if one is missing)."""
        return [t.trial_id for t in self.trials]


def _check_layer(overrides: Mapping[str, Any], where: str, seed_hint: str = "", keys: bool = True) -> None:
    """No layer sets train.seed; every dotted key names a schema field (did-you-mean on a typo)."""
    if SEED_KEY in overrides:
        raise ConfigError(f"{where}: {SEED_KEY} comes from the grid's seeds: list{seed_hint}")
    for key in overrides if keys else ():
        try:
            schema_field(key)
        except ConfigError as e:
            raise ConfigError(f"{where}: {e}") from None


def _paper_table(spec: GridFile, where: str, tables: Optional[Mapping[str, PaperTable]]) -> Optional[PaperTable]:
    """The grid's paper table; every column's ``paper`` name and every row's ``paper_row`` and ``paper`` in it."""
    table = None
    if spec.paper_table is not None:
        tables = load_paper_tables() if tables is None else tables
        if spec.paper_table not in tables:
            raise ConfigError(f"{where}: paper_table: {unknown(spec.paper_table, sorted(tables), 'paper table id')}")
        table = tables[spec.paper_table]
    for i, column in enumerate(spec.columns):
        at = f"{where}: columns[{i}].paper"
        if column.paper is not None and table is None:
            raise ConfigError(f"{at}: {column.paper!r} needs a paper_table: at the top of the grid")
        if column.paper is not None and column.paper not in table.columns:
            raise ConfigError(f"{at}: {unknown(column.paper, table.columns, f'column of paper table {table.id}')}")
    names = [c.paper for c in spec.columns if c.paper]
    rows = f"1..{len(table.rows)}" if table is not None else ""
    for row in spec.rows or ():
        at = f"{where}: row {row.name!r}"
        for key, value in row.paper.items():
            if key not in names:
                raise ConfigError(f"{at}: paper: {unknown(key, names, 'paper column')}")
            if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))):
                raise ConfigError(f"{at}: paper.{key}: {value!r} must be a number or null")
        if row.paper_row is not None and table is None:
            raise ConfigError(f"{at}: paper_row: needs a paper_table: at the top of the grid")
        if row.paper_row is not None and not 1 <= row.paper_row <= len(table.rows):
            raise ConfigError(f"{at}: paper_row: {row.paper_row!r} must be a row number {rows} of {table.id}")
        if row.paper_row is None and row.paper and table is not None:
            raise ConfigError(f"{at}: paper_row: rows with paper values name their row of {table.id} ({rows})")
    return table


def _checked_rows(rows: list[GridRow], where: str) -> list[GridRow]:
    """Names distinct, keys known, exactly one default row (the first runnable one when none is marked)."""
    seen: set[str] = set()
    for row in rows:
        if row.name in seen:
            raise ConfigError(f"{where}: row {row.name!r}: name: duplicate row name")
        seen.add(row.name)
        # Reference-only rows may describe what dinolab cannot build.
        at = f"{where}: row {row.name!r}: set"
        _check_layer(row.set, at, "; remove it from the row", keys=not row.reference_only)
    marked = [r for r in rows if r.default]
    if len(marked) > 1:
        raise ConfigError(f"{where}: default: rows {', '.join(repr(r.name) for r in marked)} are all marked; "
                          f"exactly one row may be the default")
    if marked and marked[0].reference_only:
        raise ConfigError(f"{where}: row {marked[0].name!r}: default: a reference_only row cannot be the default")
    runnable = [r for r in rows if not r.reference_only]
    if not runnable:
        raise ConfigError(f"{where}: rows: every row is reference_only; at least one row must run")
    first = marked[0] if marked else runnable[0]
    return [r.model_copy(update={"default": True}) if r is first else r for r in rows]


def _apply(data: dict, overrides: Mapping[str, Any], where: str, cwd: Optional[Path] = None) -> dict:
    try:
        return apply_overrides(data, list(overrides.items()), cwd=cwd)
    except ConfigError as e:
        raise ConfigError(f"{where}: {e}") from None


def expand_grid(
    path: str | os.PathLike,
    overrides: Iterable[str | tuple[str, Any]] = (),
    data_root: Optional[str] = None,
    fingerprint: Optional[Fingerprint] = None,
    paper_tables: Optional[Mapping[str, PaperTable]] = None,
) -> Grid:
    """Read, validate and expand an ablation grid into trials (see the module docstring).

    overrides: command-line ``dotted.key=value`` strings (or ``(key, value)`` pairs) applied to every
        trial after the rows; paths in them are relative to the current directory.
    data_root: shorthand for the override ``data.root=<data_root>`` (runtime: trial ids do not change).
    fingerprint: ``DataConfig -> str`` for trial ids; default ``dinolab.data.datasets.data_fingerprint``,
        called once per distinct data section.
    paper_tables: ``{id: PaperTable}``; default ``load_paper_tables()``.
    """
    path = Path(path).expanduser().resolve()
    where = str(path)
    spec = read_grid(path)
    name = spec.grid or path.stem
    if not re.match(NAME_PATTERN, name):
        raise ConfigError(f"{where}: grid: {NAME_MUST.format(input=name)}")
    if spec.base is None:
        raise ConfigError(f"{where}: base: {GridFile.model_fields['base'].json_schema_extra['must']}")
    base_path = Path(spec.base)
    if not base_path.is_file():
        raise ConfigError(f"{where}: base: {base_path} not found")
    try:
        base_data = load_layers(base_path)
    except ConfigError as e:
        raise ConfigError(f"{where}: base: {e}") from None
    if spec.rows is None:
        raise ConfigError(f"{where}: rows: missing; a grid needs rows: or axes:")
    _paper_table(spec, where, paper_tables)
    grid_set = {**{f"resources.{k}": v for k, v in spec.resources.items()}, **spec.set}
    _check_layer(grid_set, f"{where}: set")
    rows = _checked_rows(spec.rows, where)

    cli: dict[str, Any] = {}
    for item in overrides:
        key, value = parse_override(item) if isinstance(item, str) else item
        cli[key] = value
    if data_root is not None:
        cli["data.root"] = data_root
    if SEED_KEY in cli:
        raise ConfigError(f"--set {SEED_KEY}: the grid's seeds: list sets it; edit seeds: in {where}")
    _check_layer(cli, "--set")
    cli = absolute_overrides(cli, Path.cwd())

    fingerprints = DataFingerprints(fingerprint)
    trials: list[Trial] = []
    owner: dict[tuple[str, str], str] = {}
    for row in rows:
        if row.reference_only:
            continue
        for seed in spec.seeds:
            source = f"{where}: row {row.name!r} seed {seed}"
            data = copy.deepcopy(base_data)
            data["name"] = f"{name}/{row.name}/seed{seed}"  # runtime; a name override wins
            data = _apply(data, grid_set, f"{where}: set", cwd=path.parent)
            data = _apply(data, row.set, f"{where}: row {row.name!r}: set", cwd=path.parent)
            data = _apply(data, cli, "command line")
            data = _apply(data, {SEED_KEY: seed}, source)
            cfg = build_config(data, source=source)
            chash = compute_config_hash(cfg)
            # Same identity and same data section = the same trial (rows may differ by data.root alone).
            same = (chash, cfg.data.model_dump_json())
            if same in owner:
                raise ConfigError(f"{where}: row {row.name!r}: set: expands to the same trial as row {owner[same]!r} "
                                  f"(seed {seed}); rows must differ in an identity field")
            owner[same] = row.name
            trials.append(Trial(
                row=row.name, seed=seed, overrides={**grid_set, **row.set, **cli, SEED_KEY: seed},
                config=cfg, config_hash=chash, fingerprints=fingerprints,
            ))

    return Grid(
        name=name, path=path, base=base_path, paper_table=spec.paper_table, paper_setup=dict(spec.paper_setup),
        seeds=list(spec.seeds), columns=list(spec.columns), rows=rows, trials=trials, set=grid_set, cli_overrides=cli,
    )


# The name the CLI and the report use.
load_grid = expand_grid


# ----------------------------------------------------------------------------------- dry run


def _text_table(header: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(header)]
    line = lambda cells: "  ".join(c.ljust(w) for c, w in zip(cells, widths)).rstrip()  # noqa: E731
    return "\n".join([line(header), line(["-" * w for w in widths])] + [line(r) for r in rows])


def dry_run_table(grid: Grid, statuses: Optional[Mapping[str, str]] = None) -> str:
    """Plain text: a header, then one line per trial (row, seed, row overrides, trial id, status).

    statuses: ``{trial_id: status}``; a trial without an entry is ``missing``. Where the data cannot be
    fingerprinted (data.root absent on this machine) the id shows as ``?`` and the reason follows the table.
    """
    statuses = statuses or {}
    common = {**grid.set, **grid.cli_overrides}
    runnable = [r for r in grid.rows if not r.reference_only]
    lines = [
        f"grid {grid.name}: {grid.path}",
        f"base: {grid.base}",
        f"every trial: {format_overrides(common) or '(no overrides)'}",
        f"{len(grid.trials)} trials = {len(runnable)} rows x {len(grid.seeds)} seeds {grid.seeds}; "
        f"default row: {grid.default_row.name}",
    ]
    body, problems = [], []
    for t in grid.trials:
        row = next(r for r in grid.rows if r.name == t.row)
        try:
            tid, status = t.trial_id, statuses.get(t.trial_id, "missing")
        except ConfigError as e:
            tid, status = "?", "unknown (no data)"
            if str(e) not in problems:
                problems.append(str(e))
        body.append([f"{t.row} (default)" if row.default else t.row, str(t.seed),
                     format_overrides(row.overrides) or "(base)", tid, status])
    text = "\n".join(lines) + "\n\n" + _text_table(["row", "seed", "overrides", "trial id", "status"], body)
    reference = [r.name for r in grid.rows if r.reference_only]
    if reference:
        text += "\n\nreference only (paper values, not run): " + ", ".join(reference)
    for problem in problems:
        text += f"\n\ntrial ids need the data's fingerprint: {problem}"
    return text + "\n"
