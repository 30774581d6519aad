"""A sweep on a multi-node Ray cluster: what must hold before any trial starts.

- ``require_shared_tracking``: the nodes of a cluster cannot share a SQLite file or a local folder,
  so a multi-node (or autoscaling) cluster needs an MLflow tracking server (``dinolab server``).
- ``check_shared_storage``: every node must see the storage root the driver sees (checkpoints, claim
  locks, Ray results live there). The driver writes a nonce file; a 0-CPU Ray task pinned to each
  node (``NodeAffinitySchedulingStrategy``, not soft) reads it back and writes its own nonce file,
  which the driver then reads. A node-local disk or another mount at the same path fails one side.
- ``check_cluster_resources`` / ``wait_for_resources``: one trial's request against the nodes there
  now, against the largest node an autoscaling cluster can add (declared by the user, since Ray does
  not say), or against the nodes that join while the driver waits.
- ``write_launch_marker`` / ``verify_launch_marker``: nodes that join after the check (autoscaling)
  are checked by each trial before it writes anything.

Ray is imported inside functions.
"""

from __future__ import annotations

import logging
import math
import shutil
import time
import uuid
from pathlib import Path
from typing import Callable, Iterable, Optional

from dinolab.config import ConfigError
from dinolab.home import redact_uri

log = logging.getLogger(__name__)

CHECK_DIR = ".dinolab_check"  # under the storage root
HEAD_RESOURCE = "node:__internal_head__"
DOCS = "docs/team_scale.md"


class StorageNotShared(RuntimeError):
    """A trial landed on a node that does not see the launch's storage root."""


# ----------------------------------------------------------------------------- nodes


def alive_nodes(nodes: Iterable[dict]) -> list[dict]:
    """The alive entries of ``ray.nodes()``."""
    return [n for n in nodes if n.get("Alive", True)]


def node_label(node: dict) -> str:
    """``<node id> (<ip>[, head])`` for messages."""
    head = ", head" if HEAD_RESOURCE in node.get("Resources", {}) else ""
    return f"{node.get('NodeID', '?')} ({node.get('NodeManagerAddress', '?')}{head})"


def current_node() -> dict[str, str]:
    """This process's Ray node: ``{"id", "ip"}``, or ``{}`` outside Ray."""
    import ray

    if not ray.is_initialized():
        return {}
    from ray.util import get_node_ip_address

    return {"id": ray.get_runtime_context().get_node_id(), "ip": get_node_ip_address()}


# ----------------------------------------------------------------------------- tracking


def is_local_store(uri: str) -> bool:
    """A store only the machine holding the file can use (SQLite, a file store, a bare path)."""
    from urllib.parse import urlsplit

    return urlsplit(uri).scheme in ("", "sqlite", "file") and not uri.startswith("databricks")


def require_shared_tracking(uri: str, n_nodes: int, autoscaling: bool = False) -> None:
    """ConfigError (one line) for a local store when trials may run on more than one node."""
    if not is_local_store(uri) or (n_nodes <= 1 and not autoscaling):
        return
    where = f"the {n_nodes} nodes of this Ray cluster" if n_nodes > 1 else "the nodes an autoscaling cluster adds"
    raise ConfigError(
        f"tracking: {redact_uri(uri)} is a local store that trials on {where} cannot share; start a tracking server "
        f"(dinolab server --backend postgresql://user@db/mlflow --artifacts /shared/mlartifacts) and set "
        f"MLFLOW_TRACKING_URI=http://<server host>:5000 (see {DOCS})"
    )


# ----------------------------------------------------------------------------- storage


def _probe(folder: str, nonce: str, name: str) -> dict:
    """Runs on one node (a Ray task): read the driver's nonce file, write this node's own.

    Returns ``{"ok", "host", "token" | "detail"}``; never raises (a failure is a finding).
    """
    import socket

    path = Path(folder)
    out = {"host": socket.gethostname()}
    try:
        seen = (path / "driver").read_text()
    except OSError as e:
        return {**out, "ok": False, "detail": f"the driver's check file {path / 'driver'} is not there ({e.strerror or e})"}
    if seen != nonce:
        return {**out, "ok": False, "detail": f"the driver's check file {path / 'driver'} holds something else"}
    token = uuid.uuid4().hex
    try:
        (path / name).write_text(token)
    except OSError as e:
        return {**out, "ok": False, "detail": f"cannot write into {path} ({e.strerror or e})"}
    return {**out, "ok": True, "token": token}


