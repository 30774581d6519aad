"""Careless input, as a new user types it: refused in one line on stderr, nothing written, nothing hangs.

Every case runs one command (run, sweep, status, report, dashboard, export, backfill, ui, server) and asserts
its exit code, exactly one line on stderr naming the key, path or flag, no traceback, and that the store's
run count and the trials folder (and the dinolab home) are unchanged. Most cases call ``main(argv)`` in this
process; the ones that could hang or replace the process (a server that never answers, ui and server, which
start or become MLflow's server when a check misses) run as subprocesses with a generous time bound.
"""

from __future__ import annotations

import os
import socket
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from dinolab.cli import main

REPO = Path(__file__).resolve().parents[1]
EXPERIMENT = str(REPO / "tests" / "fixtures" / "tiny.yaml")  # the tests' own experiment (batch 16), not the tuned demo


# ------------------------------------------------------------------------------------------ the world a case sees


class World:
    """Paths a case may name: {exp} {grid} {file} (a regular file) {dir} {notdb} (a text file named .db)
    {store} (the tracking store, also $MLFLOW_TRACKING_URI) {closed} (a port nothing listens on) {silent} (the port
    of a server that accepts connections and never answers) {tmp}."""

    def __init__(self, tmp: Path, store: str) -> None:
        self.tmp, self.store = tmp, store
        self.file = tmp / "a_file"
        self.file.write_text("not a folder\n")
        self.dir = tmp / "a_dir"
        self.dir.mkdir()
        self.notdb = tmp / "notes.db"
        self.notdb.write_text("not a database\n")
        self.grid = self.write_grid("grid", rows=[{"name": "ema", "set": {"dino.momentum": 0.99}},
                                                  {"name": "fast", "set": {"dino.momentum": 0.9}}])
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.closed = s.getsockname()[1]
        self.silent_server, self.silent = _silent_server()

    def write_grid(self, name: str, **doc) -> Path:
        body = {"grid": name, "base": EXPERIMENT, "seeds": [0], "set": {"train.epochs": 1}, **doc}
        path = self.tmp / f"{name}.yaml"
        path.write_text(yaml.safe_dump(body, sort_keys=False))
        return path

    def text(self, name: str, text: str) -> Path:
        path = self.tmp / name
        path.write_text(text)
        return path

    def fill(self, text: str) -> str:
        return text.format(exp=EXPERIMENT, grid=self.grid, file=self.file, dir=self.dir, notdb=self.notdb, store=self.store,
                           closed=self.closed, silent=self.silent, tmp=self.tmp)

    def runs(self) -> int:
        db = Path(self.store[len("sqlite:///"):])
        with sqlite3.connect(db) as con:
            return con.execute("select count(*) from runs").fetchone()[0]

    def snapshot(self) -> tuple:
        home = Path(os.environ["DINOLAB_HOME"])
        files = sorted(str(p.relative_to(self.tmp)) for p in self.tmp.rglob("*")) if home.is_relative_to(self.tmp) else []
        return self.runs(), files, sorted(p.name for p in home.rglob("*")) if home.exists() else None


def _no_server(*args, **kwargs):
    raise AssertionError("a check missed: the command went on to start MLflow's server")


@pytest.fixture
def world(tmp_path, store, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", store)
    monkeypatch.chdir(tmp_path)
    import dinolab.serve

    monkeypatch.setattr(dinolab.serve.subprocess, "call", _no_server)  # ui and server cases here cannot hang or exec
    monkeypatch.setattr(dinolab.serve.os, "execve", _no_server)
    w = World(tmp_path, store)
    yield w
    w.silent_server.close()


# --------------------------------------------------------------------------------------- files the cases read


def alias_bomb(levels: int = 9) -> str:
    """9 levels of 9 aliases: 9^9 (387 million) values once expanded, a 1 KB file."""
    lines = ["a0: &a0 [" + ", ".join(["x" * 10] * 9) + "]"]
    lines += [f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 9) + "]" for i in range(1, levels)]
    return "\n".join(lines) + f"\nname: *a{levels - 1}\n"


