"""A grid file (ablations/<grid>.yaml; format in docs/contracts.md, "Ablation files") as a typed model, ``GridFile``.

``read_grid`` validates one file and the grids it ``extends:``. ``extends: other.yaml`` (relative to the file) starts
from another grid: every key given replaces the other grid's, except the mappings ``set``, ``resources`` and
``paper_setup``, merged key by key, and ``grid``, never inherited. ``row_changes`` then changes that grid's rows by
name: ``{name: new name, set: {...}, labels: {...}, ...}`` (``set``, ``labels`` and ``paper`` merged key by key) or
``{drop: true}``. Rows are listed (``rows:``) or generated from ``axes:`` (``mode: product``, the first axis varying
slowest, or ``mode: zip``, equal-length axes taken together). A key given as null is as if it were absent.

Paper values: ``paper_row`` is the 1-based row of the grid's ``paper_table`` in paper_tables.yaml; the report reads
the columns' ``paper`` names there. A row's ``paper`` mapping (column ``paper`` name -> number) gives values the
table lacks.

Refusals are one-line ``ConfigError``s naming the file, the row (where there is one) and the key: a field's wrong
type or shape is refused with the text of its ``must``, a validator's with its own message.
"""

from __future__ import annotations

import itertools
import math
import os
import re
from pathlib import Path
from typing import Annotated, Any, Literal, Mapping, Optional, Union, get_args, get_origin

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError, field_validator, model_validator

from dinolab.track import contract

from .keys import unknown
from .loader import PATH_FIELDS, ConfigError, absolute_path, read_yaml

AGGS = ("final", "best", "last<k>")  # last<k>: the mean of the last k epochs' values (trials log last3)
SEED_KEY = "train.seed"
# Trials one grid may expand to (rows x seeds), checked before rows are generated; $DINOLAB_MAX_TRIALS raises it.
MAX_TRIALS = 1000
NAME_PATTERN = r"^[A-Za-z0-9_.-]+$"  # a grid's name is an MLflow tag
AGG_MUST = "{input!r} is not allowed; expected one of final, best, last3, last<k> (e.g. last5)"
NAME_MUST = "{input!r} must be letters, digits, '_', '-' or '.' (an MLflow tag name)"


def column_metrics() -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(metrics logged per epoch, metrics logged once) that a report column may name: every metric a trial
    logs (``dinolab.track.contract``)."""
    per_epoch = contract.PER_EPOCH_METRICS
    return per_epoch, tuple(m for m in contract.COLUMN_METRICS if m not in per_epoch)


def parse_agg(agg: str) -> tuple[str, int]:
    """``final`` -> ("final", 0), ``best`` -> ("best", 0), ``last3`` -> ("last", 3)."""
    if agg in ("final", "best"):
        return agg, 0
    m = re.fullmatch(r"last(\d+)", agg or "")
    if m and int(m.group(1)) > 0:
        return "last", int(m.group(1))
    raise ValueError(f"column agg must be one of {', '.join(AGGS)} (e.g. last3), got {agg!r}")


class At(ValueError):
    """A validator's error about a key below the value it validates (``at``: the keys from there)."""

    def __init__(self, at: tuple, message: str) -> None:
        super().__init__(message)
        self.at = at


def must(default: Any, text: str, **kw) -> Any:
    """A field refusing a value of the wrong type or shape with ``text`` (``{input!r}``: the value given)."""
    return Field(default, json_schema_extra={"must": text}, **kw)


def _dotted(value: Any, prefix: str = "") -> Any:
    """``{a: {b: 1}}`` or ``{a.b: 1}`` -> ``{"a.b": 1}`` (no schema value is a mapping); a non-mapping as given."""
    if not isinstance(value, Mapping):
        return value
    out: dict[str, Any] = {}
    for key, v in value.items():
        if not isinstance(key, str) or not key or any(not p.isidentifier() for p in key.split(".")):
            raise ValueError(f"key {prefix}{key!r} must be dotted names, e.g. model.patch_size")
        if isinstance(v, Mapping):
            out.update({f"{key}.{k}": x for k, x in _dotted(v, f"{prefix}{key}.").items()})
        else:
            out[key] = v
    return out


Dotted = Annotated[dict[str, Any], BeforeValidator(_dotted)]
Seeds = Annotated[list[Annotated[int, Field(ge=0)]], BeforeValidator(lambda v: [v] if type(v) is int else v)]  # 3 = [3]
SET_MUST = "must be a mapping of dotted keys to values, e.g. {{train.epochs: 20}}"
BOOL_MUST = "must be true or false, got {input!r}"