def check_shared_storage(storage: Path, nodes: Optional[list[dict]] = None, timeout_s: float = 120.0) -> list[str]:
    """Every alive node sees ``storage`` as the driver does; returns the checked node ids.

    Raises ConfigError (one line) naming each node that does not, and why: the driver's nonce file is
    missing there (another folder or a local disk at that path), the node cannot write, the driver
    cannot read what the node wrote, or the node did not answer within ``timeout_s``.
    """
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    storage = Path(storage)
    nodes = alive_nodes(ray.nodes() if nodes is None else nodes)
    nonce = uuid.uuid4().hex
    folder = storage / CHECK_DIR / nonce
    folder.mkdir(parents=True)
    (folder / "driver").write_text(nonce)
    probe = ray.remote(num_cpus=0, max_retries=0)(_probe)
    problems: list[tuple[dict, str, str]] = []
    try:
        refs = {
            n["NodeID"]: probe.options(
                scheduling_strategy=NodeAffinitySchedulingStrategy(n["NodeID"], soft=False), name="dinolab-storage-check"
            ).remote(str(folder), nonce, n["NodeID"])
            for n in nodes
        }
        ready, _ = ray.wait(list(refs.values()), num_returns=len(refs), timeout=timeout_s)
        ready = set(ready)
        for n in nodes:
            ref = refs[n["NodeID"]]
            if ref not in ready:
                problems.append((n, "?", f"did not answer within {timeout_s:g} s"))
                continue
            try:
                res = ray.get(ref)
            except Exception as e:  # noqa: BLE001 - the node died or could not run the task
                last = (str(e).strip().splitlines() or [""])[-1]
                problems.append((n, "?", f"the check task failed ({type(e).__name__}: {last})"))
                continue
            if not res["ok"]:
                problems.append((n, res["host"], res["detail"]))
                continue
            try:
                back = (folder / n["NodeID"]).read_text()
            except OSError:
                back = None
            if back != res["token"]:
                problems.append((n, res["host"], f"the file it wrote into {folder} is not visible to the driver"))
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    if problems:
        found = "; ".join(f"node {node_label(n)} on host {host}: {detail}" for n, host, detail in problems)
        raise ConfigError(
            f"storage: {len(problems)} of {len(nodes)} node(s) do not see the storage root {storage} that the driver sees - "
            f"{found}; mount one shared folder (NFS, Lustre, ...) at this path on every node or pass --storage <a folder "
            f"every node sees> (see {DOCS})"
        )
    log.info("storage: all %d node(s) see %s", len(nodes), storage)
    return [n["NodeID"] for n in nodes]


def write_launch_marker(storage: Path) -> tuple[str, str]:
    """A nonce file for this launch under the storage root: (absolute path, nonce)."""
    nonce = uuid.uuid4().hex
    path = Path(storage) / CHECK_DIR / f"launch-{nonce}"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(nonce)
    return str(path), nonce


def verify_launch_marker(path: str, nonce: str, storage: str) -> None:
    """Raise StorageNotShared when this node does not see the launch's marker (a node added later)."""
    try:
        ok = Path(path).read_text() == nonce
    except OSError:
        ok = False
    if not ok:
        node = current_node()
        where = f"node {node.get('id', '?')} ({node.get('ip', '?')})" if node else "this machine"
        raise StorageNotShared(
            f"storage: {where} does not see the storage root {storage} of this launch (no {path}); "
            f"mount the shared folder at this path on every node (see {DOCS})"
        )


def remove_launch_marker(path: Optional[str]) -> None:
    if path:
        Path(path).unlink(missing_ok=True)


# ----------------------------------------------------------------------------- resources


def autoscaling(max_node_cpus: Optional[float] = None, max_node_gpus: Optional[float] = None) -> bool:
    """The user declared the largest node the cluster can add."""
    return max_node_cpus is not None or max_node_gpus is not None


def check_cluster_resources(requests: Iterable[tuple[int, float, float]], nodes: list[dict],
                            max_node_cpus: Optional[float] = None, max_node_gpus: Optional[float] = None) -> None:
    """``launcher.check_resources`` on the nodes there now; on an autoscaling cluster, the declared node too.

    requests: (workers, cpus_per_worker, gpus_per_worker) per trial. With a declared largest node
    (``max_node_cpus``: not given = not limiting; ``max_node_gpus``: not given = 0), a worker must fit
    an alive node or that node; the number of workers is not bounded (the autoscaler adds nodes).
    """
    from .launcher import _fmt_res, check_resources

    requests = list(requests)
    try:
        check_resources(requests, nodes)
        return
    except ConfigError:
        if not autoscaling(max_node_cpus, max_node_gpus):
            raise
    cap_cpu = math.inf if max_node_cpus is None else float(max_node_cpus)
    cap_gpu = float(max_node_gpus or 0.0)
    alive = [n.get("Resources", {}) for n in alive_nodes(nodes)]
    declared = f"--max-node-cpus {'any' if max_node_cpus is None else f'{max_node_cpus:g}'}, --max-node-gpus {cap_gpu:g}"
    for _workers, cpu, gpu in sorted(set(requests)):
        now = any(r.get("CPU", 0.0) >= cpu and r.get("GPU", 0.0) >= gpu for r in alive)
        if not now and (cpu > cap_cpu or gpu > cap_gpu):
            raise ConfigError(
                f"resources: one worker asks for {_fmt_res(cpu, gpu)} but no node of the cluster has that much and neither "
                f"has the largest node it can add ({declared}); lower --cpus-per-worker / --gpus-per-worker or declare the "
                f"autoscaler's largest node type"
            )
    log.info("resources: not all there yet; an autoscaling cluster adds nodes of up to %s", declared)


def wait_for_resources(check: Callable[[], None], timeout_s: float, poll_s: float = 2.0) -> float:
    """Call ``check`` until it stops raising ConfigError; returns the seconds waited.

    timeout_s <= 0: one call (the error goes up at once). After ``timeout_s`` the last error is
    raised with the time waited.
    """
    start = time.monotonic()
    try:
        check()
        return 0.0
    except ConfigError as e:
        if timeout_s <= 0:
            raise
        log.warning("%s; waiting up to %g s for nodes to join (--wait-for-resources)", e, timeout_s)
    while True:
        time.sleep(max(0.0, min(poll_s, timeout_s - (time.monotonic() - start))))
        try:
            check()
        except ConfigError as e:
            if time.monotonic() - start >= timeout_s:
                raise ConfigError(f"{e} (still so after waiting {timeout_s:g} s, --wait-for-resources)") from None
            continue
        waited = time.monotonic() - start
        log.info("resources: a trial fits the cluster after waiting %.0f s", waited)
        return waited