def grid_with(world: World, name: str, extra: str) -> Path:
    """A grid file whose text ends with ``extra`` (YAML the safe dumper cannot write: anchors, bombs)."""
    return world.text(f"{name}.yaml", f"grid: {name}\nbase: {EXPERIMENT}\nseeds: [0]\n{extra}")


FILES = {
    "bomb.yaml": lambda w: w.text("bomb.yaml", f"base: {EXPERIMENT}\n{alias_bomb()}"),
    "recursive.yaml": lambda w: w.text("recursive.yaml", f"base: {EXPERIMENT}\ntrain: &t {{epochs: 2, more: *t}}\n"),
    "deep.yaml": lambda w: w.text("deep.yaml", f"base: {EXPERIMENT}\nname: " + "[" * 120 + "]" * 120 + "\n"),
    "huge.yaml": lambda w: w.text("huge.yaml", f"base: {EXPERIMENT}\nname: " + "n" * (2 << 20) + "\n"),
    "longname.yaml": lambda w: w.text("longname.yaml", f"base: {EXPERIMENT}\nname: " + "n" * 20000 + "\n"),
    "bigint.yaml": lambda w: w.text("bigint.yaml", f"base: {EXPERIMENT}\ntrain: {{epochs: " + "9" * 5000 + "}\n"),
    "longkey.yaml": lambda w: w.text("longkey.yaml", f"base: {EXPERIMENT}\ntrain:\n  ? " + "k" * 20000 + "\n  : 1\n"),
    "grid_recursive.yaml": lambda w: grid_with(w, "grid_recursive", "set: &s {train.epochs: 1, again: *s}\nrows: [{name: a}]\n"),
    "grid_bomb.yaml": lambda w: grid_with(w, "grid_bomb", alias_bomb().replace("name: ", "x: ") + "rows: [{name: a}]\n"),
    "grid_axes.yaml": lambda w: grid_with(w, "grid_axes", "axes:\n  mode: product\n  values:\n"
                                          f"    train.lr: {[round(0.001 * (i + 1), 4) for i in range(200)]}\n"
                                          f"    dino.momentum: {[round(0.9 + 0.0004 * i, 5) for i in range(200)]}\n"),
    "grid_seeds.yaml": lambda w: w.write_grid("grid_seeds", seeds=list(range(600)),
                                              rows=[{"name": "a"}, {"name": "b", "set": {"dino.momentum": 0.9}}]),
    "grid_name.yaml": lambda w: w.write_grid("grid_name", rows=[{"name": "r" * 5000}]),
    "data_loop": lambda w: image_folder(w.tmp / "data_loop", loops=2),  # 2 '.' links a class: 2^depth paths unguarded
}


def image_folder(root: Path, loops: int = 0, per_class: int = 3) -> Path:
    """train/{a,b}/ and test/{a,b}/ of ``per_class`` PNGs; ``loops`` links to '.' inside each train class."""
    from PIL import Image

    for split in ("train", "test"):
        for c in ("a", "b"):
            folder = root / split / c
            folder.mkdir(parents=True)
            for i in range(per_class):
                Image.new("RGB", (8, 8), (40 * i, 100, 0)).save(folder / f"{i}.png")
            if split == "train":
                for k in range(loops):
                    (folder / f"again{k}").symlink_to(".", target_is_directory=True)
    return root


# ------------------------------------------------------------------------------------------------ in process

