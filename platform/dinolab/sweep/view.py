"""What a user sees of a grid while it runs: one line per trial and a header with counts and the grid's ETA.

``GridView`` holds one ``TrialLine`` per trial (row name, seed, state, epoch / total, the latest k-NN and
teacher entropy, img/s, time left). It is filled either from Ray Tune's events (``TuneView``, the sweep's
callback) or from the tracking store (``from_plan``, ``dinolab status --watch``), and drawn either as a
live table on a terminal (``dinolab.sweep.live``) or as one plain line per event (logs, CI).

ETA of a running trial: its seconds per epoch in this launch times the epochs left. ETA of the grid: the
running trials' time left plus, for each pending trial, the mean wall time of the trials finished in
this launch (else the running trials' projected total), spread over the trials running at once.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Callable, Iterable, Optional

from dinolab.track import contract
from dinolab.track.progress import fmt_duration, metric_fields

# Display states; ``done`` and ``failed`` are final for this launch.
PENDING, RUNNING, DONE, FAILED = "pending", "running", "done", "failed"
STATES = (DONE, RUNNING, PENDING, FAILED)
COLUMNS = ("row", "seed", "state", "epoch", "k-NN", "entropy", "img/s", "left")


@dataclass
class TrialLine:
    trial_id: str
    row: str
    seed: int
    epochs: int  # the trial's total
    state: str = PENDING
    note: str = ""  # e.g. "finished earlier", "failed: <reason>"
    epoch: int = 0  # epochs done
    knn: Optional[float] = None
    entropy: Optional[float] = None
    images_per_s: Optional[float] = None
    started: Optional[float] = None  # unix time this launch started it
    first_epoch: Optional[int] = None  # epochs already done when this launch started it (resume)
    seconds_per_epoch: Optional[float] = None
    wall_s: Optional[float] = None  # when done: how long it took in this launch

    @property
    def left_s(self) -> Optional[float]:
        if self.state != RUNNING or self.seconds_per_epoch is None:
            return None
        return self.seconds_per_epoch * max(0, self.epochs - self.epoch)

    def cells(self) -> list[str]:
        def num(v, fmt):
            return fmt.format(v) if v is not None and math.isfinite(v) else "–"

        state = self.state + (f" ({self.note})" if self.note else "")
        left = fmt_duration(self.left_s) if self.state == RUNNING else ("0s" if self.state == DONE else "–")
        return [self.row, str(self.seed), state, f"{self.epoch}/{self.epochs}", num(self.knn, "{:.1f}"),
                num(self.entropy, "{:.3f}"), num(self.images_per_s, "{:.0f}"), left]


class GridView:
    """The trials of one grid launch, in the grid's order, and their summary."""

    def __init__(self, grid: str, lines: Iterable[TrialLine], clock: Callable[[], float] = time.time):
        self.grid = grid
        self.lines = list(lines)
        self.by_id = {line.trial_id: line for line in self.lines}
        self.clock = clock

    # ------------------------------------------------------------------ updates (Tune events)

    def start(self, tid: str) -> TrialLine:
        line = self.by_id[tid]
        line.state, line.note = RUNNING, ""
        if line.started is None:
            line.started = self.clock()
        return line

    def result(self, tid: str, result: dict) -> Optional[TrialLine]:
        """A per-epoch report (``epoch`` 1-based plus the epoch's metrics); None for other reports."""
        if "epoch" not in result or "outcome" in result:
            return None
        line = self.by_id[tid]
        if line.state != RUNNING:
            self.start(tid)
        epoch = int(result["epoch"])
        if line.first_epoch is None:
            line.first_epoch = epoch - 1
        line.epoch = epoch
        line.entropy = _float(result.get(contract.TEACHER_ENTROPY), line.entropy)
        line.knn = _float(result.get(contract.KNN_TOP1), line.knn)
        line.images_per_s = _float(result.get(contract.IMAGES_PER_S), line.images_per_s)
        if epoch > line.first_epoch and line.started is not None:
            line.seconds_per_epoch = (self.clock() - line.started) / (epoch - line.first_epoch)
        return line

    def finish(self, tid: str, ok: bool, note: str = "") -> TrialLine:
        line = self.by_id[tid]
        line.state, line.note = (DONE if ok else FAILED), note
        if line.started is not None and ok:
            line.wall_s = self.clock() - line.started
        if ok:
            line.epoch = line.epochs
        return line

    # ------------------------------------------------------------------ summary

    def counts(self) -> dict[str, int]:
        out = {s: 0 for s in STATES}
        for line in self.lines:
            out[line.state] += 1
        return out

    def eta_s(self) -> Optional[float]:
        """Seconds until every trial of the launch is done (None: nothing to estimate from yet)."""
        running = [line for line in self.lines if line.state == RUNNING]
        pending = sum(line.state == PENDING for line in self.lines)
        if not running and not pending:
            return 0.0
        lefts = [line.left_s for line in running]
        if any(v is None for v in lefts):
            return None
        walls = [line.wall_s for line in self.lines if line.state == DONE and line.wall_s]
        if walls:
            per_trial = sum(walls) / len(walls)
        elif running:
            per_trial = sum(line.seconds_per_epoch * line.epochs for line in running) / len(running)
        else:
            return None
        total = sum(lefts) + pending * per_trial
        return max(max(lefts, default=0.0), total / max(1, len(running)))

    def header(self) -> str:
        c = self.counts()
        return (f"grid {self.grid}: {c[DONE]} done, {c[RUNNING]} running, {c[PENDING]} pending, {c[FAILED]} failed"
                f" of {len(self.lines)}; ETA {fmt_duration(self.eta_s())}")

    def table(self) -> list[str]:
        """The header line, the column names and one aligned line per trial."""
        rows = [list(COLUMNS)] + [line.cells() for line in self.lines]
        widths = [max(len(r[i]) for r in rows) for i in range(len(COLUMNS))]
        right = {1, 3, 4, 5, 6, 7}  # numbers right-aligned
        out = [self.header()]
        for r in rows:
            out.append("  ".join(c.rjust(w) if i in right else c.ljust(w) for i, (c, w) in enumerate(zip(r, widths))).rstrip())
        return out

    # ------------------------------------------------------------------ plain lines (no terminal)

    def event_line(self, line: TrialLine, what: str, metrics: Optional[dict] = None) -> str:
        """One line for one event of one trial: who (row, seed, id), what, the epoch's metrics, the grid."""
        who = f"{line.row} seed {line.seed} [{line.trial_id[:8]}]"
        text = f"{who}: {what}"
        if metrics:
            text += f" {line.epoch}/{line.epochs} {metric_fields(metrics)} left {fmt_duration(line.left_s)}"
        c = self.counts()
        return (f"{text} | {c[DONE]} done, {c[RUNNING]} running, {c[PENDING]} pending, {c[FAILED]} failed; "
                f"ETA {fmt_duration(self.eta_s())}").replace("  ", " ")


