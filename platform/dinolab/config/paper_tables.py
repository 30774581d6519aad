"""The papers' tables as numbers (``paper_tables.yaml``): the reference columns of the reports.

Where the file is read from, first found wins:
1. ``path`` when given;
2. ``$DINOLAB_PAPER_TABLES``;
3. the copy shipped in this package (``dinolab/config/paper_tables.yaml``, package data), a verbatim copy of the
   project's ``shared/reference/paper_tables.yaml`` (tests/test_config_grid.py checks they are equal).

Each table has an ``id``, a ``title``, a ``source``, optional ``notes``, ``columns`` and ``rows`` (lists aligned
with ``columns``; ``null`` = not found in a source). Rows are numbered from 1 in the file's order, which is
the paper's order: an ablation row names its paper row by that number (``paper_row``).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Optional

import yaml

from .loader import ConfigError

ENV_VAR = "DINOLAB_PAPER_TABLES"
FILE_NAME = "paper_tables.yaml"
# The package's own copy; a wheel installs unpacked, so the resource is a file on disk.
PACKAGED = Path(str(resources.files(__package__).joinpath(FILE_NAME)))


@dataclass(frozen=True)
class PaperTable:
    """One table of a paper: ``rows[i][j]`` is the value of ``columns[j]`` in paper row ``i + 1``."""

    id: str
    title: str
    columns: tuple[str, ...]
    rows: tuple[tuple[Any, ...], ...]
    source: dict = field(default_factory=dict)
    notes: Optional[str] = None

    def records(self) -> list[dict[str, Any]]:
        """The rows as ``{column: value}`` mappings, in the paper's order."""
        return [dict(zip(self.columns, row)) for row in self.rows]

    def value(self, row: int, column: str) -> Any:
        """The value of ``column`` in paper row ``row`` (1-based)."""
        if not 1 <= row <= len(self.rows):
            raise ValueError(f"paper table {self.id}: row {row} out of range 1..{len(self.rows)}")
        if column not in self.columns:
            raise ValueError(f"paper table {self.id}: no column {column!r}; columns: {', '.join(self.columns)}")
        return self.rows[row - 1][self.columns.index(column)]


def default_path() -> Path:
    """The file ``load_paper_tables()`` reads when no path is given (see the module docstring)."""
    env = os.environ.get(ENV_VAR)
    return Path(env).expanduser() if env else PACKAGED


_CACHE: dict[tuple[str, int], dict[str, PaperTable]] = {}


def load_paper_tables(path: str | os.PathLike | None = None) -> dict[str, PaperTable]:
    """``{table id: PaperTable}`` from ``path`` or ``default_path()``; a malformed file is a ConfigError."""
    path = Path(path).expanduser() if path is not None else default_path()
    if not path.is_file():
        raise ConfigError(f"{path}: paper tables file not found (set ${ENV_VAR} or pass a path)")
    key = (str(path.resolve()), path.stat().st_mtime_ns)
    if key not in _CACHE:
        _CACHE[key] = _parse(path)
    return dict(_CACHE[key])


def _parse(path: Path) -> dict[str, PaperTable]:
    try:
        data = yaml.load(path.read_text(encoding="utf-8"), Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: invalid YAML ({getattr(e, 'problem', e)})") from None
    if not isinstance(data, dict) or not isinstance(data.get("tables"), list):
        raise ConfigError(f"{path}: expected a mapping with a 'tables:' list")
    tables: dict[str, PaperTable] = {}
    for i, raw in enumerate(data["tables"]):
        where = f"{path}: tables[{i}]"
        if not isinstance(raw, dict) or not isinstance(raw.get("id"), str):
            raise ConfigError(f"{where}: every table needs an 'id'")
        tid = raw["id"]
        if tid in tables:
            raise ConfigError(f"{where}: duplicate table id {tid}")
        columns = raw.get("columns")
        rows = raw.get("rows")
        if not isinstance(columns, list) or not isinstance(rows, list):
            raise ConfigError(f"{where} ({tid}): needs 'columns' and 'rows' lists")
        for j, row in enumerate(rows, start=1):
            if not isinstance(row, list) or len(row) != len(columns):
                raise ConfigError(f"{where} ({tid}): row {j} has {len(row) if isinstance(row, list) else '?'} "
                                  f"values for {len(columns)} columns")
        tables[tid] = PaperTable(
            id=tid,
            title=str(raw.get("title", "")),
            columns=tuple(str(c) for c in columns),
            rows=tuple(tuple(r) for r in rows),
            source=dict(raw.get("source") or {}),
            notes=raw.get("notes"),
        )
    return tables
