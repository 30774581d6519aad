"""Ablation grids: one YAML per paper table, expanded into validated trials with stable ids.

The file format is in docs/contracts.md ("Ablation files"). Expansion is pure: it reads the grid file,
its base experiment chain and the paper tables, never the data folder and never Ray or MLflow. Each
trial's ``config_hash`` is known at expansion; its ``trial_id`` also hashes the data's content fingerprint
(``dinolab.data.datasets.data_fingerprint``, independent of where data.root lies), so it is computed on
first access, once per distinct data section: that is when a missing data folder is an error.

Rows are either listed (``rows:``, in the paper's order) or generated from ``axes:`` (``mode: product``,
the first axis varying slowest, or ``mode: zip``, equal-length axes taken together); each runnable row is
crossed with ``seeds``. A trial's config is built in this order, later layers winning:

    base experiment < grid ``resources`` < grid ``set`` < row ``set`` < command-line overrides < seed

``train.seed`` comes from ``seeds`` only: setting it anywhere else is an error.

Default row: the row whose effect the others are measured against. At most one row may say
``default: true``; when none does, the first row that is not ``reference_only`` is the default (with
``axes:``, the first generated row). A reference-only row carries paper values and makes no trials.

Paper values: a row's ``paper`` mapping uses the columns' ``paper`` names as keys; ``paper_row`` is the
1-based row of the grid's ``paper_table`` in shared/reference/paper_tables.yaml those values come from.

Every error is a one-line ``ConfigError`` naming the file, the row (where there is one) and the key.
"""

from __future__ import annotations

import copy
import difflib
import itertools
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Optional

from pydantic import BaseModel

from .identity import config_hash as compute_config_hash
from .identity import trial_id as compute_trial_id
from .loader import PATH_FIELDS, ConfigError, apply_overrides, build_config, load_layers, parse_override, read_yaml
from .paper_tables import PaperTable, load_paper_tables
from .schema import DataConfig, ExperimentConfig

GRID_KEYS = ("grid", "base", "paper_table", "paper_setup", "seeds", "set", "resources", "columns", "rows", "axes")
ROW_KEYS = ("name", "default", "set", "paper", "paper_row", "labels", "reference_only")
COLUMN_KEYS = ("metric", "label", "agg", "paper")
AXES_KEYS = ("mode", "values")
AXES_MODES = ("product", "zip")
AGGS = ("final", "best", "last3", "last<k>")

# What a trial records (docs/contracts.md, "What a trial records in MLflow").
PER_EPOCH_METRICS = (
    "loss", "teacher_entropy", "kl", "lr", "weight_decay", "momentum", "teacher_temp", "images_per_s", "knn_top1",
)
FINAL_METRICS = (
    "knn_top1", "linear_top1", "knn_top1_random_init", "throughput_images_per_s", "wall_time_s", "peak_rss_mb",
    "cuda_peak_mb", "cpu_hours", "gpu_hours", "epochs_done",
)
DEFAULT_COLUMNS = ({"metric": "knn_top1", "label": "k-NN"},)
SEED_KEY = "train.seed"
_NAME_RE = re.compile(r"^[A-Za-z0-9_.-]+$")
_LASTK_RE = re.compile(r"^last([1-9][0-9]*)$")

Fingerprint = Callable[[DataConfig], str]


@dataclass(frozen=True)
class Column:
    """A report column: ``agg`` of ``metric`` over epochs; ``paper`` names the paper table's column."""

    metric: str
    label: str
    agg: str = "final"
    paper: Optional[str] = None


@dataclass
class GridRow:
    """A named row: ``overrides`` are its dotted deltas over the grid's base and ``set``."""

    name: str
    overrides: dict[str, Any]
    default: bool = False
    paper: dict[str, Any] = field(default_factory=dict)
    labels: dict[str, Any] = field(default_factory=dict)
    reference_only: bool = False
    paper_row: Optional[int] = None


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


# ----------------------------------------------------------------------------------- helpers


