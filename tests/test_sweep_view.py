"""The sweep's view: the trial table and its ETA, the live table under a real pseudo-terminal (stdlib ``pty``),
``dinolab status`` without a grid and with ``--watch``, and ``dinolab run``'s per-epoch lines."""

from __future__ import annotations

import os
import pty
import re
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from dinolab.sweep.view import DONE, FAILED, PENDING, RUNNING, GridView, TrialLine

REPO = Path(__file__).resolve().parents[1]


class Clock:
    def __init__(self):
        self.t = 1000.0

    def __call__(self):
        return self.t


def _view(clock) -> GridView:
    lines = [TrialLine("a" * 16, "DINO (centering)", 0, 10), TrialLine("b" * 16, "DINO (centering)", 1, 10),
             TrialLine("c" * 16, "no centering", 0, 10)]
    return GridView("demo", lines, clock=clock)


def test_view_counts_lines_and_eta():
    clock = Clock()
    v = _view(clock)
    assert v.counts() == {DONE: 0, RUNNING: 0, PENDING: 3, FAILED: 0} and v.eta_s() is None
    v.start("a" * 16)
    v.start("b" * 16)
    clock.t += 10
    v.result("a" * 16, {"epoch": 1})
    clock.t += 10
    v.result("a" * 16, {"epoch": 2, "knn_top1": 41.25, "teacher_entropy": 3.5, "images_per_s": 120.0, "loss": 5.0})
    assert v.eta_s() is None  # b has no epoch rate yet
    v.result("b" * 16, {"epoch": 1, "teacher_entropy": 3.0})
    a, b, c = v.lines
    assert a.seconds_per_epoch == 10 and a.left_s == 80 and b.left_s == 180 and b.knn is None and a.knn == 41.25
    # pending c takes the running trials' mean projected total (10 s x 10 epochs, 20 s x 10): 150 s; 2 run at once
    assert v.eta_s() == pytest.approx((80 + 180 + 150) / 2)
    clock.t += 30
    v.finish("b" * 16, ok=True)
    assert b.wall_s == 50 and b.epoch == 10
    v.result("a" * 16, {"epoch": 5})  # 50 s for 5 epochs: 10 s each, 50 s left; c: b's wall time
    assert v.eta_s() == pytest.approx(50 + 50)
    table = v.table()
    assert table[0] == "grid demo: 1 done, 1 running, 1 pending, 0 failed of 3; ETA 1m40s"
    assert table[1].split() == ["row", "seed", "state", "epoch", "k-NN", "entropy", "img/s", "left"]
    assert re.match(r"DINO \(centering\)\s+0\s+running\s+5/10\s+41\.2\s+3\.500\s+120\s+50s$", table[2])
    line = v.event_line(a, "epoch", {"loss": 5.0, "knn_top1": 41.25})
    assert line.startswith("DINO (centering) seed 0 [aaaaaaaa]: epoch 5/10 loss 5.000 k-NN 41.2 left 50s |")


CHILD = textwrap.dedent("""
    import logging, sys, threading
    from dinolab.sweep.live import LiveTable
    from dinolab.sweep.view import GridView, TrialLine
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    t = [1000.0]
    view = GridView("demo", [TrialLine("a" * 16, "DINO (centering)", 0, 10), TrialLine("b" * 16, "DINO (centering)", 1, 10),
                             TrialLine("c" * 16, "no centering", 0, 10)], clock=lambda: t[0])
    with LiveTable(view.table, interval=0) as live:
        view.start("a" * 16); view.start("c" * 16)
        for epoch in range(1, 4):
            t[0] += 10
            view.result("a" * 16, {"epoch": epoch, "knn_top1": 30.0 + epoch, "teacher_entropy": 3.0, "images_per_s": 99.0})
            view.result("c" * 16, {"epoch": epoch, "knn_top1": 10.0, "teacher_entropy": 0.01, "images_per_s": 98.0})
            live.draw()
            # what Ray's log thread prints for a trial process, from another thread, in two writes
            th = threading.Thread(target=lambda: (sys.stdout.write("(tune_trial pid=42) worker line " + str(epoch)),
                                                  sys.stdout.write(" ends\\n")))
            th.start(); th.join()
            logging.getLogger("ray.tune").warning("driver warning %d", epoch)
        view.finish("c" * 16, ok=False, note="error")
""")


def _screen(data: str, width: int = 200) -> list[str]:
    """A minimal terminal: printable text, CR, LF, ESC[nA (up), ESC[J (clear to end); returns the screen's lines."""
    screen: list[list[str]] = [[]]
    row = col = 0
    for token in re.findall(r"\x1b\[(\d*)([A-Za-z])|(\r)|(\n)|([^\x1b\r\n])", data):
        n, cmd, cr, lf, ch = token
        if cmd == "A":
            row = max(0, row - int(n or 1))
        elif cmd == "J":
            del screen[row + 1:]
            screen[row] = screen[row][:col]
        elif cmd:
            raise AssertionError(f"unexpected escape sequence ESC[{n}{cmd}")
        elif cr:
            col = 0
        elif lf:
            row, col = row + 1, 0
            if row == len(screen):
                screen.append([])
        else:
            line = screen[row]
            line.extend(" " * (col - len(line)))
            line[col:col + 1] = [ch]
            col += 1
    return ["".join(line).rstrip() for line in screen]


