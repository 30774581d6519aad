"""Identity vs runtime fields, and the stable hash of a config's identity.

A field is runtime when its schema entry carries ``json_schema_extra={"runtime": True}``
(see ``schema.runtime``); everything else is identity: it changes what the trial computes.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from pydantic import BaseModel

from .keys import schema_field
from .schema import ExperimentConfig

# Bump when a code change alters results, so trial ids (and dedup) see the change.
METHOD_VERSION = 1


def _is_runtime(field) -> bool:
    extra = field.json_schema_extra
    return isinstance(extra, dict) and bool(extra.get("runtime"))


def _split(model: BaseModel, want_runtime: bool) -> dict:
    out: dict[str, Any] = {}
    for name, field in type(model).model_fields.items():
        value = getattr(model, name)
        if isinstance(value, BaseModel):
            sub = _split(value, want_runtime)
            if sub:
                out[name] = sub
        elif _is_runtime(field) == want_runtime:
            out[name] = json.loads(json.dumps(value, default=list))
    return out


def identity_dict(cfg: ExperimentConfig) -> dict:
    """Nested dict of the fields that change the result."""
    return _split(cfg, want_runtime=False)


def runtime_dict(cfg: ExperimentConfig) -> dict:
    """Nested dict of the fields that do not (paths, workers, device, tracking, resources)."""
    return _split(cfg, want_runtime=True)


def flatten(d: dict, prefix: str = "") -> dict[str, Any]:
    """{"a": {"b": 1}} -> {"a.b": 1}."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(flatten(v, key + "."))
        else:
            out[key] = v
    return out


def is_runtime_key(dotted: str) -> bool:
    """Whether a dotted key (``data.root``) names a runtime field; ConfigError when it names no field."""
    return _is_runtime(schema_field(dotted))


def config_hash(cfg: ExperimentConfig) -> str:
    """sha256 over the canonical JSON of the identity fields (12 hex digits)."""
    blob = json.dumps(identity_dict(cfg), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()[:12]


def trial_id(cfg: ExperimentConfig, data_fingerprint: str) -> str:
    """Stable id of a trial: identity fields (seed included), data fingerprint, method version."""
    blob = json.dumps(
        {"identity": identity_dict(cfg), "data": data_fingerprint, "method_version": METHOD_VERSION},
        sort_keys=True,
        separators=(",", ":"),
    )
    return hashlib.sha256(blob.encode()).hexdigest()[:16]
