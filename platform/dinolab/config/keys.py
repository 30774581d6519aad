"""Dotted keys of the experiment schema (``dino.teacher``, ``data.root``): the one walker that ``--set``, grid
files, identity and reports use to follow a key to its field, and the "did you mean" of every unknown name."""

from __future__ import annotations

import difflib
from typing import Any, Iterable, Optional, Sequence

from pydantic import BaseModel
from pydantic.fields import FieldInfo

from .loader import ConfigError
from .schema import ExperimentConfig


def section_of(annotation: Any) -> Optional[type[BaseModel]]:
    """The schema section a field holds (``ModelConfig`` for ``model``), or None for a value field."""
    return annotation if isinstance(annotation, type) and issubclass(annotation, BaseModel) else None


def section(parts: Sequence[str], root: type[BaseModel] = ExperimentConfig) -> Optional[type[BaseModel]]:
    """The section a path of names leads to (``root`` for ``()``), or None where a name is no section."""
    model: Optional[type[BaseModel]] = root
    for part in parts:
        field = model.model_fields.get(str(part)) if model is not None else None
        model = section_of(field.annotation) if field is not None else None
    return model


def nearest(key: str, valid: Iterable[str]) -> list[str]:
    """The valid name closest to ``key`` (case-insensitive; else a name that ``key`` begins), or []."""
    valid = list(valid)
    lower = {v.lower(): v for v in valid}
    close = difflib.get_close_matches(key.lower(), list(lower), n=1)
    if close:
        return [lower[close[0]]]
    return [v for v in valid if v.lower().startswith(key.lower())][:1]


def unknown(key: Any, valid: Iterable[str], what: str = "key") -> str:
    """``unknown <what> 'x'; did you mean y? (valid: ...)``, for messages about any name (keys, rows, metrics)."""
    valid = list(valid)
    close = nearest(str(key), valid)
    hint = f"; did you mean {close[0]}?" if close else ""
    return f"unknown {what} {key!r}{hint} (valid: {', '.join(valid)})"


def schema_field(dotted: str, root: type[BaseModel] = ExperimentConfig) -> FieldInfo:
    """The field a dotted key names. ConfigError (one line, without a source) when a name is unknown (with the
    nearest valid key), when the key goes on past a value field, or when it stops at a section."""
    parts = dotted.split(".")
    model = root
    for i, part in enumerate(parts):
        fields = model.model_fields
        if part not in fields:
            close = nearest(part, fields)
            hint = f"; did you mean {'.'.join(parts[:i] + close + parts[i + 1:])}?" if close else ""
            valid = ", ".join(".".join(parts[:i] + [f]) for f in fields)
            raise ConfigError(f"unknown key {dotted!r}{hint} (valid: {valid})")
        sub = section_of(fields[part].annotation)
        if i == len(parts) - 1:
            if sub is not None:
                example = f"{dotted}.{next(iter(sub.model_fields))}"
                raise ConfigError(f"{dotted}: is a section; set its fields, e.g. {example}")
            return fields[part]
        if sub is None:
            raise ConfigError(f"{dotted}: {'.'.join(parts[:i + 1])} is a field, not a section")
        model = sub
    raise ConfigError(f"unknown key {dotted!r}")  # not reached: the loop returns or raises