# (id, argv, the text the one line must contain, extra environment). A refusal that reads a folder with link
# loops, or probes a server that never answers, is bounded by the checks themselves (no exponential walk, a
# PROBE_TIMEOUT_S probe), so it runs here too.
CASES = [
    # non-finite floats
    ("run-lr-inf", "run {exp} --set train.lr=.inf", "train.lr", {}),
    ("run-student-temp-inf", "run {exp} --set dino.student_temp=.inf", "dino.student_temp", {}),
    ("run-weight-decay-nan", "run {exp} --set train.weight_decay=.nan", "train.weight_decay", {}),
    ("run-scale-nan", "run {exp} --set crops.global_scale=[0.4,.nan]", "crops.global_scale", {}),
    ("sweep-momentum-inf", "sweep {grid} --dry-run --set dino.center_momentum=-.inf", "dino.center_momentum", {}),
    # sizes that cannot fit
    ("run-out-dim-huge", "run {exp} --set dino.out_dim=1000000000000", "dino.out_dim=1000000000000", {}),
    ("run-embed-dim-huge", "run {exp} --set model.embed_dim=10000000", "model.embed_dim=10000000", {}),
    ("sweep-hidden-dim-huge", "sweep {grid} --dry-run --set dino.hidden_dim=100000000", "dino.hidden_dim=100000000", {}),
    # threads, device
    ("run-threads-0", "run {exp} --set train.threads=0", "train.threads", {}),
    ("run-threads-negative", "run {exp} --set train.threads=-3", "train.threads", {}),
    ("run-device-unknown", "run {exp} --set train.device=gpu", "train.device", {}),
    ("run-device-absent", "run {exp} --set train.device=cuda:99", "train.device=cuda:99", {}),
    ("status-device-typo", "status {grid} --set train.device=cuda0", "train.device", {}),
    # cross-field checks
    ("run-train-limit-below-batch", "run {exp} --set data.train_limit=10", "train.batch_size=16", {}),
    ("run-synthetic-below-batch", "run {exp} --set data.synthetic_train=12", "train.batch_size=16", {}),
    ("run-linear-lrs-empty", "run {exp} --set eval.linear_lrs=[]", "eval.linear_lrs", {}),
    ("run-linear-lrs-negative", "run {exp} --set eval.linear_lrs=[0.1,-1]", "eval.linear_lrs", {}),
    ("status-linear-lrs-zero", "status {grid} --set eval.linear_lrs=[0]", "eval.linear_lrs", {}),
    ("run-imagefolder-loop-below-batch",
     "run {exp} --set data.name=imagefolder --set data.root={tmp}/data_loop --set train.batch_size=8", "has 6", {}),
    # YAML bombs, recursive anchors, deep nesting, huge scalars
    ("run-alias-bomb", "run {tmp}/bomb.yaml", "aliases", {}),
    ("run-recursive-anchor", "run {tmp}/recursive.yaml", "refers to itself", {}),
    ("run-deep-nesting", "run {tmp}/deep.yaml", "nested deeper", {}),
    ("run-huge-file", "run {tmp}/huge.yaml", "huge.yaml", {}),
    ("run-long-name", "run {tmp}/longname.yaml", "name: a 20000-character value", {}),
    ("run-integer-5000-digits", "run {tmp}/bigint.yaml", "bigint.yaml", {}),
    ("run-long-key", "run {tmp}/longkey.yaml", "train: a 20000-character key", {}),
    ("run-set-long-value", "run {exp} --set name=" + "x" * 5000, "--set name", {}),
    ("sweep-grid-recursive-set", "sweep {tmp}/grid_recursive.yaml --dry-run", "refers to itself", {}),
    ("status-grid-alias-bomb", "status {tmp}/grid_bomb.yaml", "aliases", {}),
    ("status-watch-interval-0", "status {grid} --watch --interval 0", "--interval", {}),
    ("status-watch-no-grid", "status --watch", "needs a grid YAML", {}),
    ("status-no-grid-uri-unknown-scheme", "status --tracking-uri bogus://x", "--tracking-uri", {}),
    ("status-no-grid-uri-closed-port", "status --tracking-uri http://127.0.0.1:{closed}", "--tracking-uri", {}),
    ("dashboard-all-out-a-file", "dashboard --all --out {file} --no-log", "--out", {}),
    ("report-grid-alias-bomb", "report {tmp}/grid_bomb.yaml", "aliases", {}),
    ("dashboard-grid-recursive", "dashboard {tmp}/grid_recursive.yaml --no-log", "refers to itself", {}),
    ("backfill-grid-alias-bomb", "backfill {tmp}/grid_bomb.yaml", "aliases", {}),
    ("sweep-row-name-huge", "sweep {tmp}/grid_name.yaml --dry-run", "limited to 4096", {}),
    # grids that expand to an absurd number of trials
    ("sweep-axes-40000", "sweep {tmp}/grid_axes.yaml --dry-run", "40000 trials", {}),
    ("status-seeds-1200", "status {tmp}/grid_seeds.yaml", "1200 trials", {}),
    ("report-axes-40000", "report {tmp}/grid_axes.yaml", "40000 trials", {}),
    ("sweep-cap-lowered", "sweep {grid} --dry-run", "2 trials", {"DINOLAB_MAX_TRIALS": "1"}),
    # tracking stores
    ("run-uri-unknown-scheme", "run {exp} --set tracking.uri=foo://bar", "tracking.uri", {}),
    ("run-uri-env-malformed", "run {exp}", "$MLFLOW_TRACKING_URI", {"MLFLOW_TRACKING_URI": "sqlite://relative.db"}),
    ("run-uri-no-host", "run {exp} --set tracking.uri=http://", "names no host", {}),
    ("run-uri-closed-port", "run {exp} --set tracking.uri=http://127.0.0.1:{closed}", "does not answer", {}),
    ("run-server-never-answers", "run {exp} --set tracking.uri=http://127.0.0.1:{silent}", "does not answer", {}),
    ("run-uri-not-a-database", "run {exp} --set tracking.uri=sqlite:///{notdb}", "not a SQLite database", {}),
    ("run-uri-a-folder", "run {exp}", "a folder", {"MLFLOW_TRACKING_URI": "sqlite:///{dir}"}),
    ("run-experiment-empty", "run {exp} --set tracking.experiment=''", "tracking.experiment", {}),
    ("sweep-uri-unknown-scheme", "sweep {grid} --set tracking.uri=ftp://host/x", "unknown scheme", {}),
    ("status-uri-closed-port", "status {grid}", "$MLFLOW_TRACKING_URI", {"MLFLOW_TRACKING_URI": "http://127.0.0.1:{closed}"}),
    ("report-uri-unknown-scheme", "report {grid} --tracking-uri bogus://x", "--tracking-uri", {}),
    ("report-uri-closed-port", "report {grid} --tracking-uri https://127.0.0.1:{closed}", "--tracking-uri", {}),
    ("dashboard-uri-a-folder", "dashboard {grid} --no-log --tracking-uri sqlite:///{dir}", "--tracking-uri", {}),
    ("export-uri-no-host", "export abc --tracking-uri http://:5000", "--tracking-uri", {}),
    ("backfill-uri-unknown-scheme", "backfill {grid} --tracking-uri weird://x", "--tracking-uri", {}),
    ("backfill-uri-bad-port", "backfill {grid} --tracking-uri http://127.0.0.1:99999", "--tracking-uri", {}),
    # file system
    ("run-home-under-a-file", "run {exp}", "$DINOLAB_HOME", {"DINOLAB_HOME": "{file}/home", "MLFLOW_TRACKING_URI": ""}),
    ("run-storage-under-a-file", "run {exp} --storage {file}/storage", "--storage", {}),
    ("sweep-storage-under-a-file", "sweep {grid} --storage {file}/storage", "--storage", {}),
    ("status-storage-under-a-file", "status {grid} --storage {file}/x", "--storage", {}),
    ("sweep-home-under-a-file", "sweep {grid}", "$DINOLAB_HOME", {"DINOLAB_HOME": "{file}/home"}),
    ("report-out-under-a-file", "report {grid} --out {file}/reports", "--out", {}),
    ("dashboard-out-under-a-file", "dashboard {grid} --no-log --out {file}/d.html", "--out", {}),
    ("export-out-under-a-file", "export abc --out {file}/w.pt", "--out", {}),
    ("ui-home-under-a-file", "ui --port {closed}", "$DINOLAB_HOME", {"DINOLAB_HOME": "{file}/home", "MLFLOW_TRACKING_URI": ""}),
    # export: unknown runs
    ("export-unknown-run", "export no-such-run --out {tmp}/out/", "no such run", {}),
    ("export-unknown-run-no-store", "export no-such-run", "no such run", {"MLFLOW_TRACKING_URI": ""}),
    # sweep flags, at parse
    ("sweep-max-concurrent-0", "sweep {grid} --max-concurrent 0", "--max-concurrent", {}),
    ("sweep-max-failures-negative", "sweep {grid} --max-failures -5", "--max-failures", {}),
    ("sweep-wait-negative", "sweep {grid} --wait-for-resources -1", "--wait-for-resources", {}),
    ("sweep-max-node-cpus-nan", "sweep {grid} --max-node-cpus nan", "--max-node-cpus", {}),
    ("sweep-max-concurrent-text", "sweep {grid} --max-concurrent lots", "--max-concurrent", {}),
    ("report-format-unknown", "report {grid} --format pdf", "--format", {}),
    ("backfill-metric-unknown", "backfill {grid} --metric fid", "--metric", {}),
    # ui backends that cannot be opened (refused before MLflow starts)
    ("ui-backend-not-a-database", "ui --port {closed} --backend sqlite:///{notdb}", "--backend", {}),
    ("ui-backend-unknown-scheme", "ui --port {closed} --backend mongodb://db/x", "--backend", {}),
    ("ui-backend-server", "ui --port {closed} --backend http://127.0.0.1:{closed}", "--backend", {}),
    ("ui-port-negative", "ui --port -1", "--port -1", {}),
    ("server-port-0", "server --port 0", "--port 0", {}),
    ("server-backend-not-a-database", "server --port {closed} --backend sqlite:///{notdb}", "--backend", {}),
    ("server-backend-unknown-scheme", "server --port {closed} --backend redis://cache/0", "--backend", {}),
    ("server-backend-host-down", "server --port {closed} --backend postgresql://lab@127.0.0.1:{closed}/mlflow", "--backend", {}),
    ("server-home-under-a-file", "server --port {closed}", "$DINOLAB_HOME", {"DINOLAB_HOME": "{file}/home",
                                                                               "MLFLOW_BACKEND_STORE_URI": ""}),
]


