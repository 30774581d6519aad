"""Fault injection for tests, outside the experiment schema.

``$DINOLAB_FAULT_AT_STEP`` holds a JSON map {run name: global step}, e.g. ``{"tiny/faulty/seed0": 1}`` (a grid
trial's name is grid/row/seedN; a single run's is its config's ``name``). That run's loop raises ``InjectedFault``
at that step once per trial folder: a marker file there outlives the process, so the retry (Tune's, or a
resumed trial) gets through. The variable reaches Ray workers through the job's runtime environment: dinolab's
``connect_ray`` forwards it from the driver; a test that starts Ray itself passes ``runtime_env()`` to ``ray.init``.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Optional

ENV = "DINOLAB_FAULT_AT_STEP"
MARKER = "fault_injected"


class InjectedFault(RuntimeError):
    """Raised once per trial folder at the step ``$DINOLAB_FAULT_AT_STEP`` names for the run."""


def runtime_env(steps: Optional[dict[str, int]] = None) -> Optional[dict]:
    """Ray ``runtime_env`` carrying the hook: ``steps`` if given, else this process's variable (None when unset)."""
    value = json.dumps(steps) if steps is not None else os.environ.get(ENV)
    return {"env_vars": {ENV: value}} if value else None


def fault_step(name: str, workdir: Path) -> Optional[int]:
    """The global step at which run ``name`` (its trial folder ``workdir``) fails; None when not asked, or done there."""
    text = os.environ.get(ENV)
    if not text or (Path(workdir) / MARKER).exists():
        return None
    steps = json.loads(text)
    if not isinstance(steps, dict):
        raise ValueError(f"${ENV} must be a JSON map {{run name: step}}, got {text!r}")
    return None if steps.get(name) is None else int(steps[name])


def inject(workdir: Path, step: int) -> None:
    """Leave the marker in ``workdir`` and raise."""
    Path(workdir).mkdir(parents=True, exist_ok=True)
    (Path(workdir) / MARKER).touch()
    raise InjectedFault(f"${ENV}: injected fault at step {step}")
