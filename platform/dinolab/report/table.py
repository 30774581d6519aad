"""A grid's ablation table as a structured object: cells, statistics over seeds, effects, agreement.

For each row of the grid (in the paper's order) and each report column:
- the measured cell is the mean over the row's seeds with the sample std (ddof=1) and the seed count, taken
  from each trial's current run (the newest not superseded) and the column's summary (``final/ best/ last<k>/``);
  a trial that has not run, is running, failed (with ``dinolab.failure_reason``) or collapsed
  (``dinolab.collapsed``) is recorded as such in the cell;
- when the row's setup matches the paper's (``paper_setup`` against the trials' configs), the cell
  carries ``diff = measured - paper``;
- otherwise it carries the row's effect against the grid's default row, ``effect = row - default``
  (paired by seed when the rows share at least two seeds), the paper's effect
  ``paper_effect = paper(row) - paper(default row)``, and ``agreement``: ``agree`` / ``disagree`` when
  the signs match / differ and ``|effect| > 2 * std(effect over seeds)``, else ``inconclusive``.
Each row carries its cost (throughput, wall time, GPU- or CPU-hours, peak memory) from its finished trials.
"""

from __future__ import annotations

import functools
import logging
import math
import re
import time
from dataclasses import dataclass, field
from pathlib import Path, PurePath
from typing import Any, Iterable, Mapping, Optional, Sequence

import pandas as pd

from dinolab import lifecycle
from dinolab.config.gridfile import Column, parse_agg
from dinolab.lifecycle import TrialState
from dinolab.track import contract
from dinolab.track.contract import RunRecord

from .runs import current_run_ids, run_records

log = logging.getLogger(__name__)

COST_METRICS = contract.COST_METRICS
DATA_ROOT_TAG = contract.RUNTIME_PREFIX + "data.root"
TAG_PREFIXES = (contract.TRIAL_ID.split(".")[0] + ".",)  # every dinolab.* tag
TAG_KEYS = (DATA_ROOT_TAG, contract.MLFLOW_LOGGED_IMAGES, contract.MLFLOW_RUN_NAME)
# paper_setup's short names -> the config key they stand for ("multicrop" is derived from the crops section).
SETUP_ALIASES = {"data": "data.name", "arch": "model.arch", "patch_size": "model.patch_size", "epochs": "train.epochs",
                 "batch_size": "train.batch_size", "multicrop": "crops"}
ARCH_CHANGERS = ("model.embed_dim", "model.depths", "model.num_heads")
_ARCH_ALIASES = {"vits": "vitsmall", "vitb": "vitbase", "vitt": "vittiny", "deits": "vitsmall", "deitb": "vitbase",
                 "rn50": "resnet50", "r50": "resnet50"}
_DATA_ALIASES = {"imagenet1k": "imagenet", "in1k": "imagenet", "ilsvrc2012": "imagenet", "ilsvrc": "imagenet"}
_CROP_KEYS = ("crops.global_size", "crops.local_size", "crops.local_number")
# Headline of a cell with no measured value: the first trial state present, in this order.
_EMPTY_PRIORITY = (TrialState.FAILED, TrialState.CANCELLED, TrialState.STOPPED, TrialState.INTERRUPTED,
                   TrialState.RUNNING, "n/a", TrialState.MISSING)


# ---------------------------------------------------------------- structure


@dataclass(frozen=True)
class Stat:
    """Mean, sample std (None for one value) and count of values over seeds."""

    mean: float
    std: Optional[float]
    n: int
    values: tuple[float, ...] = ()

    @classmethod
    def of(cls, values: Iterable[float]) -> Optional["Stat"]:
        vals = tuple(float(v) for v in values)
        if not vals:
            return None
        mean = sum(vals) / len(vals)
        std = math.sqrt(sum((v - mean) ** 2 for v in vals) / (len(vals) - 1)) if len(vals) > 1 else None
        return cls(mean, std, len(vals), vals)


@dataclass
class RowTrial:
    """One trial of a row: its current run and what became of it."""

    trial_id: str
    row: str
    seed: int
    status: TrialState
    run_id: Optional[str] = None
    reason: str = ""