def _unknown_key(where: str, key: Any, valid: Iterable[str], what: str = "key") -> ConfigError:
    valid = list(valid)
    close = _nearest(str(key), valid)
    hint = f"; did you mean {close[0]}?" if close else ""
    return ConfigError(f"{where}: unknown {what} {key!r}{hint} (valid: {', '.join(valid)})")


def _nearest(key: str, valid: list[str]) -> list[str]:
    """The valid name closest to ``key`` (case-insensitive; a name that ``key`` begins), or []."""
    lower = {v.lower(): v for v in valid}
    close = difflib.get_close_matches(key.lower(), list(lower), n=1)
    if close:
        return [lower[close[0]]]
    return [v for v in valid if v.lower().startswith(key.lower())][:1]


def _check_keys(data: Mapping, valid: Iterable[str], where: str, what: str = "key") -> None:
    valid = tuple(valid)
    for key in data:
        if key not in valid:
            raise _unknown_key(where, key, valid, what)


def _flatten_set(value: Any, where: str) -> dict[str, Any]:
    """``{a.b: 1}`` or ``{a: {b: 1}}`` -> ``{"a.b": 1}`` (no schema leaf is a mapping)."""
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise ConfigError(f"{where}: must be a mapping of dotted keys to values, e.g. {{train.epochs: 20}}")
    out: dict[str, Any] = {}
    for key, v in value.items():
        if not isinstance(key, str) or not key or any(not p.isidentifier() for p in key.split(".")):
            raise ConfigError(f"{where}: key {key!r} must be dotted names, e.g. model.patch_size")
        if isinstance(v, Mapping):
            for sub, sv in _flatten_set(v, f"{where}.{key}").items():
                out[f"{key}.{sub}"] = sv
        else:
            out[key] = v
    return out


def _resolve_paths(overrides: dict[str, Any], relative_to: Path) -> dict[str, Any]:
    """Path fields (data.root) expanded (~, $VARS) and made absolute against ``relative_to``."""
    out = dict(overrides)
    for key in PATH_FIELDS:
        value = out.get(key)
        if isinstance(value, str) and value:
            p = Path(os.path.expandvars(value)).expanduser()
            out[key] = str((p if p.is_absolute() else relative_to / p).resolve())
    return out


