"""YAML experiments as deltas over the schema's defaults, plus ``--set dotted.key=value``.

An experiment file may name a ``base`` (another YAML, relative to it); bases are merged
first, then the file, then the overrides. YAML is read with the safe loader, so a tag that
would build a Python object is refused, and nothing in a file is ever executed.
Every error is a ``ConfigError`` whose message is one line naming the key and what is allowed.
"""

from __future__ import annotations

import copy
import difflib
import os
from pathlib import Path
from typing import Any, Iterable, Mapping, Optional

import yaml
from pydantic import ValidationError

from .schema import ExperimentConfig


class ConfigError(ValueError):
    """Bad input: the message is one line naming the key and what is allowed."""


# Fields holding filesystem paths: expanded (~, relative to the YAML that set them) and made absolute.
PATH_FIELDS = ("data.root",)


def read_yaml(path: str | os.PathLike) -> dict:
    """Parse one YAML mapping safely; a missing file, a syntax error or a Python tag is a ConfigError."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: file not found")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.constructor.ConstructorError as e:
        tag = getattr(e, "problem", "") or str(e).splitlines()[0]
        raise ConfigError(f"{path}: YAML tags that build objects are not allowed ({tag.strip()}); use plain values") from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark is not None else ""
        raise ConfigError(f"{path}:{where} invalid YAML ({getattr(e, 'problem', e)})") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of sections (model:, train:, ...)")
    return data


def deep_merge(base: Mapping, delta: Mapping) -> dict:
    """Recursive dict merge: mappings merge key by key, anything else in ``delta`` replaces."""
    out = copy.deepcopy(dict(base))
    for key, value in delta.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def absolute_path(value: Any, relative_to: Path) -> Any:
    """A path field's value with ``$VARS`` and ``~`` expanded, made absolute against ``relative_to`` (the folder
    of the file that set it, or the current directory for the command line); other values as they are."""
    if not isinstance(value, str) or not value:
        return value
    p = Path(os.path.expandvars(value)).expanduser()
    return str((p if p.is_absolute() else relative_to / p).resolve())


def _absolutize_paths(data: dict, relative_to: Path) -> None:
    """Make the path fields of one experiment file absolute against its folder."""
    for dotted in PATH_FIELDS:
        section, key = dotted.split(".")
        if isinstance(data.get(section), dict) and key in data[section]:
            data[section][key] = absolute_path(data[section][key], relative_to)


def load_layers(path: str | os.PathLike, _seen: Optional[set] = None) -> dict:
    """The merged raw mapping of an experiment file and its chain of ``base`` files."""
    path = Path(path).expanduser().resolve()
    seen = _seen or set()
    if path in seen:
        raise ConfigError(f"{path}: base: forms a cycle")
    seen.add(path)
    data = read_yaml(path)
    _absolutize_paths(data, path.parent)
    base = data.pop("base", None)
    if base is None:
        return data
    if not isinstance(base, str):
        raise ConfigError(f"{path}: base: must be a path to another experiment YAML")
    base_path = Path(base).expanduser()
    if not base_path.is_absolute():
        base_path = path.parent / base_path
    return deep_merge(load_layers(base_path, seen), data)


def parse_override(text: str) -> tuple[str, Any]:
    """``a.b=value`` -> (``a.b``, value parsed as a YAML scalar/list)."""
    if "=" not in text:
        raise ConfigError(f"--set {text!r}: expected dotted.key=value, e.g. --set train.epochs=10")
    key, raw = text.split("=", 1)
    key = key.strip()
    if not key or any(not part.isidentifier() for part in key.split(".")):
        raise ConfigError(f"--set {text!r}: the key must be dotted names, e.g. model.patch_size")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        raise ConfigError(f"--set {key}: cannot parse value {raw!r}") from None
    return key, value


def apply_overrides(data: dict, overrides: Iterable[str | tuple[str, Any]], cwd: Optional[Path] = None) -> dict:
    """Apply dotted overrides to a raw mapping; path fields are resolved against ``cwd``."""
    data = copy.deepcopy(data)
    for item in overrides:
        key, value = parse_override(item) if isinstance(item, str) else item
        parts = key.split(".")
        node = data
        for part in parts[:-1]:
            if not isinstance(node.get(part, {}), dict):
                raise ConfigError(f"--set {key}: {part} is not a section")
            node = node.setdefault(part, {})
        node[parts[-1]] = absolute_path(value, cwd or Path.cwd()) if key in PATH_FIELDS else value
    return data


def _format_validation_error(err: ValidationError, source: str) -> str:
    """One line for the first error, naming the dotted key and what is allowed."""
    first = err.errors()[0]
    loc = tuple(str(p) for p in first["loc"])
    key = ".".join(loc) or "(top level)"
    if first["type"] == "extra_forbidden":
        from .keys import section

        valid = list(getattr(section(loc[:-1]), "model_fields", ()))
        close = difflib.get_close_matches(loc[-1], valid, n=1)
        hint = f"; did you mean {'.'.join(loc[:-1] + (close[0],))}?" if close else ""
        return f"{source}: unknown key {key}{hint} (valid here: {', '.join(valid)})"
    if first["type"] == "literal_error":
        expected = first.get("ctx", {}).get("expected", "")
        return f"{source}: {key} = {first.get('input')!r} is not allowed; expected one of {expected}"
    msg = first["msg"]
    if msg.startswith("Value error, "):
        msg = msg[len("Value error, "):]
    return f"{source}: {key} = {first.get('input')!r}: {msg}"


def build_config(data: Mapping, source: str = "config") -> ExperimentConfig:
    """Validate a raw mapping against the schema and the cross-field checks."""
    try:
        cfg = ExperimentConfig.model_validate(dict(data))
    except ValidationError as e:
        raise ConfigError(_format_validation_error(e, source)) from None
    from .checks import check_combinations

    check_combinations(cfg, source)
    return cfg


def load_experiment(path: str | os.PathLike, overrides: Iterable[str] = (), name: Optional[str] = None) -> ExperimentConfig:
    """Load an experiment YAML (with its bases) and ``--set`` overrides into a validated config."""
    data = load_layers(path)
    data.setdefault("name", name or Path(path).stem)
    data = apply_overrides(data, overrides)
    return build_config(data, source=str(path))


def config_to_dict(cfg: ExperimentConfig) -> dict:
    """Plain nested dict (tuples as lists), the form written to config.yaml."""
    return cfg.model_dump(mode="json")


def dump_config(cfg: ExperimentConfig) -> str:
    return yaml.safe_dump(config_to_dict(cfg), sort_keys=False)