@dataclass
class Cell:
    row: str
    column: str  # the column's label
    status: str  # ok | collapsed (a value) | a TrialState none of whose trials has one | n/a | reference
    stat: Optional[Stat] = None
    per_seed: dict[int, float] = field(default_factory=dict)
    counts: dict[str, int] = field(default_factory=dict)  # trial state (or n/a) -> number of the row's trials
    reasons: list[str] = field(default_factory=list)
    paper: Optional[float] = None
    diff: Optional[float] = None  # measured - paper (setup matches the paper's)
    effect: Optional[Stat] = None  # row - default row, over seeds
    paper_effect: Optional[float] = None  # paper(row) - paper(default row)
    agreement: Optional[str] = None  # agree | disagree | inconclusive (setup differs from the paper's)


@dataclass
class Cost:
    images_per_s: Optional[Stat] = None
    wall_time_s: Optional[Stat] = None
    hours: Optional[Stat] = None
    hours_unit: str = "CPU-h"  # GPU-h when the row's trials ran on GPUs
    peak_rss_mb: Optional[Stat] = None
    cuda_peak_mb: Optional[Stat] = None


@dataclass
class Row:
    name: str
    default: bool = False
    reference_only: bool = False
    labels: dict[str, str] = field(default_factory=dict)
    compare: Optional[str] = None  # "paper" (setup matches: differences) | "effect" | None (nothing measured)
    setup_notes: list[str] = field(default_factory=list)  # why the setup differs from the paper's
    cells: list[Cell] = field(default_factory=list)
    cost: Cost = field(default_factory=Cost)
    trials: list[RowTrial] = field(default_factory=list)


@dataclass
class Summary:
    agree: int = 0
    disagree: int = 0
    inconclusive: int = 0
    paper_rows: int = 0  # rows compared with the paper's values directly
    effect_rows: int = 0  # rows compared by the direction of their effect


@dataclass
class Table:
    grid: str
    columns: list[Column]
    rows: list[Row]
    summary: Summary
    label_columns: list[str] = field(default_factory=list)
    default_row: Optional[str] = None
    seeds: list[int] = field(default_factory=list)
    paper_table: Optional[str] = None
    paper_title: str = ""
    paper_setup: dict[str, Any] = field(default_factory=dict)
    tracking_uri: str = ""
    notes: list[str] = field(default_factory=list)

    def row(self, name: str) -> Row:
        for r in self.rows:
            if r.name == name:
                return r
        raise KeyError(f"no row {name!r}; rows: {', '.join(r.name for r in self.rows)}")

    def cell(self, row: str, column: str) -> Cell:
        """The cell of a row and a column (by label or metric)."""
        r = self.row(row)
        for spec, c in zip(self.columns, r.cells):
            if column in (spec.label, spec.metric):
                return c
        raise KeyError(f"no column {column!r}; columns: {', '.join(s.label for s in self.columns)}")


# ---------------------------------------------------------------- metric keys


def metric_keys(metric: str, agg: str) -> list[str]:
    """MLflow metric keys that may hold a column's value, most specific first (see ``metric_value``)."""
    kind, k = parse_agg(agg)
    if kind == "final":
        return [contract.final_key(metric), metric]
    return [contract.best_key(metric) if kind == "best" else contract.last_key(metric, k), metric]


def _num(x) -> Optional[float]:
    try:
        v = float(x)
    except (TypeError, ValueError):
        return None
    return None if math.isnan(v) else v


def metric_value(run: Mapping, metric: str, agg: str) -> Optional[float]:
    """A column's value in one run (a row of ``load_runs``), or None.

    final: ``final/m``, else the plain final metric ``m`` (``linear_top1`` has no history).
    best / last<k>: ``best/m`` / ``last<k>/m``; the plain ``m`` only when the run has no ``final/m``,
    i.e. ``m`` is a one-off end-of-trial metric whose best and last-k are itself.
    """
    specific, plain = metric_keys(metric, agg)
    v = _num(run.get(f"metrics.{specific}"))
    if v is not None:
        return v
    if parse_agg(agg)[0] != "final" and _num(run.get(f"metrics.{contract.final_key(metric)}")) is not None:
        return None  # a per-epoch metric without this summary (e.g. last5 when trials log last3)
    return _num(run.get(f"metrics.{plain}"))


def columns_of(grid) -> list[Column]:
    """The grid's columns (validated when made), or the k-NN column against the paper's ``knn``."""
    return list(getattr(grid, "columns", None) or [Column(metric=contract.KNN_TOP1, label="k-NN", paper="knn")])