class _Part(BaseModel):
    """A part of a grid file: unknown keys are errors, values keep their YAML type, a null is as if absent."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)

    @model_validator(mode="before")
    @classmethod
    def _null_is_absent(cls, data: Any) -> Any:
        return {k: v for k, v in data.items() if v is not None} if isinstance(data, dict) else data


class Column(_Part):
    """A report column: ``agg`` (final, best, last<k>) of ``metric`` over epochs, headed ``label``; ``paper`` names
    the paper table's column. The one column type of grids, reports and benchmarks."""

    metric: str = must(..., "needs a metric, e.g. knn_top1")
    label: str = must(..., "must be text")  # default: the metric
    agg: str = must("final", AGG_MUST)
    paper: Optional[str] = must(None, "must be a column name of the grid's paper_table")

    @model_validator(mode="before")
    @classmethod
    def _label_is_the_metric(cls, data: Any) -> Any:
        if isinstance(data, dict) and data.get("label") is None and "metric" in data:
            return {**data, "label": data["metric"]}
        return data

    @property
    def baseline(self) -> bool:
        """A value of the untrained network (``knn_top1_random_init``): no effect, no collapse mark."""
        return contract.is_random_init(self.metric)

    @field_validator("metric")
    @classmethod
    def _known(cls, metric: str) -> str:
        per_epoch, once = column_metrics()
        if metric not in per_epoch + once:
            raise ValueError(unknown(metric, sorted(set(per_epoch + once)), "metric"))
        return metric

    @field_validator("agg")
    @classmethod
    def _agg(cls, agg: str, info) -> str:
        try:
            parse_agg(agg)
        except ValueError:
            raise ValueError(AGG_MUST.format(input=agg)) from None
        per_epoch, _ = column_metrics()
        metric = info.data.get("metric")
        if agg != "final" and metric is not None and metric not in per_epoch:
            raise ValueError(f"{agg} needs a per-epoch metric ({', '.join(per_epoch)}); {metric} is logged once")
        return agg


DEFAULT_COLUMNS = [Column(metric=contract.KNN_TOP1, label="k-NN")]


class GridRow(_Part):
    """A named row: ``set`` holds its dotted deltas over the grid's base and ``set``."""

    name: str = must(..., "every row needs a non-empty name", pattern=r"\S")
    default: bool = must(False, BOOL_MUST)
    set: Dotted = must({}, SET_MUST)
    paper: dict[str, Any] = must({}, "must be a mapping of the columns' paper names to numbers")
    paper_row: Optional[int] = must(None, "{input!r} must be a row number 1, 2, ... of the grid's paper_table")
    labels: dict[str, Any] = must({}, "must be a mapping of column name to text")
    reference_only: bool = must(False, BOOL_MUST)

    @property
    def overrides(self) -> dict[str, Any]:
        return self.set


class RowChange(GridRow):
    """A change to a row of the extended grid: the keys given (``name`` renames it), or ``drop: true``."""

    name: Optional[str] = must(None, "must be the row's new name", pattern=r"\S")
    drop: bool = must(False, BOOL_MUST)


class Axes(_Part):
    """Rows generated from lists of values: every combination (product) or the lists taken together (zip)."""

    mode: Literal["product", "zip"] = must("product", "{input!r} is not allowed; expected one of product, zip")
    values: Dotted = must({}, SET_MUST, validate_default=True)

    @field_validator("values")
    @classmethod
    def _lists(cls, values: dict) -> dict:
        if not values:
            raise ValueError("needs at least one dotted key with a list of values")
        if SEED_KEY in values:
            raise ValueError(f"{SEED_KEY} comes from the grid's seeds: list")
        for key, v in values.items():
            if not isinstance(v, list) or not v:
                raise At((key,), "must be a non-empty list of values")
        return values

    @model_validator(mode="after")
    def _zip_lengths(self) -> "Axes":
        if self.mode == "zip" and len({len(v) for v in self.values.values()}) > 1:
            raise ValueError("mode zip needs lists of equal length, got "
                             + ", ".join(f"{k}: {len(v)}" for k, v in self.values.items()))
        return self

    def rows(self) -> list[GridRow]:
        """One row per combination, named by its overrides."""
        combine = zip if self.mode == "zip" else itertools.product
        combos = [dict(zip(self.values, combo)) for combo in combine(*self.values.values())]
        return [GridRow(name=format_overrides(c), set=c) for c in combos]