def _argv(world: World, text: str) -> list[str]:
    import shlex

    return [world.fill(a) for a in shlex.split(text)]


def _one_line(err: str, expected: str) -> str:
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, f"expected one line on stderr, got {len(lines)}:\n{err[:2000]}"
    assert "Traceback" not in err
    assert expected in lines[0], lines[0]
    assert len(lines[0]) < 1200, f"a {len(lines[0])}-character line"
    return lines[0]


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_bad_input_is_refused_in_one_line(case, world, capsys, monkeypatch):
    name, argv, expected, env = case
    for key, value in env.items():
        if value:
            monkeypatch.setenv(key, world.fill(value))
        else:
            monkeypatch.delenv(key, raising=False)
    for f, make in FILES.items():
        if f in argv:
            make(world)
    capsys.readouterr()
    before = world.snapshot()
    start = time.time()
    try:
        code = main(_argv(world, argv))
    except SystemExit as e:  # argparse
        code = e.code
    took = time.time() - start
    err = capsys.readouterr().err
    assert code == 2, err
    _one_line(err, world.fill(expected))
    assert world.snapshot() == before, "the command wrote something"
    assert took < 120, f"refused after {took:.0f} s"  # seconds here; the bound only catches a hang on a loaded machine


# ---------------------------------------------------------------------------------------------- subprocesses


