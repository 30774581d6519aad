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


# Size limits of what a config may hold (documented in the README's bad-input paragraph). Real experiment
# and ablation files are a few KB with a few hundred values; these stop alias bombs and pasted blobs.
MAX_YAML_BYTES = 1 << 20  # one YAML file
MAX_VALUES = 100_000  # values after expanding aliases (a YAML alias bomb expands exponentially)
MAX_DEPTH = 50  # nesting of mappings / lists
MAX_STRING = 4096  # characters of one string value (PATH_MAX; a run name, a URI, a path)
MAX_KEY = 200  # characters of one mapping key
QUOTE_CHARS = 80  # characters of an input value an error message quotes


def clip(value: Any, limit: int = QUOTE_CHARS) -> str:
    """``repr(value)``, cut to ``limit`` characters: error messages never echo a pasted blob."""
    text = repr(value)
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text)} chars)"


def check_size(data: Any, where: str) -> None:
    """ConfigError (one line) for a value that refers to itself, nests deeper than MAX_DEPTH, expands
    (aliases counted each time they are used) to more than MAX_VALUES values, or holds a string longer
    than MAX_STRING. Walks at most MAX_VALUES values, so a bomb is refused in milliseconds."""
    count = 0
    stack = [(data, "", 0, ())]
    while stack:
        value, key, depth, path_ids = stack.pop()
        count += 1
        at = key or "(top level)"
        if count > MAX_VALUES:
            raise ConfigError(f"{where}: more than {MAX_VALUES} values once YAML aliases (*name) are expanded; "
                              f"an experiment or ablation file holds a few hundred")
        if depth > MAX_DEPTH:
            raise ConfigError(f"{where}: {at}: nested deeper than {MAX_DEPTH} levels")
        if isinstance(value, str) and len(value) > MAX_STRING:
            raise ConfigError(f"{where}: {at}: a {len(value)}-character value; strings are limited to {MAX_STRING}")
        if isinstance(value, (dict, list)):
            if id(value) in path_ids:
                raise ConfigError(f"{where}: {at}: refers to itself (a recursive YAML anchor); values must be finite")
            ids = path_ids + (id(value),)
            items = value.items() if isinstance(value, dict) else enumerate(value)
            for k, v in items:
                if isinstance(value, dict) and len(str(k)) > MAX_KEY:
                    raise ConfigError(f"{where}: {at}: a {len(str(k))}-character key; keys are limited to {MAX_KEY}")
                sub = f"{key}.{k}" if isinstance(value, dict) else f"{key}[{k}]"
                stack.append((v, sub.lstrip("."), depth + 1, ids))


# Fields holding filesystem paths: expanded (~, relative to the YAML that set them) and made absolute.
PATH_FIELDS = ("data.root",)


def read_yaml(path: str | os.PathLike) -> dict:
    """Parse one YAML mapping safely; a missing file, a syntax error or a Python tag is a ConfigError."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: file not found")
    size = path.stat().st_size
    if size > MAX_YAML_BYTES:
        raise ConfigError(f"{path}: {size} bytes; YAML files are limited to {MAX_YAML_BYTES} bytes")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.constructor.ConstructorError as e:
        tag = getattr(e, "problem", "") or str(e).splitlines()[0]
        raise ConfigError(f"{path}: YAML tags that build objects are not allowed ({tag.strip()}); use plain values") from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark is not None else ""
        raise ConfigError(f"{path}:{where} invalid YAML ({str(getattr(e, 'problem', e))[:200]})") from None
    except RecursionError:
        raise ConfigError(f"{path}: YAML nested too deeply") from None
    except (ValueError, OverflowError) as e:  # e.g. an integer of more than 4300 digits
        raise ConfigError(f"{path}: a value YAML cannot convert ({str(e)[:100]})") from None
    except (UnicodeDecodeError, OSError) as e:
        raise ConfigError(f"{path}: cannot read ({type(e).__name__})") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of sections (model:, train:, ...)")
    check_size(data, str(path))
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
        raise ConfigError(f"--set {clip(text)}: expected dotted.key=value, e.g. --set train.epochs=10")
    key, raw = text.split("=", 1)
    key = key.strip()
    if not key or len(key) > 200 or any(not part.isidentifier() for part in key.split(".")):
        raise ConfigError(f"--set {clip(text)}: the key must be dotted names, e.g. model.patch_size")
    if len(raw) > MAX_STRING:
        raise ConfigError(f"--set {key}: a {len(raw)}-character value; values are limited to {MAX_STRING}")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except (yaml.YAMLError, RecursionError):
        raise ConfigError(f"--set {key}: cannot parse value {clip(raw)}") from None
    check_size(value, f"--set {key}")
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
        return f"{source}: {key} = {clip(first.get('input'))} is not allowed; expected one of {expected}"
    msg = first["msg"]
    if msg.startswith("Value error, "):
        msg = msg[len("Value error, "):]
    return f"{source}: {key} = {clip(first.get('input'))}: {msg}"


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
