"""``dinolab ui`` and ``dinolab server``: MLflow's server over a dinolab store, on 127.0.0.1 unless told otherwise.

``dinolab ui``: the UI over the local (SQLite) store of one machine.
``dinolab server``: the team's tracking server: ``mlflow server`` with a database backend (PostgreSQL,
through the optional ``psycopg2`` driver: ``pip install 'dinolab[postgres]'``) and proxied artifacts
(``--artifacts-destination``: clients upload through the server, so the trial nodes need no access to
the artifact folder). Trials and sweeps point ``MLFLOW_TRACKING_URI`` at it.

Credentials never go on a command line: the backend URI is handed to MLflow through its environment
(``MLFLOW_BACKEND_STORE_URI``), so ``ps`` does not show it, and the database password belongs in
``PGPASSWORD`` or ``~/.pgpass`` (the URI without one). Every URI printed is redacted.
"""

from __future__ import annotations

import errno
import os
import subprocess
import sys
from pathlib import Path
from typing import Callable, Optional

from dinolab.home import default_artifact_root, default_tracking_uri, redact_uri, resolve_tracking_uri

LOOPBACK = ("127.0.0.1", "localhost", "::1")


def check_port(host: str, port: int) -> None:
    """ConfigError unless ``port`` is 1-65535 and free on ``host`` (a bind that listens nowhere, released
    at once; SO_REUSEADDR as servers set it, so only a listening process makes it fail)."""
    import socket

    from dinolab.config import ConfigError

    if not 1 <= port <= 65535:
        raise ConfigError(f"--port {port}: a TCP port is 1-65535")
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (OSError, UnicodeError) as e:
        raise ConfigError(f"--host {host[:100]!r}: not an address of this machine ({getattr(e, 'strerror', None) or e})") from None
    family, _, _, _, address = infos[0]
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(address)
        except OSError as e:
            if e.errno == errno.EADDRINUSE:
                raise ConfigError(f"--port {port}: already in use on {host} (another server?); pick a free port") from None
            raise ConfigError(f"--host {host} --port {port}: cannot bind ({e.strerror})") from None


def _check_backend(uri: str, flag: str, probe: bool = True) -> None:
    """A backend store MLflow can open: a known scheme, a SQLite file that is a database or can be created,
    a database host that answers (``probe``)."""
    from dinolab.track.check import check_tracking

    check_tracking(uri, flag, write=True, probe=probe)


def _backend_label(backend: Optional[str]) -> str:
    """Where the server's backend came from (the server does not read $MLFLOW_TRACKING_URI)."""
    from dinolab.home import home_label

    if backend:
        return "--backend"
    return "$MLFLOW_BACKEND_STORE_URI" if os.environ.get("MLFLOW_BACKEND_STORE_URI") else f"the default store in {home_label()}"


def ui_command(host: str = "127.0.0.1", port: int = 5000, backend: Optional[str] = None) -> list[str]:
    from dinolab.config import ConfigError

    uri = resolve_tracking_uri(backend)
    if uri.startswith(("http://", "https://")):
        raise ConfigError(f"{'--backend' if backend else 'the store'} {redact_uri(uri)} is a tracking server already; "
                          f"open it in a browser")
    _check_backend(uri, "--backend" if backend else _store_label())
    return [
        sys.executable, "-m", "mlflow", "server",
        "--backend-store-uri", uri,
        "--default-artifact-root", default_artifact_root().as_uri(),
        "--host", host, "--port", str(port), "--workers", "1",
    ]


def _store_label() -> str:
    from dinolab.track.check import uri_source

    return uri_source()


def serve_ui(host: str = "127.0.0.1", port: int = 5000, backend: Optional[str] = None,
             announce: Optional[Callable[[str], None]] = None) -> int:
    """Run the MLflow UI; ``announce(backend store URI)`` is called once the checks passed, before it starts."""
    check_port(host, port)
    cmd = ui_command(host, port, backend)
    artifacts = default_artifact_root()
    from dinolab.home import home_label, writable_folder

    writable_folder(artifacts, home_label())
    uri = cmd[cmd.index("--backend-store-uri") + 1]
    print(f"dinolab: MLflow UI for {redact_uri(uri)} at http://{host}:{port}", file=sys.stderr)
    if host not in LOOPBACK:
        print("dinolab: warning: binding beyond loopback; the UI has no login (see docs/team_scale.md)", file=sys.stderr)
    if announce is not None:
        announce(uri)
    return subprocess.call(cmd, env=os.environ.copy())


def _artifacts_destination(artifacts: Optional[str]) -> str:
    """An absolute local folder (created) or a remote URI (s3://, gs://, ...) kept as is."""
    from dinolab.home import home_label, writable_folder

    if artifacts and "://" in artifacts and not artifacts.startswith("file://"):
        return artifacts
    path = Path(artifacts[len("file://"):] if artifacts and artifacts.startswith("file://") else (artifacts or default_artifact_root()))
    path = writable_folder(path, "--artifacts" if artifacts else home_label())
    path.mkdir(parents=True, exist_ok=True)
    return str(path)


