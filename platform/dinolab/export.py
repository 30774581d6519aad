"""``dinolab export RUN``: the trained teacher backbone of a finished run, as a state_dict file.

Load it with ``dinolab.models.registry.build_backbone(cfg.model, cfg.crops.global_size, 0.0)``
and ``load_state_dict``, using the run's ``config.yaml`` artifact for ``cfg``.
"""

from __future__ import annotations


import shutil
import tempfile
from pathlib import Path
from typing import Optional

from dinolab.config import ConfigError
from dinolab.home import redact_uri, resolve_tracking_uri


def export_weights(run_id: str, out: Path, tracking_uri: Optional[str] = None) -> Path:
    from dinolab.track.mlflow_store import client_for

    client = client_for(resolve_tracking_uri(tracking_uri))
    try:
        client.get_run(run_id)
    except Exception:
        raise ConfigError(f"run {run_id}: no such run in {redact_uri(client.tracking_uri)}") from None
    with tempfile.TemporaryDirectory() as tmp:
        try:
            local = client.download_artifacts(run_id, "weights/teacher_backbone.pt", tmp)
        except Exception:
            raise ConfigError(f"run {run_id}: has no weights/teacher_backbone.pt artifact (not finished?)") from None
        out = Path(out).expanduser().resolve()
        out.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(local, out)
        cfg_local = client.download_artifacts(run_id, "config.yaml", tmp)
        shutil.copy(cfg_local, out.with_suffix(".config.yaml"))
    return out
