"""``dinolab ui``: the MLflow UI over the dinolab store, bound to 127.0.0.1 unless told otherwise."""

from __future__ import annotations

import os
import subprocess
import sys
from typing import Optional

from dinolab.home import default_artifact_root, resolve_tracking_uri


def ui_command(host: str = "127.0.0.1", port: int = 5000, backend: Optional[str] = None) -> list[str]:
    uri = resolve_tracking_uri(backend)
    if uri.startswith(("http://", "https://")):
        raise SystemExit(f"dinolab ui: the store is a tracking server already ({uri}); open it in a browser")
    return [
        sys.executable, "-m", "mlflow", "server",
        "--backend-store-uri", uri,
        "--default-artifact-root", default_artifact_root().as_uri(),
        "--host", host, "--port", str(port), "--workers", "1",
    ]


def serve_ui(host: str = "127.0.0.1", port: int = 5000, backend: Optional[str] = None) -> int:
    cmd = ui_command(host, port, backend)
    print(f"dinolab: MLflow UI for {cmd[cmd.index('--backend-store-uri') + 1]} at http://{host}:{port}", file=sys.stderr)
    if host not in ("127.0.0.1", "localhost", "::1"):
        print("dinolab: warning: binding beyond loopback; the UI has no login (see README, 'Team scale')", file=sys.stderr)
    return subprocess.call(cmd, env=os.environ.copy())