def _has(module: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(module) is not None


def _postgres_driver(uri: str) -> str:
    """``uri`` with the installed driver: SQLAlchemy 2.1 maps ``postgresql://`` to psycopg 3, while the
    ``postgres`` extra installs psycopg2, which ``postgresql+psycopg2://`` selects."""
    from dinolab.config import ConfigError

    if uri.startswith("postgresql://") and not _has("psycopg") and _has("psycopg2"):
        return "postgresql+psycopg2://" + uri[len("postgresql://"):]
    if uri.startswith("postgresql+psycopg2:") and not _has("psycopg2") or not (_has("psycopg") or _has("psycopg2")):
        raise ConfigError("--backend postgresql://... needs the PostgreSQL driver: pip install 'dinolab[postgres]' "
                          "(psycopg2-binary)")
    return uri


def server_command(
    backend: Optional[str] = None,
    artifacts: Optional[str] = None,
    host: str = "127.0.0.1",
    port: int = 5000,
    workers: Optional[int] = None,
    allowed_hosts: Optional[str] = None,
    cors_allowed_origins: Optional[str] = None,
    app_name: Optional[str] = None,
) -> tuple[list[str], dict[str, str]]:
    """(argv, environment) of ``mlflow server`` for the team: the backend travels in the environment.

    backend: a database URI (``postgresql://user@host:5432/db``; default ``$MLFLOW_BACKEND_STORE_URI``,
    else the dinolab home's SQLite store); artifacts: the folder or bucket the server stores
    artifacts in (default the dinolab home's ``mlartifacts``); app_name: e.g. ``basic-auth``.
    Raises ConfigError for a tracking server given as the backend or a missing PostgreSQL driver.
    """
    from dinolab.config import ConfigError

    uri = backend or os.environ.get("MLFLOW_BACKEND_STORE_URI") or default_tracking_uri()
    if uri.startswith(("http://", "https://")):
        raise ConfigError(f"--backend {redact_uri(uri)} is a tracking server; the backend is its database "
                          f"(postgresql://user@host/db or sqlite:////abs/path.db)")
    if uri.startswith("sqlite:///"):
        uri = resolve_tracking_uri(uri)  # absolute
    if uri.startswith("postgres:"):
        uri = "postgresql:" + uri[len("postgres:"):]  # SQLAlchemy knows only the long name
    if uri.startswith(("postgresql:", "postgresql+psycopg2:")):
        uri = _postgres_driver(uri)
    if workers is not None and workers < 1:
        raise ConfigError(f"--workers must be >= 1, got {workers}")
    if not 1 <= port <= 65535:
        raise ConfigError(f"--port {port}: a TCP port is 1-65535")
    _check_backend(uri, _backend_label(backend), probe=False)  # its form, before the artifact folder is made
    cmd = [
        sys.executable, "-m", "mlflow", "server",
        "--serve-artifacts", "--artifacts-destination", _artifacts_destination(artifacts),
        "--host", host, "--port", str(port),
    ]
    if workers is not None:
        cmd += ["--workers", str(workers)]
    if allowed_hosts:
        cmd += ["--allowed-hosts", allowed_hosts]
    if cors_allowed_origins:
        cmd += ["--cors-allowed-origins", cors_allowed_origins]
    if app_name:
        cmd += ["--app-name", app_name]
    env = {**os.environ, "MLFLOW_BACKEND_STORE_URI": uri}
    return cmd, env


def serve_server(backend: Optional[str] = None, artifacts: Optional[str] = None, host: str = "127.0.0.1", port: int = 5000,
                 workers: Optional[int] = None, allowed_hosts: Optional[str] = None,
                 cors_allowed_origins: Optional[str] = None, app_name: Optional[str] = None) -> int:
    """Become ``mlflow server`` (exec: signals reach it directly); returns only if it cannot start."""
    check_port(host, port)
    # The database host must answer before anything (the artifact folder) is made.
    _check_backend(backend or os.environ.get("MLFLOW_BACKEND_STORE_URI") or default_tracking_uri(), _backend_label(backend))
    cmd, env = server_command(backend, artifacts, host, port, workers, allowed_hosts, cors_allowed_origins, app_name)
    shown = redact_uri(env["MLFLOW_BACKEND_STORE_URI"])
    dest = cmd[cmd.index("--artifacts-destination") + 1]
    print(f"dinolab: tracking server for {shown} (artifacts in {dest}) at http://{host}:{port}", file=sys.stderr)
    print(f"dinolab: clients: export MLFLOW_TRACKING_URI=http://{'<this host>' if host in ('0.0.0.0', '::') else host}:{port}",
          file=sys.stderr)
    if shown != env["MLFLOW_BACKEND_STORE_URI"]:
        print("dinolab: warning: the backend URI carries a password; put it in PGPASSWORD or ~/.pgpass instead",
              file=sys.stderr)
    if host not in LOOPBACK:
        if not allowed_hosts:
            print("dinolab: warning: binding beyond loopback without --allowed-hosts; MLflow accepts only localhost and "
                  "private-network Host headers", file=sys.stderr)
        if app_name != "basic-auth":
            print("dinolab: warning: the server has no login; put it behind an authenticating reverse proxy or an SSH "
                  "tunnel, or use --app-name basic-auth (see docs/team_scale.md)", file=sys.stderr)
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(cmd[0], cmd, env)
    return 127  # not reached