def setup_params(short: str) -> tuple[str, ...]:
    """The params the comparison of one ``paper_setup`` entry reads."""
    key = setup_key(short)
    if key is None:
        return ()
    if key == "crops":
        return _CROP_KEYS
    return {"data.name": ("data.name", "data.train_limit"), "model.arch": ("model.arch", *ARCH_CHANGERS)}.get(key, (key,))


def required_keys(grids: Sequence) -> dict[str, list[str]]:
    """The keys ``load_runs`` must read for these grids' tables (keyword arguments of ``load_runs``): the
    columns' summaries, the cost metrics, the params the setup comparison needs, the ``dinolab.*`` tags."""
    metrics, params = set(COST_METRICS), set()
    for grid in grids:
        for c in columns_of(grid):
            metrics.update(metric_keys(c.metric, c.agg))
            metrics.add(contract.final_key(c.metric))
        for key in (getattr(grid, "paper_setup", None) or {}):
            params.update(setup_params(key))
    return {"metric_keys": sorted(metrics), "param_keys": sorted(params), "tag_keys": list(TAG_KEYS),
            "tag_prefixes": list(TAG_PREFIXES)}


# ---------------------------------------------------------------- trials -> states


def _tag(run: Mapping, key: str) -> str:
    v = run.get(f"tags.{key}")
    return "" if v is None or (isinstance(v, float) and math.isnan(v)) else str(v)


def _age(seconds: float) -> str:
    if seconds < 90:
        return f"{int(seconds)} s"
    if seconds < 90 * 60:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def trial_state(trial_id: str, row: str, seed: int, run: Optional[Mapping], now: float,
                storage: Optional[Path] = None) -> RowTrial:
    """What became of a trial (``lifecycle.state_of``), from its current run (None: never run) and, for an
    unfinished run, its claim under ``storage`` where its folder is there."""
    if run is None:
        return RowTrial(trial_id, row, seed, TrialState.MISSING, None, "not run")
    rec = RunRecord.of_row(run)
    claimed = None if storage is None or rec.status == "FINISHED" else lifecycle.claim_seen(storage, trial_id)
    state = lifecycle.state_of(rec, claimed)
    if state in (TrialState.RUNNING, TrialState.INTERRUPTED):
        parts = [f"{rec.epochs_done} epochs done"] if rec.epochs_done else []
        if rec.heartbeat is not None:
            parts.append(f"heartbeat {_age(max(0.0, now - rec.heartbeat))} ago")
        reason = ", ".join(parts) or "running"
        reason = f"owner gone: {reason}" if state == TrialState.INTERRUPTED else reason
    else:
        reason = {TrialState.FAILED: rec.reason or "no reason recorded", TrialState.CANCELLED: rec.reason or "killed",
                  TrialState.STOPPED: rec.reason or "killed", TrialState.COLLAPSED: rec.collapse_reason or "collapsed"}.get(state, "")
    return RowTrial(trial_id, row, seed, state, rec.run_id, reason)


# ---------------------------------------------------------------- paper values and setups


def _row_name(x) -> str:
    return str(getattr(x, "name", x))


def paper_value(grid_row, column: Column, paper_table=None) -> Optional[float]:
    """The paper's value of a row for a column: ``row.paper[column.paper]`` when the row gives it (null
    included), else the grid's paper table at ``row.paper_row`` (1-based), column ``column.paper``."""
    if not column.paper:
        return None
    paper = getattr(grid_row, "paper", None)
    if isinstance(paper, Mapping) and column.paper in paper:
        return _num(paper[column.paper])
    number = getattr(grid_row, "paper_row", None)
    if isinstance(paper, int) and not isinstance(paper, bool):
        number = paper
    if number is not None and paper_table is not None and column.paper in paper_table.columns:
        try:
            return _num(paper_table.value(int(number), column.paper))
        except ValueError:
            return None
    return None


def _norm(text: Any) -> str:
    return _norm_str(str(text))


@functools.lru_cache(maxsize=4096)
def _norm_str(text: str) -> str:
    return re.sub(r"[^a-z0-9]", "", text.lower())


def data_label(name: Optional[str], root: Optional[str]) -> str:
    """What data set a trial used: ``data.name``, or for an ImageFolder the name of its root folder."""
    if name == "imagefolder" and root:
        p = PurePath(str(root).rstrip("/\\"))
        base = p.name
        if base.lower() in ("train", "val", "test", "images") and p.parent.name:
            base = p.parent.name
        return base
    return str(name)


