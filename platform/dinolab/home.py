"""Where dinolab keeps things: one home folder for the SQLite store, artifacts and checkpoints.

``$DINOLAB_HOME`` (default ``~/.dinolab``) holds:
  mlflow.db          the SQLite tracking store (``sqlite:////abs/path``: absolute, since Ray moves a trial's cwd)
  mlartifacts/       MLflow artifacts of that store
  trials/<trial id>/ each trial's checkpoints and final weights (the default storage root)
``$MLFLOW_TRACKING_URI`` overrides the store; ``--storage`` overrides where trials live.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Optional


def dinolab_home() -> Path:
    return Path(os.environ.get("DINOLAB_HOME", "~/.dinolab")).expanduser().resolve()


def default_tracking_uri() -> str:
    return f"sqlite:///{dinolab_home() / 'mlflow.db'}"


def default_artifact_root() -> Path:
    return dinolab_home() / "mlartifacts"


def resolve_tracking_uri(configured: Optional[str] = None) -> str:
    """The config's tracking.uri, else $MLFLOW_TRACKING_URI, else the home's SQLite store (absolute)."""
    uri = configured or os.environ.get("MLFLOW_TRACKING_URI") or default_tracking_uri()
    if uri.startswith("sqlite:///") and not uri.startswith("sqlite:////"):
        # A relative SQLite path would land inside Ray's per-trial working directory: make it absolute.
        uri = "sqlite:///" + str(Path(uri[len("sqlite:///"):]).expanduser().resolve())
    return uri


_SECRET_KEYS = ("password", "passwd", "pwd", "token", "secret", "api_key", "apikey")


def redact_uri(uri: Optional[str]) -> Optional[str]:
    """``uri`` with its password (``user:PASSWORD@host``, ``?password=...``) replaced by ``***``.

    For tags, logs and printed lines: a tracking or backend URI may carry credentials, which must
    never reach MLflow or a terminal (they belong in PGPASSWORD, ~/.pgpass or MLFLOW_TRACKING_PASSWORD).
    """
    if not uri or "://" not in uri:
        return uri
    from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

    parts = urlsplit(uri)
    netloc = parts.netloc
    if "@" in netloc:
        userinfo, host = netloc.rsplit("@", 1)
        if ":" in userinfo:
            netloc = f"{userinfo.split(':', 1)[0]}:***@{host}"
    query = parts.query
    if query:
        pairs = parse_qsl(query, keep_blank_values=True)
        if any(k.lower() in _SECRET_KEYS for k, _ in pairs):
            query = urlencode([(k, "***" if k.lower() in _SECRET_KEYS else v) for k, v in pairs], safe="*")
    if (netloc, query) == (parts.netloc, parts.query):
        return uri
    return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))


def default_storage() -> Path:
    return dinolab_home()


def home_label() -> str:
    """How to name the home in an error: the variable when it is set."""
    return f"$DINOLAB_HOME={os.environ['DINOLAB_HOME']}" if os.environ.get("DINOLAB_HOME") else "~/.dinolab"


def writable_folder(path: os.PathLike | str, what: str) -> Path:
    """``path`` (absolute) if it is, or can be created as, a folder this process may write into; else a
    one-line ConfigError naming ``what`` (a flag, a key, $DINOLAB_HOME). Creates nothing."""
    from dinolab.config import ConfigError

    path = Path(path).expanduser().resolve()
    probe = path
    while not probe.exists():
        if probe.is_symlink():
            raise ConfigError(f"{what}: {path} cannot be created: {probe} is a dangling symbolic link")
        probe = probe.parent
    if not probe.is_dir():
        raise ConfigError(f"{what}: {path} cannot be created: {probe} is a file, not a folder")
    if not os.access(probe, os.W_OK | os.X_OK):
        verb = "is not writable" if probe == path else f"cannot be created: {probe} is not writable"
        raise ConfigError(f"{what}: {path} {verb}")
    return path


def trial_dir(storage: Path, trial_id: str) -> Path:
    return Path(storage).expanduser().resolve() / "trials" / trial_id