class GridFile(_Part):
    """A grid file (docs/contracts.md, "Ablation files"), its ``axes`` generated into ``rows`` once read."""

    grid: Optional[str] = must(None, NAME_MUST, pattern=NAME_PATTERN)
    extends: Optional[str] = must(None, "must be the path of another grid file, e.g. extends: dino_table7.yaml")
    base: Optional[str] = must(None, "missing; name the experiment YAML the rows are deltas over, "
                                     "e.g. base: ../experiments/demo.yaml", min_length=1)
    paper_table: Optional[str] = must(None, "must be a table id of paper_tables.yaml")
    paper_setup: dict[str, Any] = must({}, "must be a mapping, e.g. {{data: imagenet, epochs: 300}}")
    seeds: Seeds = must([0], "must be a non-empty list of integers >= 0, e.g. [0, 1, 2]", min_length=1)
    set: Dotted = must({}, SET_MUST)
    resources: dict[str, Any] = must({}, "must be a mapping, e.g. {{workers: 1, gpus_per_worker: 1}}")
    columns: list[Column] = must(DEFAULT_COLUMNS, "must be a non-empty list of {{metric, label, agg, paper}}",
                                 min_length=1)
    rows: Optional[list[GridRow]] = must(None, "must be a non-empty list of rows", min_length=1)
    axes: Optional[Axes] = must(None, "must be a mapping with mode: and values:")
    row_changes: dict[str, RowChange] = must({}, "must map row names of the extended grid to changes, "
                                                 "e.g. {{ViT-S/16: {{drop: true}}}}")

    @field_validator("seeds")
    @classmethod
    def _distinct(cls, seeds: list[int]) -> list[int]:
        if len(set(seeds)) != len(seeds):
            raise ValueError(f"{seeds} repeats a seed")
        return seeds

    @model_validator(mode="after")
    def _rows_or_axes(self) -> "GridFile":
        if self.rows is not None and self.axes is not None:
            raise ValueError("rows: and axes: are exclusive; use one of them")
        return self


def _walk(loc: tuple) -> tuple[Any, Any, int]:
    """Along ``loc`` through GridFile's types: (the type reached, the last field named, the loc index past it)."""
    ann, last, end = GridFile, None, 0
    for i, part in enumerate(loc):
        if isinstance(ann, type) and issubclass(ann, BaseModel) and part in ann.model_fields:
            last, end, ann = ann.model_fields[part], i + 1, ann.model_fields[part].annotation
        else:  # list[X] or dict[str, X]: an index or a key
            ann = get_args(ann)[-1] if get_args(ann) else None
        if get_origin(ann) is Union:  # Optional[X]
            ann = get_args(ann)[0]
    return ann, last, end


def _place(loc: tuple, raw: Mapping) -> str:
    """A location as the messages write it: ``("rows", 1, "set")`` -> ``row 'B': set``, ``("columns", 0, "agg")``
    -> ``columns[0].agg``, ``("rows", 2)`` without a usable name -> ``rows[2]``."""
    text, sep = "", ""
    for i, part in enumerate(loc):
        if i == 1 and loc[0] in ("rows", "row_changes"):
            name = part
            if loc[0] == "rows":
                row = raw["rows"][part]
                name = row.get("name") if isinstance(row, dict) else None
            text, sep = (f"row {name!r}" if isinstance(name, str) and name.strip() else f"rows[{part}]"), ": "
        elif isinstance(part, int):
            text, sep = f"{text}[{part}]", "."
        else:
            text, sep = f"{text}{sep}{part}", "."
    return text


def _explain(error: ValidationError, raw: Mapping, where: str) -> ConfigError:
    """The first validation error as one line: ``<file>: <place>: <what is wrong and what is allowed>``."""
    errors = error.errors()
    e = next((e for e in errors if e["type"] == "extra_forbidden"), errors[0])  # a typo explains a missing key
    exc = (e.get("ctx") or {}).get("error")
    loc = tuple(e["loc"]) + tuple(getattr(exc, "at", ()))
    if e["type"] == "extra_forbidden":
        loc, tail = loc[:-1], unknown(loc[-1], _walk(loc[:-1])[0].model_fields)
    elif exc is not None:  # a validator's own message
        tail = str(exc)
    else:
        model, last, end = _walk(loc)
        if e["type"] == "model_type" and end < len(loc):  # an item of a list that is not a mapping
            tail = "must be a mapping with keys " + ", ".join(model.model_fields)
        else:
            loc, tail = loc[:end], last.json_schema_extra["must"].format(input=e.get("input"))
    place = _place(loc, raw)
    return ConfigError(f"{where}: {place}: {tail}" if place else f"{where}: {tail}")


