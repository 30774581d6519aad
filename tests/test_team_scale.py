"""Team scale with the real parts: a PostgreSQL-backed ``dinolab server`` and a Ray cluster of several
nodes on this machine (``ray.cluster_utils.Cluster``, as Ray's own tests do, plus one ``ray start``
node inside its own mount namespace).

Module fixtures, started once: PostgreSQL (Debian's, run as the ``postgres`` user in a temporary
folder on a loopback port, password authentication: the password reaches the server only through
PGPASSWORD), ``dinolab server`` on it with proxied artifacts (a SQLite backend when PostgreSQL cannot
run here, so that the cluster tests still run; the PostgreSQL test then skips), and a
token-authenticated Ray cluster (head + one worker node, 2 logical CPUs each) with its own RAY_TMPDIR. Clients use the tracking URI
``http://dinolab:<secret>@127.0.0.1:<port>``: the secret must never show up in a tag, a param, an
artifact or a printed line. Sweeps run in this process (``dinolab.cli.main``) as a driver joined to
the cluster by address.
"""

from __future__ import annotations

import logging
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import pytest

from dinolab.cli import main
from dinolab.home import redact_uri

from process_helpers import free_port, stop_group, wait_for
from test_sweep_ray import assert_each_trial_finished_once, steps, trial_ids, write_grid  # noqa: F401 (a fixture)

pytestmark = pytest.mark.slow

SECRET = "s3cret-" + uuid.uuid4().hex[:8]
# Over the tiny experiment and test_sweep_ray.FAST (its write_grid): smaller crops and images.
SMALL = {"train.steps_per_epoch": 2, "crops.global_size": 16, "crops.local_size": 8, "data.synthetic_size": 16,
         "train.keep_checkpoints": 20}
EPOCH_METRICS = ("loss", "teacher_entropy", "kl", "lr", "weight_decay", "momentum", "teacher_temp", "images_per_s")
FINAL_METRICS = ("knn_top1", "linear_top1", "knn_top1_random_init", "throughput_images_per_s", "wall_time_s", "peak_rss_mb",
                 "cpu_hours", "gpu_hours", "epochs_done")