def _float(value, default: Optional[float]) -> Optional[float]:
    try:
        v = float(value)
    except (TypeError, ValueError):
        return default
    return v if math.isfinite(v) else default


def from_plan(plan, now: Optional[float] = None) -> GridView:
    """The view of a grid as the tracking store and claim locks say (``dinolab status --watch``).

    Per trial: its current run's latest metrics, ``dinolab.epochs_done`` and, while it runs, the time
    per epoch from the run's start to its last heartbeat. Trials a next launch runs again (interrupted,
    cancelled) are pending, with their state as the note."""
    from dinolab.lifecycle import DONE as DONE_STATES, TrialState

    now = time.time() if now is None else now
    lines = []
    for item in plan.items:
        line = TrialLine(item.trial_id, item.trial.row, item.trial.seed, item.trial.config.train.epochs)
        line.state = (DONE if item.state in DONE_STATES else RUNNING if item.state == TrialState.RUNNING
                      else FAILED if item.state == TrialState.FAILED else PENDING)
        if item.state in (TrialState.INTERRUPTED, TrialState.CANCELLED, TrialState.STOPPED, TrialState.COLLAPSED):
            line.note = str(item.state)
        run = item.current
        if run is not None:
            m = run.metrics
            line.knn = _float(m.get(contract.KNN_TOP1), None)
            line.entropy = _float(m.get(contract.TEACHER_ENTROPY), None)
            line.images_per_s = _float(m.get(contract.IMAGES_PER_S), None)
            line.epoch = int(_float(run.epochs_done, 0) or 0)
            if line.state == DONE:
                line.epoch = line.epochs
                line.wall_s = _float(m.get(contract.WALL_TIME_S), None)
            beat = run.heartbeat
            if line.state == RUNNING and line.epoch and beat and run.start_time:
                line.started = run.start_time / 1000.0
                line.seconds_per_epoch = max(0.0, beat - line.started) / line.epoch
        lines.append(line)
    return GridView(plan.grid.name, lines, clock=lambda: now)


def tune_view(grid_view: GridView, draw, plain: bool):
    """A Ray Tune ``Callback`` that keeps ``grid_view`` up to date from the trials' reports.

    draw(): redraws the live table (terminal); plain: print one ``event_line`` per event instead."""
    import sys

    from ray.tune import Callback

    def say(text: str) -> None:
        print(text, file=sys.stderr, flush=True)

    class TuneView(Callback):
        def on_trial_start(self, iteration, trials, trial, **info):
            line = grid_view.start(trial.config["trial_id"])
            if plain:
                say(grid_view.event_line(line, "started"))

        def on_trial_result(self, iteration, trials, trial, result, **info):
            tid = trial.config["trial_id"]
            outcome = result.get("outcome")
            if outcome is not None:  # the trial's summary: finished, reused, killed, failed, cancelled
                ok = outcome in ("finished", "reused")
                line = grid_view.finish(tid, ok, "" if outcome == "finished" else outcome)
                if plain:
                    knn = f" k-NN {result[contract.KNN_TOP1]:.1f}" if contract.KNN_TOP1 in result else ""
                    say(grid_view.event_line(line, f"{outcome}{knn} in {fmt_duration(line.wall_s)}"))
                return
            line = grid_view.result(tid, result)
            if line is not None and plain:
                say(grid_view.event_line(line, "epoch", result))

        def on_trial_error(self, iteration, trials, trial, **info):
            line = grid_view.finish(trial.config["trial_id"], False, "error")
            if plain:
                say(grid_view.event_line(line, f"failed: {_last_line(trial)}"))

        def on_trial_recover(self, iteration, trials, trial, **info):
            line = grid_view.by_id[trial.config["trial_id"]]
            line.state, line.note = PENDING, "retry"
            if plain:
                say(grid_view.event_line(line, f"raised, retried from its checkpoint: {_last_line(trial)}"))

        def on_step_end(self, iteration, trials, **info):
            if not plain:
                draw()

    return TuneView()


def _last_line(trial) -> str:
    try:  # the error file Tune appends each failure of the trial to (in the driver's copy of the trial folder)
        with open(trial.error_file, encoding="utf-8", errors="replace") as f:
            error = f.read()
    except (OSError, TypeError):
        error = ""
    lines = [x for x in str(error).strip().splitlines() if x.strip()]
    return lines[-1][:200] if lines else "see the Ray log"
