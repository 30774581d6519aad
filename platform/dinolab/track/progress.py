"""A trial's progress as plain text: one line per epoch, for logs, CI and ``nohup`` (no terminal).

``dinolab run`` prints ``epoch_line`` after every epoch when its output is not a terminal (a terminal
gets the tqdm bar of the training loop); the sweep's plain view prints the same fields per trial.
"""

from __future__ import annotations

import math
import sys
import time
from typing import Callable, Optional, TextIO

from dinolab.track import contract

# (metric, label, format) in the order a line shows them; a metric absent from an epoch is left out
# (k-NN appears only on the epochs it is measured, see ``eval.knn_every``).
EPOCH_FIELDS = (
    (contract.LOSS, "loss", "{:.3f}"),
    (contract.TEACHER_ENTROPY, "entropy", "{:.3f}"),
    (contract.KL, "KL", "{:.3f}"),
    (contract.KNN_TOP1, "k-NN", "{:.1f}"),
    (contract.IMAGES_PER_S, "img/s", "{:.0f}"),
)


def fmt_duration(seconds: Optional[float]) -> str:
    """``42s``, ``3m05s``, ``2h07m``; ``?`` when unknown."""
    if seconds is None or not math.isfinite(seconds) or seconds < 0:
        return "?"
    s = int(round(seconds))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{s % 3600 // 60:02d}m"


def metric_fields(metrics: dict) -> str:
    """``loss 5.123 entropy 3.210 KL 0.120 k-NN 12.5 img/s 340`` for the metrics present."""
    parts = []
    for key, label, fmt in EPOCH_FIELDS:
        value = metrics.get(key)
        if value is not None and math.isfinite(float(value)):
            parts.append(f"{label} {fmt.format(float(value))}")
    return " ".join(parts)


def epoch_line(epoch: int, epochs: int, metrics: dict, eta_s: Optional[float]) -> str:
    """``epoch 3/10 loss 5.123 entropy 3.210 KL 0.120 k-NN 12.5 img/s 340 ETA 2m10s`` (epoch: 1-based)."""
    return f"epoch {epoch}/{epochs} {metric_fields(metrics)} ETA {fmt_duration(eta_s)}".replace("  ", " ")


class EpochLog:
    """``on_epoch_end(epoch, metrics)`` callback printing one ``epoch_line`` per epoch.

    The ETA is the mean time of the epochs this process trained times the epochs left (a resumed
    run's earlier epochs are not timed here)."""

    def __init__(self, name: str, epochs: int, stream: Optional[TextIO] = None, clock: Callable[[], float] = time.time):
        self.name, self.epochs, self.stream, self.clock = name, epochs, stream, clock
        self.start = clock()
        self.first: Optional[int] = None  # the first epoch (0-based) seen by this process

    def __call__(self, epoch: int, metrics: dict) -> None:
        if self.first is None:
            self.first = epoch
        done_here = epoch - self.first + 1
        per_epoch = (self.clock() - self.start) / done_here
        line = epoch_line(epoch + 1, self.epochs, metrics, per_epoch * (self.epochs - epoch - 1))
        print(f"{self.name}: {line}", file=self.stream or sys.stderr, flush=True)
