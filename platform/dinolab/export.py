"""``dinolab export RUN``: the trained teacher backbone of a finished run, as a state_dict file.

Load it with ``dinolab.models.registry.build_backbone(cfg.model, cfg.crops.global_size, 0.0)``
and ``load_state_dict``, using the run's ``config.yaml`` artifact for ``cfg``.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Optional

from dinolab.config import ConfigError
from dinolab.home import redact_uri, resolve_tracking_uri
from dinolab.track.contract import CONFIG_ARTIFACT, WEIGHTS_ARTIFACT


DEFAULT_NAME = "backbone.pt"


def output_path(out: os.PathLike | str) -> Path:
    """The weights file: ``out``, or ``out/backbone.pt`` when ``out`` is a folder (or ends in /);
    its folder must be creatable (ConfigError naming --out otherwise)."""
    from dinolab.home import writable_folder

    folder_given = Path(out).is_dir() or str(out).endswith(("/", os.sep))
    path = Path(out).expanduser().resolve() / DEFAULT_NAME if folder_given else Path(out).expanduser().resolve()
    writable_folder(path.parent, "--out")
    return path


def export_weights(run_id: str, out: Path, tracking_uri: Optional[str] = None) -> Path:
    """Write the run's teacher backbone to ``output_path(out)`` and its config.yaml beside it (.config.yaml)."""
    from dinolab.sweep.store import store_exists
    from dinolab.track.check import check_tracking, uri_source
    from dinolab.track.mlflow_store import client_for

    out = output_path(out)
    uri = check_tracking(resolve_tracking_uri(tracking_uri), uri_source(tracking_uri))
    if not store_exists(uri):  # opening it would create an empty store
        raise ConfigError(f"run {run_id[:100]}: no such run; there is no store at {redact_uri(uri)} yet")
    client = client_for(uri)
    try:
        client.get_run(run_id)
    except Exception:
        raise ConfigError(f"run {run_id[:100]}: no such run in {redact_uri(client.tracking_uri)}") from None
    with tempfile.TemporaryDirectory() as tmp:
        try:
            local = client.download_artifacts(run_id, WEIGHTS_ARTIFACT, tmp)
        except Exception:
            raise ConfigError(f"run {run_id}: has no {WEIGHTS_ARTIFACT} artifact (not finished?)") from None
        out.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(local, out)
        cfg_local = client.download_artifacts(run_id, CONFIG_ARTIFACT, tmp)
        shutil.copy(cfg_local, out.with_suffix(".config.yaml"))
    return out