def _silent_server() -> tuple[socket.socket, int]:
    """A server that accepts connections and never answers (a hung MLflow behind a load balancer)."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(16)
    return sock, sock.getsockname()[1]


def _listening() -> tuple[socket.socket, int]:
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    sock.listen(1)
    return sock, sock.getsockname()[1]


SUBPROCESS_CASES = [
    ("ui-port-out-of-range", "ui --port 99999", "--port 99999"),
    ("ui-port-in-use", "ui --port {busy}", "--port {busy}"),
    ("server-port-out-of-range", "server --port 70000", "--port 70000"),
    ("server-port-in-use", "server --port {busy}", "--port {busy}"),
    ("server-artifacts-under-a-file", "server --port {closed} --artifacts {file}/artifacts", "--artifacts"),
    ("server-backend-a-folder", "server --port {closed} --backend sqlite:///{dir}", "--backend"),
    ("server-workers-0", "server --port {closed} --workers 0", "--workers"),
]


@pytest.mark.parametrize("case", SUBPROCESS_CASES, ids=[c[0] for c in SUBPROCESS_CASES])
def test_bad_input_that_could_hang_is_refused_in_one_line(case, world):
    name, argv, expected = case
    busy, busy_port = _listening()
    try:
        fill = lambda t: world.fill(t.replace("{busy}", str(busy_port)))  # noqa: E731
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO / "platform"), os.environ.get("PYTHONPATH", "")])}
        before = world.snapshot()
        proc = subprocess.run([sys.executable, "-m", "dinolab", *[fill(a) for a in argv.split()]], env=env, cwd=world.tmp,
                              capture_output=True, text=True, timeout=300)
    finally:
        busy.close()
    assert proc.returncode == 2, proc.stderr[-3000:]
    _one_line(proc.stderr, fill(expected))
    assert world.snapshot() == before, "the command wrote something"


def test_unresponsive_server_is_refused_within_ten_seconds():
    """The probe of a server that accepts and never answers gives up after PROBE_TIMEOUT_S (MLflow retries for minutes)."""
    from dinolab.config import ConfigError
    from dinolab.track.check import PROBE_TIMEOUT_S, check_tracking

    silent, port = _silent_server()
    try:
        start = time.time()
        with pytest.raises(ConfigError, match="does not answer"):
            check_tracking(f"http://127.0.0.1:{port}", "tracking.uri")
        assert time.time() - start < 10 and PROBE_TIMEOUT_S < 10
    finally:
        silent.close()


def test_a_server_behind_basic_auth_answers_the_probe():
    """A team server's URI carries user:password (docs/team_scale.md): the probe reaches the host, and the
    server's 401 counts as an answer."""
    import http.server
    import threading

    from dinolab.track.check import check_tracking

    class Guarded(http.server.BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 - http.server's name
            self.send_response(401)
            self.end_headers()

        def log_message(self, *args):
            pass

    server = http.server.HTTPServer(("127.0.0.1", 0), Guarded)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        uri = f"http://dinolab:s3cret@127.0.0.1:{server.server_address[1]}"
        assert check_tracking(uri, "$MLFLOW_TRACKING_URI") == uri
    finally:
        server.shutdown()
        server.server_close()


# ------------------------------------------------------------------------------------- export into a folder


def test_export_into_a_folder_writes_both_files_inside_it(world, tmp_path):
    """``--out DIR`` puts backbone.pt and backbone.config.yaml inside DIR (not beside it)."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=world.store)
    run = client.create_run(client.create_experiment("e", artifact_location=(tmp_path / "art").as_uri()))
    weights = tmp_path / "teacher_backbone.pt"
    weights.write_bytes(b"weights")
    client.log_artifact(run.info.run_id, str(weights), "weights")
    client.log_text(run.info.run_id, "name: x\n", "config.yaml")
    out = tmp_path / "exported"
    out.mkdir()
    assert main(["export", run.info.run_id, "--out", str(out)]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["backbone.config.yaml", "backbone.pt"]
    assert (out / "backbone.pt").read_bytes() == b"weights"
    assert not (tmp_path / "exported.config.yaml").exists()


# -------------------------------------------------------------------------------------- unreadable images


def test_unreadable_image_is_replaced_named_and_counted(tmp_path, caplog):
    """An image that fails to decode during training is replaced by the next one, named, and counted; the
    epoch's count fails the run only above MAX_UNREADABLE_FRACTION of the images read."""
    from dinolab.data.datasets import MAX_UNREADABLE_FRACTION, ClassFolder, take_unreadable
    from dinolab.train.loop import UnreadableImages, unreadable_images

    root = image_folder(tmp_path / "data", per_class=60)
    bad = root / "train" / "a" / "1.png"
    bad.write_bytes(bad.read_bytes()[:40])  # truncated
    ds = ClassFolder(root / "train", ["a", "b"])
    assert len(ds) == 120
    index = [p for p, _ in ds.samples].index(str(bad))
    with caplog.at_level("WARNING"):
        image, label = ds[index]
    assert label == 0 and image.size == (8, 8)
    assert str(bad) in caplog.text  # the warning names the file
    bad_count, reads, first = take_unreadable(ds)  # the bad file and the one that replaced it were read
    assert (bad_count, reads) == (1, 2) and first.startswith(f"{bad} (")

    for i in range(len(ds)):  # one epoch over every image: 1 unreadable of 121 reads (< 1 %): counted
        ds[i]
    assert unreadable_images(ds, epoch=0) == 1
    assert 1 / 121 <= MAX_UNREADABLE_FRACTION
    for name in ("2.png", "3.png"):
        (root / "train" / "b" / name).write_bytes(b"\x89PNG broken")
    for i in range(len(ds)):  # 3 of 123 (> 1 %): the run fails, naming the first file
        ds[i]
    with pytest.raises(UnreadableImages, match=r"3 of the 123 .* epoch 1 .*1\.png"):
        unreadable_images(ds, epoch=1)


def test_symlink_loops_count_each_real_file_once(tmp_path):
    """A class folder linking to itself (once or twice) neither hangs the walk nor multiplies its images."""
    from dinolab.config import load_experiment
    from dinolab.data.datasets import ClassFolder, check_data, data_fingerprint

    plain = image_folder(tmp_path / "plain")
    looped = image_folder(tmp_path / "looped", loops=2)
    (looped / "train" / "a" / "twin.png").symlink_to(looped / "train" / "a" / "0.png")  # the same real file
    cfgs = [load_experiment(EXPERIMENT, ["data.name=imagefolder", f"data.root={p}", "train.batch_size=2"]) for p in (plain, looped)]
    assert check_data(cfgs[0].data) == check_data(cfgs[1].data) == 6
    assert data_fingerprint(cfgs[0].data) == data_fingerprint(cfgs[1].data)
    assert len(ClassFolder(looped / "train", ["a", "b"])) == 6


def test_a_sweep_trial_on_a_machine_without_its_device_stops_before_its_run(world, tmp_path):
    """train.device=cuda:N is legal where the grid is expanded (the workers may have it); the trial checks it
    where it starts and fails before it creates a run."""
    from dinolab.config import ConfigError, config_to_dict
    from dinolab.config.grid import load_grid
    from dinolab.sweep.trainable import TrialTask, execute_task

    (trial,) = load_grid(world.write_grid("gpu", rows=[{"name": "a"}]), ["train.device=cuda:99"]).trials
    task = TrialTask(trial_id=trial.trial_id, grid="gpu", row=trial.row, seed=trial.seed, config=config_to_dict(trial.config),
                     storage=str(tmp_path / "storage"), tracking_uri=world.store, claim_poll_s=0.05)
    with pytest.raises(ConfigError, match="train.device=cuda:99"):
        execute_task(task)
    assert world.runs() == 0