def test_live_table_under_a_pseudo_terminal():
    master, slave = pty.openpty()
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO / "platform"), os.environ.get("PYTHONPATH", "")]),
           "COLUMNS": "120", "LINES": "40"}
    child = subprocess.Popen([sys.executable, "-c", CHILD], stdin=slave, stdout=slave, stderr=slave, env=env, close_fds=True)
    os.close(slave)
    chunks = []
    while True:
        try:
            data = os.read(master, 65536)
        except OSError:  # EIO: the child closed the terminal
            break
        if not data:
            break
        chunks.append(data)
    os.close(master)
    assert child.wait(timeout=60) == 0, b"".join(chunks).decode(errors="replace")[-2000:]
    raw = b"".join(chunks).decode().replace("\r\n", "\n")  # the terminal's line discipline adds CR to LF
    assert "\x1b[" in raw  # it was redrawn in place
    screen = [line for line in _screen(raw) if line]
    # every other line scrolled above the table, whole (none was cut by a redraw), in order
    above = screen[:-5]
    assert above == [x for e in (1, 2, 3) for x in (f"(tune_trial pid=42) worker line {e} ends", f"WARNING driver warning {e}")]
    header, names, *rows = screen[-5:]
    assert header == "grid demo: 0 done, 1 running, 1 pending, 1 failed of 3; ETA 2m50s"  # 70 s left + b: a's 100 s projection
    assert names.split() == ["row", "seed", "state", "epoch", "k-NN", "entropy", "img/s", "left"]
    assert re.fullmatch(r"DINO \(centering\)\s+0\s+running\s+3/10\s+33\.0\s+3\.000\s+99\s+1m10s", rows[0])
    assert re.fullmatch(r"DINO \(centering\)\s+1\s+pending\s+0/10\s+–\s+–\s+–\s+–", rows[1])
    assert re.fullmatch(r"no centering\s+0\s+failed \(error\)\s+3/10\s+10\.0\s+0\.010\s+98\s+–", rows[2])


def test_status_lists_grids_watches_one_and_ui_links(store, write_grid, tmp_path, monkeypatch, capsys):
    from mlflow.tracking import MlflowClient

    from dinolab.cli import main
    from dinolab.config.grid import load_grid
    from dinolab.report.synthetic import log_trial_run
    from dinolab.report.ui_links import ui_links
    from dinolab.track import contract

    monkeypatch.setenv("MLFLOW_TRACKING_URI", store)
    path = write_grid(tmp_path, "watched", {"ema": {"dino.momentum": 0.99}, "fast": {"dino.momentum": 0.9}})
    grid = load_grid(path)
    client = MlflowClient(store)
    exp = client.create_experiment("dinolab")
    parent = client.create_run(exp, tags={contract.PARENT_GRID: "watched", contract.PARENT_TRIALS: "2"}).info.run_id
    ema, fast = grid.trials
    history = {"loss": [5.0, 4.0], "teacher_entropy": [3.0, 2.5], "images_per_s": [100.0, 110.0], "knn_top1": [20.0, 31.5]}
    log_trial_run(client, exp, ema.config, ema.trial_id, history=history, final={"knn_top1": 31.5, "wall_time_s": 60.0},
                  grids=["watched"], parent_run_id=parent)
    storage = ["--storage", str(tmp_path / "storage")]

    assert main(["status", *storage]) == 0  # no grid: every grid of the store
    out = capsys.readouterr().out.splitlines()
    assert out[0].split() == ["grid", "trials", "finished", "missing", "parent", "run", "grid", "file"]
    assert out[2].split()[:5] == ["watched", "2", "1", "1", parent]

    first_epoch = {k: v[:1] for k, v in history.items()}  # it failed in its second epoch
    log_trial_run(client, exp, fast.config, fast.trial_id, history=first_epoch, grids=["watched"], parent_run_id=parent,
                  status="FAILED", failure_reason="RuntimeError: boom")
    assert main(["status", str(path), "--watch", "--interval", "0.1", *storage]) == 1  # ends: nothing runs or waits
    table = capsys.readouterr().out.splitlines()
    assert table[0] == "grid watched: 1 done, 0 running, 0 pending, 1 failed of 2; ETA 0s"
    assert re.fullmatch(r"ema\s+0\s+done\s+2/2\s+31\.5\s+2\.500\s+110\s+0s", table[2])  # the tiny trial: 2 epochs
    assert re.fullmatch(r"fast\s+0\s+failed\s+1/2\s+20\.0\s+3\.000\s+100\s+–", table[3])

    links = ui_links(store, "http://127.0.0.1:5000")
    assert links == [("experiment dinolab: runs", f"http://127.0.0.1:5000/#/experiments/{exp}/runs"),
                     ("grid watched: parent run (RUNNING)", f"http://127.0.0.1:5000/#/experiments/{exp}/runs/{parent}")]
    assert client.get_experiment(exp).tags[contract.MLFLOW_EXPERIMENT_KIND] == contract.EXPERIMENT_KIND_TRAINING


def test_run_logs_a_line_per_epoch_when_not_on_a_terminal(store, tiny_experiment, monkeypatch, capsys):
    from dinolab.cli import main

    monkeypatch.setenv("MLFLOW_TRACKING_URI", store)
    sets = [x for o in ["eval.knn_every=1", "eval.linear=false"] for x in ("--set", o)]
    assert main(["run", str(tiny_experiment), *sets]) == 0
    err = capsys.readouterr().err.splitlines()
    for epoch in (1, 2):
        assert [x for x in err if re.fullmatch(rf"\S+: epoch {epoch}/2 loss \d\.\d{{3}} entropy \d\.\d{{3}} KL \d\.\d{{3}} "
                                               rf"k-NN \d+\.\d img/s \d+ ETA \w+", x)], err


def test_the_live_table_pickles_as_tune_pickles_its_callbacks():
    import pickle

    from dinolab.sweep.live import LiveTable

    view = _view(Clock())
    copy = pickle.loads(pickle.dumps(LiveTable(view.table)))  # Tune writes its callbacks into its experiment state
    assert copy.render() == view.table() and copy.drawn == 0