def absolute_overrides(overrides: Mapping[str, Any], folder: Path) -> dict[str, Any]:
    """Dotted overrides with their path fields (data.root) absolute against the folder of the file that set them."""
    return {k: absolute_path(v, folder) if k in PATH_FIELDS else v for k, v in overrides.items()}


def _change_rows(rows: list[GridRow], changes: Mapping[str, RowChange], where: str) -> list[GridRow]:
    names = [r.name for r in rows]
    for name in changes:
        if name not in names:
            raise ConfigError(f"{where}: row_changes: {unknown(name, names, 'row of the extended grid')}")
    out = []
    for row in rows:
        change = changes.get(row.name)
        if change is None or not change.drop:
            given = change.model_fields_set - {"drop"} if change is not None else ()
            update = {k: getattr(change, k) for k in given}
            for k in ("set", "labels", "paper"):
                if k in update:
                    update[k] = {**getattr(row, k), **update[k]}
            out.append(row.model_copy(update=update))
    return out


def max_trials() -> int:
    """The cap on a grid's trials (rows x seeds): $DINOLAB_MAX_TRIALS, else ``MAX_TRIALS``."""
    text = os.environ.get("DINOLAB_MAX_TRIALS")
    if not text:
        return MAX_TRIALS
    try:
        return max(1, int(text))
    except ValueError:
        raise ConfigError(f"$DINOLAB_MAX_TRIALS must be a whole number, got {text[:40]!r}") from None


def _check_trial_count(n_rows: int, n_seeds: int, where: str) -> None:
    """Counted before rows are generated or expanded, so an absurd grid is refused at once."""
    cap = max_trials()
    if n_rows * n_seeds > cap:
        raise ConfigError(f"{where}: expands to {n_rows * n_seeds} trials ({n_rows} rows x {n_seeds} seeds), more than "
                          f"the limit of {cap}; split the grid or raise $DINOLAB_MAX_TRIALS")


def read_grid(path: str | os.PathLike, _seen: tuple = ()) -> GridFile:
    """A grid file as a ``GridFile``: validated, ``extends:`` merged, rows generated, paths made absolute."""
    path = Path(path).expanduser().resolve()
    where = str(path)
    if path in _seen:
        raise ConfigError(f"{where}: extends: forms a cycle ({' -> '.join(p.name for p in (*_seen, path))})")
    raw = read_yaml(path)
    try:
        spec = GridFile.model_validate(raw)
    except ValidationError as e:
        raise _explain(e, raw, where) from None
    given, folder = spec.model_fields_set, path.parent
    rebase = lambda row: row.model_copy(update={"set": absolute_overrides(row.set, folder)})  # noqa: E731
    if spec.axes is not None:
        lengths = [len(v) for v in spec.axes.values.values()]
        _check_trial_count(lengths[0] if spec.axes.mode == "zip" else math.prod(lengths), len(spec.seeds), where)
    elif spec.rows is not None:
        _check_trial_count(len(spec.rows), len(spec.seeds), where)
    rows = spec.axes.rows() if spec.axes is not None else spec.rows
    spec = spec.model_copy(update={
        "base": absolute_path(spec.base, folder), "set": absolute_overrides(spec.set, folder), "axes": None,
        "rows": None if rows is None else [rebase(r) for r in rows],
        "row_changes": {k: rebase(c) for k, c in spec.row_changes.items()},
    })
    if spec.extends is None:
        if spec.row_changes:
            raise ConfigError(f"{where}: row_changes: changes the rows of an extended grid; add extends: <grid file>")
        return spec
    parent_path = Path(absolute_path(spec.extends, folder))
    if not parent_path.is_file():
        raise ConfigError(f"{where}: extends: {parent_path} not found")
    parent = read_grid(parent_path, (*_seen, path))
    update = {k: getattr(spec, k) for k in given - {"grid", "extends", "row_changes", "axes"}}
    for k in ("set", "resources", "paper_setup"):
        if k in update:
            update[k] = {**getattr(parent, k), **update[k]}
    if "axes" in given:
        update["rows"] = spec.rows
    merged = parent.model_copy(update={**update, "grid": spec.grid, "extends": None, "row_changes": {}})
    merged = merged.model_copy(update={"rows": _change_rows(merged.rows or [], spec.row_changes, where)})
    _check_trial_count(len(merged.rows), len(merged.seeds), where)
    return merged


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
