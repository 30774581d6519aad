"""Pre-flight checks of a tracking store URI: one line (ConfigError) within seconds, before any client exists.

MLflow itself accepts a malformed URI until its first request, and retries an unresponsive server for
minutes; these checks refuse, in this order: an unknown scheme; a URI without its host or path; a SQLite
path that is a folder, not a database, or (for commands that write) cannot be created; a server (http,
https) or database host that does not answer within ``PROBE_TIMEOUT_S``.
"""

from __future__ import annotations

import os
import re
import socket
import ssl
import urllib.error
import urllib.request
from pathlib import Path
from urllib.parse import urlsplit

from dinolab.config import ConfigError
from dinolab.home import redact_uri

PROBE_TIMEOUT_S = 4.0  # connect, then read: a dead server is refused in under 10 s
SCHEMES = ("sqlite", "http", "https", "postgresql", "postgres", "mysql", "mssql", "file", "databricks")
DB_PORTS = {"postgresql": 5432, "postgres": 5432, "mysql": 3306, "mssql": 1433}
_SCHEME_RE = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*):")


def uri_source(flag: str | None = None, configured: str | None = None) -> str:
    """How to name where the URI came from: the flag, tracking.uri, $MLFLOW_TRACKING_URI or the home."""
    if flag:
        return "--tracking-uri"
    if configured:
        return "tracking.uri"
    if os.environ.get("MLFLOW_TRACKING_URI"):
        return "$MLFLOW_TRACKING_URI"
    from dinolab.home import home_label

    return f"the default store in {home_label()}"


def check_tracking(uri: str, source: str, *, write: bool = False, probe: bool = True) -> str:
    """``uri`` if a client can use it (see the module docstring), else a ConfigError naming ``source``.

    write: the command creates the store if it is missing (run, sweep), so its folder must be creatable.
    probe: also connect to a server or database host (off: only the form of the URI is checked).
    """
    shown = redact_uri(uri)
    if len(uri) > 2000:
        raise ConfigError(f"{source}: a {len(uri)}-character tracking URI; URIs are limited to 2000 characters")
    m = _SCHEME_RE.match(uri)
    if m is None or m.group(1).lower() == "file" or len(m.group(1)) == 1:  # a plain path (or C:\\...): a file store
        return uri
    scheme = m.group(1).lower()
    family = scheme.split("+", 1)[0]
    if family not in SCHEMES:
        raise ConfigError(f"{source}: {shown!r} has an unknown scheme {scheme!r}; expected sqlite:////abs/path.db, "
                          f"http(s)://host:port (an MLflow server) or postgresql://user@host/db")
    if family == "databricks":
        return uri
    if family == "sqlite":
        _check_sqlite(uri, shown, source, write)
        return uri
    try:
        parts = urlsplit(uri)
        port = parts.port
    except ValueError as e:
        raise ConfigError(f"{source}: {shown!r} is malformed ({e})") from None
    host = parts.hostname
    if family in ("http", "https"):
        if not host:
            raise ConfigError(f"{source}: {shown!r} names no host; expected {family}://host:port")
        if probe:
            _probe_http(uri, shown, source)
    elif host and probe:
        _probe_tcp(host, port or DB_PORTS[family], shown, source)
    return uri


def _check_sqlite(uri: str, shown: str, source: str, write: bool) -> None:
    if not uri.startswith("sqlite:///") or uri == "sqlite:///":
        raise ConfigError(f"{source}: {shown!r} is malformed; a SQLite store is sqlite:////absolute/path.db "
                          f"(or sqlite:///relative/path.db)")
    db = Path(uri[len("sqlite:///"):].split("?", 1)[0]).expanduser()
    if db.is_dir():
        raise ConfigError(f"{source}: {db} is a folder, not a SQLite database file")
    if db.is_file():
        try:
            with open(db, "rb") as f:
                head = f.read(16)
        except OSError as e:
            raise ConfigError(f"{source}: {db} cannot be read ({e.strerror})") from None
        if head and head != b"SQLite format 3\x00":
            raise ConfigError(f"{source}: {db} is not a SQLite database")
    elif write:
        from dinolab.home import writable_folder

        writable_folder(db.parent, f"{source} ({shown})")


def _probe_tcp(host: str, port: int, shown: str, source: str) -> None:
    try:
        with socket.create_connection((host, port), timeout=PROBE_TIMEOUT_S):
            return
    except OSError as e:
        why = "no answer" if isinstance(e, TimeoutError) else (e.strerror or type(e).__name__)
        raise ConfigError(f"{source}: {shown}: cannot connect to {host}:{port} ({why})") from None


def _probe_http(uri: str, shown: str, source: str) -> None:
    """Any HTTP answer will do (a proxy may refuse /health, a guarded server answer 401); no answer within the
    timeout is refused. The probe goes without the URI's user:password (urllib would take them for the host)."""
    parts = urlsplit(uri)
    bare = parts._replace(netloc=parts.netloc.rpartition("@")[2]).geturl()
    try:
        with urllib.request.urlopen(bare.rstrip("/") + "/health", timeout=PROBE_TIMEOUT_S):
            return
    except urllib.error.HTTPError:
        return  # it answered
    except (urllib.error.URLError, OSError, ValueError) as e:
        reason = getattr(e, "reason", e)
        if isinstance(reason, ssl.SSLError):
            return  # it answered the TLS handshake; certificates are MLflow's business (MLFLOW_TRACKING_INSECURE_TLS)
        why = "no answer within %gs" % PROBE_TIMEOUT_S if isinstance(reason, TimeoutError) or "timed out" in str(reason) \
            else str(getattr(reason, "strerror", None) or reason)
        raise ConfigError(f"{source}: the tracking server {shown} does not answer ({why[:200]})") from None