def _same(key: str, ours: Any, theirs: Any) -> bool:
    if key == "model.arch":
        a, b = _norm(ours), _norm(theirs)
        return _ARCH_ALIASES.get(a, a) == _ARCH_ALIASES.get(b, b)
    if key == "data.name":
        a, b = _norm(ours), _norm(theirs)
        return _DATA_ALIASES.get(a, a) == _DATA_ALIASES.get(b, b)
    if isinstance(ours, (list, tuple)) and isinstance(theirs, (list, tuple)):
        return list(ours) == list(theirs)
    if isinstance(ours, str) or isinstance(theirs, str):
        return _norm(ours) == _norm(theirs)
    return ours == theirs


@functools.lru_cache(maxsize=None)
def setup_key(short: str) -> Optional[str]:
    """The config key a ``paper_setup`` entry is compared with; None when it names no identity field
    (``gpus``: how many GPUs does not change what a trial computes)."""
    from dinolab.config.identity import is_runtime_key

    key = SETUP_ALIASES.get(short, short)
    if key == "crops":
        return key
    try:
        return None if is_runtime_key(key) else key
    except ValueError:  # ConfigError: no such field
        return None


def multicrop_label(values: Mapping[str, Any]) -> str:
    """``2x224+10x96`` (global x size + local x size), the paper's way of writing a multi-crop setup."""
    g, l, n = (values.get(k) for k in _CROP_KEYS)
    return f"2x{g}" + (f"+{n}x{l}" if n else "")


def setup_mismatches(paper_setup: Mapping[str, Any], values: Mapping[str, Any], data_root: Optional[str] = None,
                     skip: Iterable[str] = ()) -> list[str]:
    """Why a trial's setup differs from the paper's (empty: it matches).

    paper_setup: short names (data, arch, patch_size, epochs, batch_size, multicrop) or dotted config keys;
    entries that name no identity field (gpus) are not compared. values: the trial's typed config values by
    dotted key. skip: keys the row itself changes (its paper row changes them too, so they are not part
    of the setup the rows share).
    """
    skip = set(skip)
    notes = []
    for short, theirs in paper_setup.items():
        key = setup_key(short)
        if key is None or key in skip or (key == "crops" and skip & set(_CROP_KEYS)):
            continue
        if key == "crops":
            ours = multicrop_label(values)
        else:
            ours = values.get(key)
        if key == "data.name":
            ours = data_label(ours, data_root)
            if values.get("data.train_limit") is not None:
                notes.append(f"data.train_limit={values['data.train_limit']} (a subset of {ours})")
        if key == "model.arch":
            changed = [f"{k}={values[k]}" for k in ARCH_CHANGERS if values.get(k) is not None]
            if changed:
                notes.append(f"{', '.join(changed)} change{'s' if len(changed) == 1 else ''} the architecture")
        if not _same(key, ours, theirs):
            notes.append(f"{short}: {ours} (paper: {theirs})")
    return notes


def _overridden_keys(grid_row) -> set[str]:
    from dinolab.config import flatten

    overrides = getattr(grid_row, "overrides", None) or {}
    flat = flatten(dict(overrides)) if isinstance(overrides, Mapping) else {}
    return set(flat)


def _trial_values(trial, run: Optional[Mapping], keys: Sequence[str]) -> tuple[dict[str, Any], Optional[str]]:
    """(typed config values of ``keys`` by dotted key, data root) of a trial: from its run's params (cast
    through the schema), else from its config."""
    if run is not None:
        values = {k: run[f"params.{k}"] for k in keys if not _missing(run.get(f"params.{k}"))}
        if values:
            root = _tag(run, DATA_ROOT_TAG)
            return values, (None if root in ("", "None") else root)
    cfg = getattr(trial, "config", None)
    if cfg is None:
        return {}, None
    from dinolab.config import flatten, identity_dict

    return flatten(identity_dict(cfg)), cfg.data.root


def _missing(v) -> bool:
    return v is None or (isinstance(v, float) and math.isnan(v))


# ---------------------------------------------------------------- the table


