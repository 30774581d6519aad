"""Typed schema, YAML loading with bases and overrides, identity of a config."""

from .identity import (
    ID_SCHEME, METHOD_VERSION, config_hash, flatten, identity_dict, resolved_identity, resolved_params, runtime_dict, trial_id,
)
from .loader import ConfigError, apply_overrides, build_config, config_to_dict, dump_config, load_experiment, load_layers
from .schema import ExperimentConfig

__all__ = [
    "ConfigError", "ExperimentConfig", "ID_SCHEME", "METHOD_VERSION", "apply_overrides", "build_config", "config_hash",
    "config_to_dict", "dump_config", "flatten", "identity_dict", "load_experiment", "load_layers", "resolved_identity", "resolved_params", "runtime_dict", "trial_id",
]

from .grid import dry_run_table, expand_grid, load_grid  # noqa: E402
from .paper_tables import load_paper_tables  # noqa: E402

__all__ += ["dry_run_table", "expand_grid", "load_grid", "load_paper_tables"]