def _fmt(value: Any) -> str:
    """Compact YAML-like text of a value, for row names and tables."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "null"
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_fmt(v) for v in value) + "]"
    return str(value)


def format_overrides(overrides: Mapping[str, Any]) -> str:
    """``{"a.b": 1, "c.d": [1, 2]}`` -> ``a.b=1, c.d=[1, 2]``."""
    return ", ".join(f"{k}={_fmt(v)}" for k, v in overrides.items())


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


# ----------------------------------------------------------------------------------- parts of the file


def _parse_seeds(value: Any, where: str) -> list[int]:
    if value is None:
        return [0]
    seeds = [value] if _is_int(value) else value
    if not isinstance(seeds, list) or not seeds or not all(_is_int(s) and s >= 0 for s in seeds):
        raise ConfigError(f"{where}: seeds: must be a non-empty list of integers >= 0, e.g. [0, 1, 2]")
    if len(set(seeds)) != len(seeds):
        raise ConfigError(f"{where}: seeds: {seeds} repeats a seed")
    return list(seeds)


def _parse_columns(value: Any, where: str, table: Optional[PaperTable]) -> list[Column]:
    raw_columns = list(DEFAULT_COLUMNS) if value is None else value
    if not isinstance(raw_columns, list) or not raw_columns:
        raise ConfigError(f"{where}: columns: must be a non-empty list of {{metric, label, agg, paper}}")
    columns: list[Column] = []
    for i, raw in enumerate(raw_columns):
        at = f"{where}: columns[{i}]"
        if not isinstance(raw, Mapping):
            raise ConfigError(f"{at}: must be a mapping with keys {', '.join(COLUMN_KEYS)}")
        _check_keys(raw, COLUMN_KEYS, at)
        metric = raw.get("metric")
        if metric not in PER_EPOCH_METRICS + FINAL_METRICS:
            raise _unknown_key(f"{at}.metric", metric, sorted(set(PER_EPOCH_METRICS + FINAL_METRICS)), "metric")
        agg = raw.get("agg", "final")
        if agg not in ("final", "best", "last3") and not (isinstance(agg, str) and _LASTK_RE.match(agg)):
            raise ConfigError(f"{at}.agg: {agg!r} is not allowed; expected one of {', '.join(AGGS)} (e.g. last5)")
        if agg != "final" and metric not in PER_EPOCH_METRICS:
            raise ConfigError(
                f"{at}.agg: {agg} needs a per-epoch metric ({', '.join(PER_EPOCH_METRICS)}); {metric} is logged once"
            )
        paper = raw.get("paper")
        if paper is not None:
            if table is None:
                raise ConfigError(f"{at}.paper: {paper!r} needs a paper_table: at the top of the grid")
            if paper not in table.columns:
                raise _unknown_key(f"{at}.paper", paper, table.columns, f"column of paper table {table.id}")
        label = raw.get("label", metric)
        columns.append(Column(metric=metric, label=str(label), agg=agg, paper=paper))
    return columns


def _parse_row(raw: Any, index: int, where: str, columns: list[Column], table: Optional[PaperTable]) -> GridRow:
    if not isinstance(raw, Mapping):
        raise ConfigError(f"{where}: rows[{index}]: must be a mapping with keys {', '.join(ROW_KEYS)}")
    name = raw.get("name")
    if not isinstance(name, str) or not name.strip():
        raise ConfigError(f"{where}: rows[{index}]: name: every row needs a non-empty name")
    at = f"{where}: row {name!r}"
    _check_keys(raw, ROW_KEYS, at)
    flags = {}
    for key in ("default", "reference_only"):
        flags[key] = raw.get(key, False)
        if not isinstance(flags[key], bool):
            raise ConfigError(f"{at}: {key}: must be true or false, got {flags[key]!r}")
    overrides = _flatten_set(raw.get("set"), f"{at}: set")
    if SEED_KEY in overrides:
        raise ConfigError(f"{at}: set: {SEED_KEY} comes from the grid's seeds: list; remove it from the row")
    labels = raw.get("labels") or {}
    if not isinstance(labels, Mapping):
        raise ConfigError(f"{at}: labels: must be a mapping of column name to text")
    paper = raw.get("paper") or {}
    if not isinstance(paper, Mapping):
        raise ConfigError(f"{at}: paper: must be a mapping of the columns' paper names to numbers")
    paper_names = [c.paper for c in columns if c.paper]
    for key, value in paper.items():
        if key not in paper_names:
            raise _unknown_key(f"{at}: paper", key, paper_names, "paper column")
        if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))):
            raise ConfigError(f"{at}: paper.{key}: {value!r} must be a number or null")
    paper_row = raw.get("paper_row")
    if paper_row is not None:
        if table is None:
            raise ConfigError(f"{at}: paper_row: needs a paper_table: at the top of the grid")
        if not _is_int(paper_row) or not 1 <= paper_row <= len(table.rows):
            raise ConfigError(f"{at}: paper_row: {paper_row!r} must be a row number 1..{len(table.rows)} of {table.id}")
    elif paper and table is not None:
        raise ConfigError(
            f"{at}: paper_row: rows with paper values name their row of {table.id} (1..{len(table.rows)})"
        )
    return GridRow(
        name=name, overrides=overrides, default=flags["default"], paper=dict(paper), labels=dict(labels),
        reference_only=flags["reference_only"], paper_row=paper_row,
    )


def _rows_from_axes(value: Any, where: str) -> list[GridRow]:
    if not isinstance(value, Mapping):
        raise ConfigError(f"{where}: axes: must be a mapping with mode: and values:")
    _check_keys(value, AXES_KEYS, f"{where}: axes")
    mode = value.get("mode", "product")
    if mode not in AXES_MODES:
        raise ConfigError(f"{where}: axes.mode: {mode!r} is not allowed; expected one of {', '.join(AXES_MODES)}")
    values = _flatten_set(value.get("values"), f"{where}: axes.values")
    if not values:
        raise ConfigError(f"{where}: axes.values: needs at least one dotted key with a list of values")
    for key, vals in values.items():
        if key == SEED_KEY:
            raise ConfigError(f"{where}: axes.values: {SEED_KEY} comes from the grid's seeds: list")
        if not isinstance(vals, list) or not vals:
            raise ConfigError(f"{where}: axes.values.{key}: must be a non-empty list of values")
    keys = list(values)
    if mode == "zip":
        lengths = {k: len(v) for k, v in values.items()}
        if len(set(lengths.values())) != 1:
            raise ConfigError(f"{where}: axes: mode zip needs lists of equal length, got "
                              + ", ".join(f"{k}: {n}" for k, n in lengths.items()))
        combos = list(zip(*values.values()))
    else:
        combos = list(itertools.product(*values.values()))
    rows = []
    for combo in combos:
        overrides = dict(zip(keys, combo))
        rows.append(GridRow(name=format_overrides(overrides), overrides=overrides))
    return rows


def _mark_default(rows: list[GridRow], where: str) -> None:
    marked = [r for r in rows if r.default]
    if len(marked) > 1:
        raise ConfigError(f"{where}: default: rows {', '.join(repr(r.name) for r in marked)} are all marked; "
                          f"exactly one row may be the default")
    if marked and marked[0].reference_only:
        raise ConfigError(f"{where}: row {marked[0].name!r}: default: a reference_only row cannot be the default")
    if not marked:
        runnable = [r for r in rows if not r.reference_only]
        if not runnable:
            raise ConfigError(f"{where}: rows: every row is reference_only; at least one row must run")
        runnable[0].default = True


# ----------------------------------------------------------------------------------- expansion


def _check_override_keys(overrides: Mapping[str, Any], where: str) -> None:
    """Every dotted key names a schema field (did-you-mean on a typo), so the error points at its layer."""
    for key in overrides:
        model: type[BaseModel] = ExperimentConfig
        parts = key.split(".")
        for i, part in enumerate(parts):
            fields = model.model_fields
            if part not in fields:
                close = _nearest(part, list(fields))
                hint = f"; did you mean {'.'.join(parts[:i] + close + parts[i + 1:])}?" if close else ""
                valid = ", ".join(".".join(parts[:i] + [f]) for f in fields)
                raise ConfigError(f"{where}: unknown key {key!r}{hint} (valid: {valid})")
            annotation = fields[part].annotation
            is_section = isinstance(annotation, type) and issubclass(annotation, BaseModel)
            if i < len(parts) - 1 and not is_section:
                raise ConfigError(f"{where}: {key}: {'.'.join(parts[:i + 1])} is a field, not a section")
            if i == len(parts) - 1 and is_section:
                example = f"{key}.{next(iter(annotation.model_fields))}"
                raise ConfigError(f"{where}: {key}: is a section; set its fields, e.g. {example}")
            if is_section:
                model = annotation


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
    raw = read_yaml(path)
    _check_keys(raw, GRID_KEYS, where)

    name = raw.get("grid", path.stem)
    if not isinstance(name, str) or not _NAME_RE.match(name):
        raise ConfigError(f"{where}: grid: {name!r} must be letters, digits, '_', '-' or '.' (an MLflow tag name)")

    base = raw.get("base")
    if not isinstance(base, str) or not base:
        raise ConfigError(f"{where}: base: missing; name the experiment YAML the rows are deltas over, "
                          f"e.g. base: ../experiments/demo.yaml")
    base_path = Path(os.path.expandvars(base)).expanduser()
    base_path = (base_path if base_path.is_absolute() else path.parent / base_path).resolve()
    if not base_path.is_file():
        raise ConfigError(f"{where}: base: {base_path} not found")
    try:
        base_data = load_layers(base_path)
    except ConfigError as e:
        raise ConfigError(f"{where}: base: {e}") from None

    table: Optional[PaperTable] = None
    paper_table = raw.get("paper_table")
    if paper_table is not None:
        tables = load_paper_tables() if paper_tables is None else paper_tables
        if paper_table not in tables:
            raise _unknown_key(f"{where}: paper_table", paper_table, sorted(tables), "paper table id")
        table = tables[paper_table]
    paper_setup = raw.get("paper_setup") or {}
    if not isinstance(paper_setup, Mapping):
        raise ConfigError(f"{where}: paper_setup: must be a mapping, e.g. {{data: imagenet, epochs: 300}}")

    seeds = _parse_seeds(raw.get("seeds"), where)
    resources = raw.get("resources") or {}
    if not isinstance(resources, Mapping):
        raise ConfigError(f"{where}: resources: must be a mapping, e.g. {{workers: 1, gpus_per_worker: 1}}")
    grid_set = {f"resources.{k}": v for k, v in resources.items()}
    grid_set.update(_flatten_set(raw.get("set"), f"{where}: set"))
    if SEED_KEY in grid_set:
        raise ConfigError(f"{where}: set: {SEED_KEY} comes from the grid's seeds: list")
    _check_override_keys(grid_set, f"{where}: set")
    grid_set = _resolve_paths(grid_set, path.parent)

    columns = _parse_columns(raw.get("columns"), where, table)

    if "rows" in raw and "axes" in raw:
        raise ConfigError(f"{where}: rows: and axes: are exclusive; use one of them")
    if "rows" in raw:
        if not isinstance(raw["rows"], list) or not raw["rows"]:
            raise ConfigError(f"{where}: rows: must be a non-empty list of rows")
        rows = [_parse_row(r, i, where, columns, table) for i, r in enumerate(raw["rows"])]
    elif "axes" in raw:
        rows = _rows_from_axes(raw["axes"], where)
    else:
        raise ConfigError(f"{where}: rows: missing; a grid needs rows: or axes:")
    seen: set[str] = set()
    for row in rows:
        if row.name in seen:
            raise ConfigError(f"{where}: row {row.name!r}: name: duplicate row name")
        seen.add(row.name)
        if not row.reference_only:  # reference-only rows may describe what dinolab cannot build
            _check_override_keys(row.overrides, f"{where}: row {row.name!r}: set")
        row.overrides = _resolve_paths(row.overrides, path.parent)
    _mark_default(rows, where)

    cli: dict[str, Any] = {}
    for item in overrides:
        key, value = parse_override(item) if isinstance(item, str) else item
        cli[key] = value
    if data_root is not None:
        cli["data.root"] = data_root
    if SEED_KEY in cli:
        raise ConfigError(f"--set {SEED_KEY}: the grid's seeds: list sets it; edit seeds: in {where}")
    _check_override_keys(cli, "--set")
    cli = _resolve_paths(cli, Path.cwd())

    fingerprints = DataFingerprints(fingerprint)
    trials: list[Trial] = []
    owner: dict[tuple[str, str], str] = {}
    for row in rows:
        if row.reference_only:
            continue
        for seed in seeds:
            source = f"{where}: row {row.name!r} seed {seed}"
            data = copy.deepcopy(base_data)
            data["name"] = f"{name}/{row.name}/seed{seed}"  # runtime; a name override wins
            data = _apply(data, grid_set, f"{where}: set", cwd=path.parent)
            data = _apply(data, row.overrides, f"{where}: row {row.name!r}: set", cwd=path.parent)
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
                row=row.name, seed=seed, overrides={**grid_set, **row.overrides, **cli, SEED_KEY: seed},
                config=cfg, config_hash=chash, fingerprints=fingerprints,
            ))

    return Grid(
        name=name, path=path, base=base_path, paper_table=paper_table, paper_setup=dict(paper_setup), seeds=seeds,
        columns=columns, rows=rows, trials=trials, set=grid_set, cli_overrides=cli,
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