def _effect(row: dict[int, float], default: dict[int, float]) -> Optional[Stat]:
    """row - default over seeds: paired on shared seeds when there are two or more, else unpaired with
    std = sqrt(var_row + var_default) (the std of one seed's difference)."""
    if not row or not default:
        return None
    common = sorted(set(row) & set(default))
    if len(common) >= 2:
        return Stat.of(row[s] - default[s] for s in common)
    a, b = Stat.of(row.values()), Stat.of(default.values())
    std = math.sqrt(a.std ** 2 + b.std ** 2) if a.std is not None and b.std is not None else None
    return Stat(a.mean - b.mean, std, min(a.n, b.n), ())


def agreement(effect: Optional[Stat], paper_effect: Optional[float]) -> Optional[str]:
    """agree / disagree when |effect| > 2 std(effect) and the paper's effect has a sign; else inconclusive.
    None when either effect is unknown or the paper's effect is exactly zero (no direction to agree with)."""
    if effect is None or paper_effect is None or paper_effect == 0:
        return None
    if effect.std is None or not abs(effect.mean) > 2 * effect.std:
        return "inconclusive"
    return "agree" if (effect.mean > 0) == (paper_effect > 0) else "disagree"


def _cell(row_name: str, spec: Column, states: list[RowTrial], runs: Mapping[str, Mapping]) -> Cell:
    per_seed, counts, reasons, collapsed = {}, {}, [], False
    for st in states:
        counts[st.status] = counts.get(st.status, 0) + 1
        value = metric_value(runs[st.trial_id], spec.metric, spec.agg) if st.status in lifecycle.MEASURED else None
        if value is not None:
            per_seed[st.seed] = value
            collapsed |= st.status == TrialState.COLLAPSED and not spec.baseline  # a collapse is training's, not the init's
        elif st.status in lifecycle.MEASURED:
            counts["n/a"] = counts.get("n/a", 0) + 1
            counts[st.status] -= 1
        if st.status not in (TrialState.FINISHED, TrialState.MISSING) and st.reason:
            text = f"seed {st.seed}: {st.status}: {st.reason}"
            if text not in reasons:
                reasons.append(text)
    counts = {k: v for k, v in counts.items() if v}
    stat = Stat.of(per_seed[s] for s in sorted(per_seed))
    if stat is not None:
        status = "collapsed" if collapsed else "ok"
    else:
        status = next((s for s in _EMPTY_PRIORITY if counts.get(s)), "missing")
    return Cell(row_name, spec.label, status, stat, dict(sorted(per_seed.items())), counts, reasons)


def _cost(states: list[RowTrial], runs: Mapping[str, Mapping]) -> Cost:
    done = [runs[s.trial_id] for s in states if s.status in lifecycle.MEASURED]
    if not done:
        return Cost()

    def stat(key):
        return Stat.of(v for v in (_num(r.get(f"metrics.{key}")) for r in done) if v is not None)

    gpu = any(_tag(r, contract.DEVICE).startswith("cuda") or (_num(r.get(f"metrics.{contract.GPU_HOURS}")) or 0) > 0
              for r in done)
    return Cost(stat(contract.THROUGHPUT), stat(contract.WALL_TIME_S), stat(contract.GPU_HOURS if gpu else contract.CPU_HOURS),
                "GPU-h" if gpu else "CPU-h", stat(contract.PEAK_RSS_MB), stat(contract.CUDA_PEAK_MB))


def trial_key(trial) -> tuple[Optional[str], str]:
    """(trial id, config hash) of a grid trial; the id is None where its data is absent here (the id
    hashes the data's fingerprint), and the trial is then found by its config hash."""
    from dinolab.config import ConfigError, config_hash

    chash = getattr(trial, "config_hash", None) or config_hash(trial.config)
    try:
        return trial.trial_id, chash
    except (ConfigError, ImportError, OSError) as e:
        _warn_once(f"no trial ids where {e}: those trials are matched by config hash")
        return None, chash


_WARNED: set[str] = set()


def _warn_once(message: str) -> None:
    if message not in _WARNED:
        _WARNED.add(message)
        log.warning("%s", message)


@dataclass
class RunIndex:
    """The current run of each trial id and config hash, and those runs' records (typed params)."""

    by_id: dict[str, str]
    by_hash: dict[str, str]
    records: dict[str, dict]

    @classmethod
    def of(cls, runs: pd.DataFrame) -> "RunIndex":
        by_id, by_hash = current_run_ids(runs), current_run_ids(runs, contract.CONFIG_HASH)
        return cls(by_id, by_hash, run_records(runs, set(by_id.values()) | set(by_hash.values())))