def group_cmdlines(pgid: int) -> list[str]:
    """Command lines of the live processes of a process group (the server and its workers)."""
    out = []
    for proc in Path("/proc").iterdir():
        try:
            if proc.name.isdigit() and os.getpgid(int(proc.name)) == pgid:
                out.append((proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace"))
        except (OSError, ProcessLookupError):
            continue
    assert out, f"no process in group {pgid}"
    return out


def initdb_path() -> Optional[str]:
    found = shutil.which("initdb")
    if found:
        return found
    candidates = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"))
    return str(candidates[-1]) if candidates else None


# ----------------------------------------------------------------------------- PostgreSQL + dinolab server


@dataclass
class Postgres:
    uri: str  # no password: it comes from PGPASSWORD
    password: str
    port: int
    folder: Path

    def connect(self):
        import psycopg2

        return psycopg2.connect(host="127.0.0.1", port=self.port, user="dinolab", password=self.password, dbname="mlflow")


def postgres_missing() -> Optional[str]:
    """Why the PostgreSQL test cannot run here, or None."""
    if initdb_path() is None:
        return ("PostgreSQL is not installed (initdb not found on PATH or in /usr/lib/postgresql); "
                "bash scripts/system_deps.sh installs it")
    try:
        import psycopg2  # noqa: F401
    except ImportError:
        return "the PostgreSQL driver is not installed: pip install 'dinolab[postgres]' (psycopg2-binary)"
    return None


@pytest.fixture(scope="module")
def postgres():
    """Debian's PostgreSQL in a temporary folder on a loopback port, or None when it cannot run here."""
    if postgres_missing():
        yield None
        return
    import psycopg2

    initdb = initdb_path()
    as_postgres = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []  # initdb refuses root
    folder = Path(tempfile.mkdtemp(prefix="dlpg", dir="/tmp"))
    pg_ctl = str(Path(initdb).with_name("pg_ctl"))
    started = False
    try:
        password = uuid.uuid4().hex
        (folder / "pw").write_text(password + "\n")
        if as_postgres:
            shutil.chown(folder, "postgres", "postgres")
            shutil.chown(folder / "pw", "postgres", "postgres")
        folder.chmod(0o700)
        port = free_port()
        subprocess.run([*as_postgres, initdb, "-D", str(folder / "data"), "-U", "dinolab", "--pwfile", str(folder / "pw"),
                        "--auth-local=scram-sha-256", "--auth-host=scram-sha-256", "-E", "UTF8", "--no-sync"],
                       check=True, capture_output=True)
        (folder / "pw").unlink()
        options = f"-c listen_addresses=127.0.0.1 -p {port} -k {folder} -c fsync=off -c max_connections=100"
        subprocess.run([*as_postgres, pg_ctl, "-D", str(folder / "data"), "-l", str(folder / "pg.log"), "-w", "-t", "60",
                        "-o", options, "start"], check=True, capture_output=True)
        started = True
        admin = psycopg2.connect(host="127.0.0.1", port=port, user="dinolab", password=password, dbname="postgres")
        admin.autocommit = True
        admin.cursor().execute("CREATE DATABASE mlflow")
        admin.close()
        yield Postgres(f"postgresql://dinolab@127.0.0.1:{port}/mlflow", password, port, folder)
    finally:
        if started:
            subprocess.run([*as_postgres, pg_ctl, "-D", str(folder / "data"), "-m", "immediate", "stop"], capture_output=True)
        shutil.rmtree(folder, ignore_errors=True)


@dataclass
class Server:
    uri: str  # what clients use: carries a user and a secret password (MLflow's server does not check it)
    port: int
    artifacts: Path
    postgres: Optional[Postgres]
    proc: subprocess.Popen
    log: Path

    def healthy(self) -> bool:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/health", timeout=2) as r:
                return r.status == 200
        except OSError:
            return False


@pytest.fixture(scope="module")
def server_started(postgres, tmp_path_factory):
    """``dinolab server`` on PostgreSQL (SQLite when initdb is missing), artifacts proxied into a folder;
    started, not yet answering (it starts while the Ray cluster does)."""
    folder = tmp_path_factory.mktemp("server")
    port = free_port()
    backend = postgres.uri if postgres else f"sqlite:///{folder / 'mlflow.db'}"
    env = {**os.environ, "DINOLAB_HOME": str(folder / "home")}
    env.pop("MLFLOW_TRACKING_URI", None)
    if postgres:
        env["PGPASSWORD"] = postgres.password  # credentials from the environment, never the URI
    log = folder / "server.log"
    proc = subprocess.Popen(
        [sys.executable, "-m", "dinolab", "server", "--backend", backend, "--artifacts", str(folder / "mlartifacts"),
         "--port", str(port), "--workers", "1"],
        stdout=log.open("w"), stderr=subprocess.STDOUT, env=env, start_new_session=True,
    )
    try:
        yield Server(f"http://dinolab:{SECRET}@127.0.0.1:{port}", port, folder / "mlartifacts", postgres, proc, log)
    finally:
        stop_group(proc)


@pytest.fixture(scope="module")
def server(server_started, cluster):
    """The tracking server, answering."""
    wait_for(server_started.healthy, 240, "the tracking server", proc=server_started.proc, log=server_started.log)
    return server_started


# ----------------------------------------------------------------------------- the Ray cluster


@pytest.fixture(scope="module")
def cluster():
    """Head + one worker node (2 logical CPUs each), token authentication, a private RAY_TMPDIR."""
    import ray
    from ray.cluster_utils import Cluster

    if ray.is_initialized():  # another module's local Ray: this module's driver joins the cluster instead
        ray.shutdown()
    tmp = tempfile.mkdtemp(prefix="dlray", dir="/tmp")  # short: Unix socket paths live under it
    saved = {k: os.environ.get(k) for k in ("RAY_TMPDIR", "RAY_AUTH_MODE")}
    os.environ["RAY_TMPDIR"] = tmp
    os.environ["RAY_AUTH_MODE"] = "token"  # as on a team cluster: every node and driver needs the token
    c = None
    try:
        if not (os.environ.get("RAY_AUTH_TOKEN") or os.environ.get("RAY_AUTH_TOKEN_PATH")
                or (Path.home() / ".ray" / "auth_token").exists()):
            subprocess.run([str(Path(sys.executable).with_name("ray")), "get-auth-token", "--generate"], check=True,
                           capture_output=True)
        # This process may have read Ray's settings already (another module's ray.init): re-read them, as
        # Ray's own ray.init() does when it turns token authentication on.
        from ray._raylet import AuthenticationTokenLoader, Config

        Config.initialize("")
        AuthenticationTokenLoader.instance().reset_cache()
        c = Cluster(initialize_head=True, head_node_args={"num_cpus": 2, "include_dashboard": False})
        c.add_node(num_cpus=2)
        ray.init(address=c.address, logging_level=logging.WARNING)
        yield c
    finally:
        ray.shutdown()
        if c is not None:
            for node in list(c.worker_nodes):
                c.remove_node(node, allow_graceful=False)
            if c.head_node is not None:
                c.remove_node(c.head_node, allow_graceful=False)
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        shutil.rmtree(tmp, ignore_errors=True)


def alive() -> dict[str, dict]:
    import ray

    return {n["NodeID"]: n for n in ray.nodes() if n["Alive"]}


def ensure_worker(c, cpus: int = 2):
    """A live worker node of ``cpus`` CPUs (added when an earlier test removed it)."""
    for node in c.worker_nodes:
        if node.node_id in alive() and alive()[node.node_id]["Resources"].get("CPU") == cpus:
            return node
    node = c.add_node(num_cpus=cpus)
    wait_for(lambda: node.node_id in alive(), 60, "the new worker node")
    return node


def sweep(grid: Path, storage: Path, c, *extra: str) -> int:
    return main(["sweep", str(grid), "--storage", str(storage), "--address", c.address, "-q", *extra])


def trial_runs(uri: str, ids) -> dict[str, list]:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(uri)
    exp = client.get_experiment_by_name("dinolab")
    found: dict[str, list] = {tid: [] for tid in ids}
    for r in client.search_runs([exp.experiment_id], max_results=1000) if exp else []:
        if r.data.tags.get("dinolab.trial_id") in found:
            found[r.data.tags["dinolab.trial_id"]].append(r)
    return found


def assert_no_secret(client, run, tmp: Path) -> None:
    values = [*run.data.tags.values(), *run.data.params.values()]
    assert not [v for v in values if SECRET in v]
    folder = tmp / run.info.run_id
    folder.mkdir(parents=True)
    assert SECRET not in Path(client.download_artifacts(run.info.run_id, "config.yaml", str(folder))).read_text()


# ----------------------------------------------------------------------------- tests


def test_four_trials_on_two_nodes_log_everything_through_the_postgres_server(postgres, server, cluster, tmp_path,
                                                                              monkeypatch, capsys, store, write_grid):
    if postgres is None:
        pytest.skip(postgres_missing())
    from mlflow.entities import Metric, Param
    from mlflow.tracking import MlflowClient

    from dinolab.config.grid import load_grid
    from dinolab.report.render import body
    from dinolab.report.runs import load_runs
    from dinolab.report.table import report_table

    nodes = alive()
    assert len(nodes) >= 2
    storage = tmp_path / "storage"
    grid = write_grid(tmp_path, "team", {"ema": {"dino.momentum": 0.99}, "fast": {"dino.momentum": 0.9}}, seeds=(0, 1),
                      set=SMALL)
    ids = trial_ids(grid)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", server.uri)
    assert sweep(grid, storage, cluster) == 0
    out = capsys.readouterr()
    assert SECRET not in out.out + out.err and redact_uri(server.uri) in out.err

    # the server listens on loopback only, and no process of it shows the backend or its password
    outside = next(iter(nodes.values()))["NodeManagerAddress"]  # this machine's address on its network
    if not outside.startswith("127."):
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection((outside, server.port), timeout=5).close()
    for cmdline in group_cmdlines(server.proc.pid):
        assert "postgresql" not in cmdline and server.postgres.password not in cmdline, cmdline

    client = MlflowClient(server.uri)
    trials = trial_runs(server.uri, ids)
    assert_each_trial_finished_once(trials, ids)
    runs = [trials[tid][0] for tid in ids]
    # trials ran on both nodes, each run names its node
    assert {r.data.tags["dinolab.node"] for r in runs} == set(nodes)
    assert all(r.data.tags["dinolab.node_ip"] == nodes[r.data.tags["dinolab.node"]]["NodeManagerAddress"] for r in runs)
    # nothing lost: every epoch of every per-epoch metric, the evaluations, the summaries, read from the
    # database with SQL (not through MLflow), and the same keys through the server's API
    db = server.postgres.connect()
    cur = db.cursor()
    cur.execute("SELECT run_uuid, key, value, timestamp, step FROM metrics WHERE run_uuid = ANY(%s)",
                ([r.info.run_id for r in runs],))
    stored: dict[str, dict[str, list]] = {}
    for rid, key, value, stamp, step in cur.fetchall():
        stored.setdefault(rid, {}).setdefault(key, []).append(Metric(key, value, stamp, step))
    db.close()
    summaries = tuple(f"{agg}/{k}" for k in EPOCH_METRICS for agg in ("final", "best", "last3"))
    for run in runs:
        history = {k: sorted(m.step for m in points) for k, points in stored[run.info.run_id].items()}
        assert all(history[k] == [0, 1] for k in EPOCH_METRICS), history
        assert 1 in history["knn_top1"]  # the last epoch's evaluation (the final summary adds step 2)
        assert set(FINAL_METRICS + summaries) <= set(history) and set(history) == set(run.data.metrics)
        assert run.data.tags["runtime.tracking.uri"] == redact_uri(server.uri) and "***" in redact_uri(server.uri)
        assert_no_secret(client, run, tmp_path / "artifacts")
        assert {"config.yaml", "environment.txt", "weights"} <= {a.path for a in client.list_artifacts(run.info.run_id)}
    assert steps(client, runs[0], "loss") == [0, 1]  # histories read back through the server
    # artifacts went through the server into its folder, not onto the nodes
    assert list(server.artifacts.rglob("teacher_backbone.pt"))
    # checkpoints and Ray results under the storage root given once, none in Ray's temporary folders
    for tid in ids:
        assert sorted(p.name for p in (storage / "trials" / tid / "checkpoints").glob("epoch_*.pt"))
    (experiment,) = [p for p in (storage / "ray_results").iterdir() if p.name.startswith("team-")]
    assert {p.name for p in experiment.iterdir() if p.is_dir()} >= set(ids)
    assert not list(Path(os.environ["RAY_TMPDIR"]).rglob("epoch_*.pt"))

    # the report reads the same table over HTTP (search) as from a SQLite copy of the runs (SQL)
    mirror = MlflowClient(store)
    exp = mirror.create_experiment("dinolab")
    for run in runs:
        rid = run.info.run_id
        copy = mirror.create_run(exp, start_time=run.info.start_time, tags=run.data.tags, run_name=run.info.run_name)
        points = [m for ms in stored[rid].values() for m in ms]
        params = [Param(k, v) for k, v in run.data.params.items()]
        for i in range(0, max(len(points), len(params)), 100):
            mirror.log_batch(copy.info.run_id, metrics=points[i:i + 100], params=params[i:i + 100])
        mirror.set_terminated(copy.info.run_id, run.info.status, end_time=run.info.end_time)
    http_table, sqlite_table = report_table(grid, server.uri), report_table(grid, store)
    assert body(http_table) == body(sqlite_table)
    knn = {t.trial_id: t for t in load_grid(grid).trials}
    expected = sorted(r.data.metrics["knn_top1"] for r in runs if knn[r.data.tags["dinolab.trial_id"]].row == "ema")
    cell = http_table.cell("ema", "k-NN")
    assert cell.stat.n == 2 and sorted(cell.per_seed.values()) == pytest.approx(expected)
    frames = [load_runs(uri, ids).set_index("tags.dinolab.trial_id").sort_index() for uri in (server.uri, store)]
    columns = sorted(c for c in frames[0].columns if c.startswith(("metrics.", "params.", "tags.")))
    assert columns == sorted(c for c in frames[1].columns if c.startswith(("metrics.", "params.", "tags.")))
    assert frames[0][columns].astype(str).equals(frames[1][columns].astype(str))


def test_preflight_refuses_sqlite_and_names_the_node_that_sees_another_folder(server, cluster, tmp_path, monkeypatch,
                                                                                capsys, write_grid):
    ensure_worker(cluster)
    storage = tmp_path / "storage"
    grid = write_grid(tmp_path, "pre", {"a": {"dino.momentum": 0.97}}, set=SMALL)  # a trial of its own
    # a SQLite store on a cluster of several nodes: one line pointing to dinolab server, nothing created
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert sweep(grid, storage, cluster) == 2
    lines = capsys.readouterr().err.splitlines()
    err = [line for line in lines if line.startswith("dinolab: error")]
    assert len(err) == 1 and "sqlite" in err[0] and "dinolab server" in err[0], lines
    assert not (Path(os.environ["DINOLAB_HOME"]) / "mlflow.db").exists()

    if os.geteuid() != 0 or shutil.which("unshare") is None:
        pytest.skip("a node with its own view of the storage root needs unshare -m (util-linux) and root")
    before = set(alive())
    storage.mkdir(parents=True, exist_ok=True)
    log = tmp_path / "node.log"
    ray_cli = Path(sys.executable).with_name("ray")
    script = (f"mount -t tmpfs -o size=16m dinolab-test {storage} && "
              f"exec {ray_cli} start --address={cluster.address} --num-cpus=1 --block --disable-usage-stats")
    node = subprocess.Popen(["unshare", "-m", "--propagation", "private", "sh", "-c", script], stdout=log.open("w"),
                            stderr=subprocess.STDOUT, start_new_session=True)
    try:
        wait_for(lambda: len(set(alive()) - before) == 1, 120, "the node in its own mount namespace", proc=node, log=log)
        (odd,) = set(alive()) - before
        monkeypatch.setenv("MLFLOW_TRACKING_URI", server.uri)
        assert sweep(grid, storage, cluster) == 2
        err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("dinolab: error")]
        assert len(err) == 1, err
        assert err[0].startswith(f"dinolab: error: storage: 1 of {len(before) + 1} node(s) do not see the storage root")
        assert odd in err[0] and not [n for n in before if n in err[0]]
        assert "is not there" in err[0]
        assert not any(trial_runs(server.uri, trial_ids(grid)).values())  # refused before anything ran
        assert not list((storage / ".dinolab_check").glob("*/driver"))  # the check cleans up after itself
    finally:
        stop_group(node)
    wait_for(lambda: odd not in alive(), 60, "the node to leave")


def test_worker_node_stopped_mid_trial_is_retried_on_the_head_in_the_same_run(server, cluster, tmp_path, monkeypatch,
                                                                                write_grid):
    import ray
    from mlflow.tracking import MlflowClient
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    worker = ensure_worker(cluster)
    head = cluster.head_node.node_id
    epochs = 8
    storage = tmp_path / "storage"
    grid = write_grid(tmp_path, "survivor", {"a": {"dino.momentum": 0.96}}, set={**SMALL, "train.epochs": epochs})
    (tid,) = trial_ids(grid)

    @ray.remote(num_cpus=2)
    class Hold:
        def ping(self) -> int:
            return 1

    # the head is full at first, so the (unpinned) trial starts on the worker node
    hold = Hold.options(scheduling_strategy=NodeAffinitySchedulingStrategy(head, soft=False)).remote()
    assert ray.get(hold.ping.remote(), timeout=120) == 1
    killed: dict = {}

    def stop_the_worker_mid_trial():
        ckpts = storage / "trials" / tid / "checkpoints"
        deadline = time.time() + 300
        while time.time() < deadline and not list(ckpts.glob("epoch_*.pt")):
            time.sleep(0.1)
        killed["epochs_on_disk"] = len(list(ckpts.glob("epoch_*.pt")))
        cluster.remove_node(worker, allow_graceful=False)  # the node dies with everything on it
        ray.kill(hold)  # room on the head for the retry

    monkeypatch.setenv("MLFLOW_TRACKING_URI", server.uri)
    killer = threading.Thread(target=stop_the_worker_mid_trial, daemon=True)
    killer.start()
    assert sweep(grid, storage, cluster, "--max-failures", "2") == 0
    killer.join(timeout=60)
    assert 1 <= killed["epochs_on_disk"] < epochs  # stopped mid-way
    # the GCS marks a node dead only after its health checks fail (seconds), which the retry on the head
    # may beat: CI once saw the sweep finish with the killed node still listed as alive
    wait_for(lambda: worker.node_id not in alive(), 60, "the GCS to mark the stopped worker node dead")

    client = MlflowClient(server.uri)
    (run,) = trial_runs(server.uri, [tid])[tid]  # one run, continued: not a second one
    assert run.info.status == "FINISHED" and run.data.tags["dinolab.attempts"] == "2"
    assert run.data.tags["dinolab.nodes"] == f"{worker.node_id},{head}" and run.data.tags["dinolab.node"] == head
    # resumed from its checkpoint (the random-init k-NN of a fresh start is logged once): every epoch is
    # there, and only the epoch the node died in (logged before its checkpoint was written) may appear twice
    logged = steps(client, run)
    assert sorted(set(logged)) == list(range(epochs)) and len(logged) <= epochs + 1
    assert len(steps(client, run, "knn_top1_random_init")) == 1
    assert_no_secret(client, run, tmp_path / "artifacts")


def test_wait_for_resources_until_a_node_joins(server, cluster, tmp_path, monkeypatch, capsys, write_grid):
    storage = tmp_path / "storage"
    grid = write_grid(tmp_path, "big", {"a": {"dino.momentum": 0.98}}, set=SMALL)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", server.uri)
    assert not [n for n in alive().values() if n["Resources"].get("CPU", 0) >= 3]
    assert sweep(grid, storage, cluster, "--cpus-per-worker", "3", "--wait-for-resources", "1") == 2
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("dinolab: error")]
    assert len(err) == 1 and "no node has that much" in err[0] and "after waiting 1 s" in err[0]

    waiting = threading.Event()

    class Seen(logging.Handler):
        def emit(self, record):
            if "waiting up to" in record.getMessage():
                waiting.set()

    joined: list[subprocess.Popen] = []

    def add_a_node_during_the_wait():  # as an administrator or an autoscaler would: `ray start` on a new node
        if waiting.wait(timeout=300):
            joined.append(subprocess.Popen(
                [str(Path(sys.executable).with_name("ray")), "start", f"--address={cluster.address}", "--num-cpus=3",
                 "--block", "--disable-usage-stats"],
                stdout=(tmp_path / "node.log").open("w"), stderr=subprocess.STDOUT, start_new_session=True))

    handler = Seen()
    logging.getLogger("dinolab.sweep.cluster").addHandler(handler)
    adder = threading.Thread(target=add_a_node_during_the_wait, daemon=True)
    adder.start()
    try:
        assert sweep(grid, storage, cluster, "--cpus-per-worker", "3", "--wait-for-resources", "300") == 0
        assert joined
        (run,) = trial_runs(server.uri, trial_ids(grid))[trial_ids(grid)[0]]
        assert run.info.status == "FINISHED"
        assert alive()[run.data.tags["dinolab.node"]]["Resources"]["CPU"] == 3  # the node that joined
    finally:
        logging.getLogger("dinolab.sweep.cluster").removeHandler(handler)
        waiting.set()
        adder.join(timeout=60)
        for proc in joined:
            stop_group(proc)
