"""A trial's identity: the resolved network and recipe it trains, and the stable hashes of it.

A field is runtime when its schema entry carries ``json_schema_extra={"runtime": True}``
(see ``schema.runtime``); everything else is identity as written (``identity_dict``: the config's
own fields, logged as MLflow params under their dotted names).

What the trial id hashes is not the YAML's spelling but ``resolved_identity``: the values the
trial really trains with (id scheme ``ID_SCHEME``; ``dinolab migrate`` carries older stores over).

- model: the family's resolved structure (``dinolab.models.registry.resolve_structure``): patch
  size, width, depth, heads, window after the architecture's defaults, so ``vit_small`` with
  ``patch_size: 16`` and with ``null`` (and ``deit_small``, the same network) are one trial.
  ResNet: block type, blocks and widths per stage, stem. Generic timm: the model name and the
  overrides that change the built network. ``model.drop_path_rate`` only where the family uses it
  (not ResNets; timm models only when they take it). A knob the family does not use is refused
  by the config checks, so it never reaches an id.
- dino: the head (out/hidden/bottleneck dims, layers, BN, norm_last_layer, predictor), teacher and
  loss always; ``momentum`` only with the ``ema`` teacher; with ``loss: ce`` the temperatures
  (``warmup_teacher_temp`` only with ``warmup_teacher_temp_epochs > 0``), ``centering``,
  ``center_momentum`` (ema centering, or EsViT's region loss, which centers its own way) and
  ``sinkhorn_iterations`` (sinkhorn centering only); with ``loss: infonce`` only ``infonce_temp``;
  ``mse`` uses no temperature.
- esvit.region_loss for every family (the region term uses the backbone's last-stage tokens).
- crops: the local crops' size and scale only when ``local_number > 0``.
- train: every identity field. data: name, augment, train_limit, and the ``synthetic_*`` fields
  only for ``data.name: synthetic``. eval: ``image_size`` after its default (the global crop),
  the k-NN knobs, ``linear`` and, only when it is on, the probe's epochs, lrs and val split.
- Any other identity field (a knob added later) enters only when it differs from its schema
  default, so adding a knob at its default (the behaviour before it existed) leaves every id
  unchanged. Changing what an existing default means is a result change: bump METHOD_VERSION.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from pydantic import BaseModel

from dinolab.track.contract import RESOLVED_PARAM_PREFIX

from .keys import schema_field
from .schema import ExperimentConfig

# Bump when a code change alters results, so trial ids (and dedup) see the change.
METHOD_VERSION = 1
# How ids are derived from a config; a change adds a step to dinolab.migrate (never rewrites one).
ID_SCHEME = 2
RESOLVED_PREFIX = RESOLVED_PARAM_PREFIX  # the MLflow params of the resolved values (dinolab.track.contract)


def _is_runtime(field) -> bool:
    extra = field.json_schema_extra
    return isinstance(extra, dict) and bool(extra.get("runtime"))


def _json(value: Any) -> Any:
    return json.loads(json.dumps(value, default=list))


def _split(model: BaseModel, want_runtime: bool) -> dict:
    out: dict[str, Any] = {}
    for name, field in type(model).model_fields.items():
        value = getattr(model, name)
        if isinstance(value, BaseModel):
            sub = _split(value, want_runtime)
            if sub:
                out[name] = sub
        elif _is_runtime(field) == want_runtime:
            out[name] = _json(value)
    return out


def identity_dict(cfg: ExperimentConfig) -> dict:
    """Nested dict of the identity fields as written (every non-runtime field)."""
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


# ----------------------------------------------------------------------------- the resolved identity


def _pick(section: BaseModel, *names: str) -> dict:
    return {n: _json(getattr(section, n)) for n in names}


def _model(cfg: ExperimentConfig) -> dict:
    from dinolab.models.registry import resolve_structure, uses_drop_path

    out = _json(resolve_structure(cfg.model))
    if uses_drop_path(cfg.model.arch):
        out["drop_path_rate"] = cfg.model.drop_path_rate
    return out


def _dino(cfg: ExperimentConfig) -> dict:
    d = cfg.dino
    out = _pick(d, "teacher", "loss", "predictor", "out_dim", "hidden_dim", "bottleneck_dim", "head_layers",
                "use_bn_in_head", "norm_last_layer")
    if d.teacher == "ema":
        out["momentum"] = d.momentum
    if d.loss == "ce":
        out.update(_pick(d, "centering", "student_temp", "teacher_temp", "warmup_teacher_temp_epochs"))
        if d.warmup_teacher_temp_epochs > 0:
            out["warmup_teacher_temp"] = d.warmup_teacher_temp
        if d.centering == "ema" or cfg.esvit.region_loss:
            out["center_momentum"] = d.center_momentum
        if d.centering == "sinkhorn":
            out["sinkhorn_iterations"] = d.sinkhorn_iterations
    elif d.loss == "infonce":
        out["infonce_temp"] = d.infonce_temp
    return out


def _crops(cfg: ExperimentConfig) -> dict:
    c = cfg.crops
    out = _pick(c, "global_size", "global_scale", "local_number")
    if c.local_number > 0:
        out.update(_pick(c, "local_size", "local_scale"))
    return out


def _data(cfg: ExperimentConfig) -> dict:
    d = cfg.data
    return _pick(d, "name", "augment", "train_limit", *(
        n for n in type(d).model_fields if n.startswith("synthetic_") and d.name == "synthetic"))


def _eval(cfg: ExperimentConfig) -> dict:
    e = cfg.eval
    out = {"image_size": cfg.eval_image_size, **_pick(e, "knn_every", "knn_k", "knn_temperature", "linear",
                                                       "max_train_images", "max_test_images")}
    if e.linear:
        out.update(_pick(e, "linear_epochs", "linear_lrs", "val_fraction"))
    return out


# section -> (resolver, the fields it decides on: used or deliberately left out)
_RESOLVERS = {
    "model": (_model, ("arch", "patch_size", "window_size", "embed_dim", "depths", "num_heads", "small_stem", "drop_path_rate")),
    "crops": (_crops, ("global_size", "local_size", "local_number", "global_scale", "local_scale")),
    "dino": (_dino, ("teacher", "momentum", "loss", "predictor", "centering", "center_momentum", "out_dim", "hidden_dim",
                     "bottleneck_dim", "head_layers", "use_bn_in_head", "norm_last_layer", "student_temp", "teacher_temp",
                     "warmup_teacher_temp", "warmup_teacher_temp_epochs", "sinkhorn_iterations", "infonce_temp")),
    "esvit": (lambda cfg: _pick(cfg.esvit, "region_loss"), ("region_loss",)),
    "train": (lambda cfg: _pick(cfg.train, "epochs", "batch_size", "lr", "min_lr", "warmup_epochs", "weight_decay",
                                "weight_decay_end", "clip_grad", "freeze_last_layer", "optimizer", "seed", "steps_per_epoch"),
              ("epochs", "batch_size", "lr", "min_lr", "warmup_epochs", "weight_decay", "weight_decay_end", "clip_grad",
               "freeze_last_layer", "optimizer", "seed", "steps_per_epoch")),
    "data": (_data, ("name", "augment", "train_limit", "synthetic_train", "synthetic_test", "synthetic_size",
                     "synthetic_classes", "synthetic_seed", "synthetic_palette", "synthetic_backgrounds",
                     "synthetic_max_rotation", "synthetic_objects", "synthetic_object_area")),
    "eval": (_eval, ("image_size", "knn_every", "knn_k", "knn_temperature", "linear", "linear_epochs", "linear_lrs",
                     "val_fraction", "max_train_images", "max_test_images")),
}


def _later_knobs(model: BaseModel, decided: dict[str, tuple[str, ...]], prefix: str = "") -> dict:
    """Identity fields no resolver decides on (knobs added after ID_SCHEME 2), where off their default."""
    out: dict[str, Any] = {}
    for name, field in type(model).model_fields.items():
        value = getattr(model, name)
        if isinstance(value, BaseModel):
            sub = _later_knobs(value, decided, f"{prefix}{name}.")
            if sub:
                out[name] = sub
        elif not _is_runtime(field) and name not in decided.get(prefix.rstrip("."), ()):
            default = field.get_default(call_default_factory=True)
            if _json(value) != _json(default):
                out[name] = _json(value)
    return out


def resolved_identity(cfg: ExperimentConfig) -> dict:
    """Nested dict of what the trial trains with (the rules are in this module's docstring).

    ValueError (from the model family) when the config names a knob its family does not use; the
    config checks turn that into a ConfigError before any id is computed.
    """
    out = {section: resolve(cfg) for section, (resolve, _) in _RESOLVERS.items()}
    for key, extra in _later_knobs(cfg, {s: names for s, (_, names) in _RESOLVERS.items()}).items():
        if isinstance(extra, dict):  # fields added to a section
            out.setdefault(key, {}).update(extra)
        else:  # a top-level field
            out[key] = extra
    return out


def resolved_params(cfg: ExperimentConfig) -> dict[str, str]:
    """The resolved identity as MLflow params, ``resolved.<section>.<key>`` -> str."""
    return {f"{RESOLVED_PREFIX}{k}": str(v) for k, v in flatten(resolved_identity(cfg)).items()}


def _digest(obj: Any, n: int) -> str:
    blob = json.dumps(obj, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()[:n]


def config_hash(cfg: ExperimentConfig) -> str:
    """sha256 over the canonical JSON of the resolved identity (12 hex digits)."""
    return _digest(resolved_identity(cfg), 12)


def trial_id(cfg: ExperimentConfig, data_fingerprint: str) -> str:
    """Stable id of a trial: resolved identity (seed included), data fingerprint, method version."""
    return _digest({"identity": resolved_identity(cfg), "data": data_fingerprint, "method_version": METHOD_VERSION}, 16)