def build_table(grid, runs: Optional[pd.DataFrame], *, paper_tables: Optional[Mapping] = None, tracking_uri: str = "",
                now: Optional[float] = None, keys: Optional[Mapping[int, tuple]] = None,
                index: Optional[RunIndex] = None, storage: Optional[Path] = None) -> Table:
    """The table of ``grid`` (a ``dinolab.config.grid.Grid``) from ``runs`` (a ``load_runs`` frame).

    paper_tables: ``{id: PaperTable}`` (default ``load_paper_tables()`` when a row names its paper row).
    now: unix time for heartbeat ages (default: the clock). keys: ``{id(trial): trial_key(trial)}`` and
    index: ``RunIndex.of(runs)``, when already computed (several grids read from one frame share them).
    storage: where the trials' folders and claims are (default: the home's), to tell running from interrupted.
    """
    from dinolab.home import default_storage

    now = time.time() if now is None else now
    storage = default_storage() if storage is None else Path(storage)
    columns = columns_of(grid)
    table_id = getattr(grid, "paper_table", None)
    paper_table = None
    if table_id:
        if paper_tables is None:
            from dinolab.config.paper_tables import load_paper_tables

            paper_tables = load_paper_tables()
        paper_table = paper_tables.get(table_id)
        if paper_table is None:
            log.warning("grid %s: paper table %r not found", grid.name, table_id)
    paper_setup = dict(getattr(grid, "paper_setup", None) or {})
    table_notes = []
    if not paper_setup:
        table_notes.append("the grid gives no paper_setup: rows are compared by their effect against the default row")
    ignored = [k for k in paper_setup if setup_key(k) is None]
    if ignored:
        table_notes.append(f"paper_setup entries not compared (not identity fields): {', '.join(ignored)}")

    # Each trial's current run: by trial id, or by config hash where the id needs absent data.
    keys = dict(keys or {})
    for t in grid.trials:
        if id(t) not in keys:
            keys[id(t)] = trial_key(t)
    if index is None:
        index = RunIndex.of(runs)
    chosen: dict[int, str] = {}
    for t in grid.trials:
        tid, chash = keys[id(t)]
        run_id = index.by_id.get(tid) if tid is not None else index.by_hash.get(chash)
        if run_id is not None:
            chosen[id(t)] = run_id
    if any(keys[id(t)][0] is None for t in grid.trials):
        table_notes.append("some trial ids need data absent here: those trials are matched by config hash")
    records = index.records
    setup_keys = sorted({k for short in paper_setup for k in setup_params(short)})
    run_of: dict[str, dict] = {}  # state key -> run record

    trials_by_row: dict[str, list] = {}
    for t in grid.trials:
        trials_by_row.setdefault(_row_name(t.row), []).append(t)

    grid_rows = list(grid.rows)
    default = next((r for r in grid_rows if getattr(r, "default", False)), None)
    label_columns: list[str] = []
    for gr in grid_rows:
        for k in (getattr(gr, "labels", None) or {}):
            if k not in label_columns:
                label_columns.append(k)

    rows: list[Row] = []
    for gr in grid_rows:
        name = _row_name(gr)
        ref = bool(getattr(gr, "reference_only", False))
        trials = sorted(trials_by_row.get(name, []), key=lambda t: t.seed)
        states = []
        for t in trials:
            tid, chash = keys[id(t)]
            state_key = tid or f"config:{chash}"
            rec = records.get(chosen.get(id(t), ""))
            if rec is not None:
                run_of[state_key] = rec
            states.append(trial_state(state_key, name, t.seed, rec, now, storage))
        row = Row(name, default=gr is default, reference_only=ref,
                  labels={k: str(v) for k, v in (getattr(gr, "labels", None) or {}).items()}, trials=states)
        if ref:
            row.cells = [Cell(name, c.label, "reference", paper=paper_value(gr, c, paper_table)) for c in columns]
        else:
            row.cells = [_cell(name, c, states, run_of) for c in columns]
            for c, cell in zip(columns, row.cells):
                cell.paper = paper_value(gr, c, paper_table)
            row.cost = _cost(states, run_of)
            if trials:
                skip = _overridden_keys(gr)
                notes: list[str] = []
                for t, st in zip(trials, states):
                    values, root = _trial_values(t, run_of.get(st.trial_id), setup_keys)
                    for n in setup_mismatches(paper_setup, values, root, skip):
                        if n not in notes:
                            notes.append(n)
                row.setup_notes = notes
                row.compare = "paper" if paper_setup and not notes else "effect"
        rows.append(row)

    default_row = next((r for r in rows if r.default), None)
    summary = Summary()
    for row in rows:
        if row.compare is None:
            continue
        if row.compare == "paper":
            summary.paper_rows += 1
        else:
            summary.effect_rows += 1
        for i, cell in enumerate(row.cells):
            if row.compare == "paper":
                if cell.stat is not None and cell.paper is not None:
                    cell.diff = cell.stat.mean - cell.paper
                continue
            if default_row is None or row is default_row or columns[i].baseline:
                continue
            base = default_row.cells[i]
            cell.effect = _effect(cell.per_seed, base.per_seed)
            if cell.paper is not None and base.paper is not None:
                cell.paper_effect = cell.paper - base.paper
            cell.agreement = agreement(cell.effect, cell.paper_effect)
            if cell.agreement is not None:
                setattr(summary, cell.agreement, getattr(summary, cell.agreement) + 1)

    return Table(
        grid=grid.name, columns=columns, rows=rows, summary=summary, label_columns=label_columns,
        default_row=default_row.name if default_row else None, seeds=list(getattr(grid, "seeds", None) or []),
        paper_table=table_id, paper_title=getattr(paper_table, "title", "") if paper_table else "",
        paper_setup=paper_setup, tracking_uri=tracking_uri, notes=table_notes,
    )


# ---------------------------------------------------------------- entry points


def grid_tracking_uri(grid, tracking_uri: Optional[str] = None) -> str:
    """The store a grid's trials log to: ``tracking_uri``, else the trials' ``tracking.uri``, else the default."""
    from dinolab.home import resolve_tracking_uri

    configured = tracking_uri
    if configured is None:
        for t in grid.trials:
            cfg = getattr(t, "config", None)
            if cfg is not None and cfg.tracking.uri:
                configured = cfg.tracking.uri
                break
    return resolve_tracking_uri(configured)


def load_grid_runs(grids: Sequence, tracking_uri: Optional[str] = None, *, method: str = "auto"):
    """One read of the store(s) for several grids: ``[(grid, uri, runs frame, trial keys, RunIndex)]``."""
    from .runs import load_runs

    by_uri: dict[str, list] = {}
    for g in grids:
        by_uri.setdefault(grid_tracking_uri(g, tracking_uri), []).append(g)
    out: dict[int, tuple] = {}
    for uri, group in by_uri.items():
        keys = {id(t): trial_key(t) for g in group for t in g.trials}
        ids = {k[0] for k in keys.values() if k[0] is not None}
        hashes = {k[1] for k in keys.values() if k[0] is None}
        runs = load_runs(uri, ids, config_hashes=hashes, method=method, **required_keys(group))
        index = RunIndex.of(runs)
        for g in group:
            out[id(g)] = (g, uri, runs, keys, index)
    return [out[id(g)] for g in grids]


def tables_for_grids(grids: Sequence, tracking_uri: Optional[str] = None, *, method: str = "auto",
                     now: Optional[float] = None, paper_tables: Optional[Mapping] = None,
                     storage: Optional[Path] = None) -> list[Table]:
    """The tables of several grids from one read of the store (grids sharing a store share the query)."""
    return [build_table(g, runs, paper_tables=paper_tables, tracking_uri=uri, now=now, keys=keys, index=index,
                        storage=storage)
            for g, uri, runs, keys, index in load_grid_runs(grids, tracking_uri, method=method)]


def as_grid(grid_or_path, overrides: Sequence[str] = ()):
    """A ``Grid``: given one, or expanded from an ablation file (``dinolab.config.grid.load_grid``)."""
    if hasattr(grid_or_path, "trials"):
        return grid_or_path
    from dinolab.config.grid import load_grid

    return load_grid(grid_or_path, list(overrides))


def report_table(grid_or_path, tracking_uri: Optional[str] = None, overrides: Sequence[str] = (), *,
                 method: str = "auto", now: Optional[float] = None, storage: Optional[Path] = None) -> Table:
    """The table of one grid or ablation file, read from ``tracking_uri`` (default: where its trials log)."""
    return tables_for_grids([as_grid(grid_or_path, overrides)], tracking_uri, method=method, now=now, storage=storage)[0]
