"""The Reporter interface the training loop talks to; it knows nothing of MLflow or Ray.

``train(cfg, reporter)`` calls ``log_metrics`` once per epoch (batched: every metric of the epoch
in one call), ``set_tags`` for state that may change (heartbeat, collapse), and ``log_artifact`` /
``log_image`` for files and attention maps.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional, Protocol

import numpy as np


class Reporter(Protocol):
    def log_metrics(self, metrics: dict[str, float], step: int) -> None: ...
    def set_tags(self, tags: dict[str, str]) -> None: ...
    def log_artifact(self, path: Path, artifact_path: Optional[str] = None) -> None: ...
    def log_image(self, image: np.ndarray, key: str, step: int) -> None: ...


class MemoryReporter:
    """Keeps everything in memory: for tests and for ``train`` called from Python."""

    def __init__(self) -> None:
        self.metrics: list[tuple[int, dict[str, float]]] = []
        self.tags: dict[str, str] = {}
        self.artifacts: list[tuple[Path, Optional[str]]] = []
        self.images: list[tuple[str, int, np.ndarray]] = []

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        self.metrics.append((step, dict(metrics)))

    def set_tags(self, tags: dict[str, str]) -> None:
        self.tags.update(tags)

    def log_artifact(self, path: Path, artifact_path: Optional[str] = None) -> None:
        self.artifacts.append((Path(path), artifact_path))

    def log_image(self, image: np.ndarray, key: str, step: int) -> None:
        self.images.append((key, step, image))

    def history(self, key: str) -> list[float]:
        return [m[key] for _, m in self.metrics if key in m]

    def steps(self) -> list[int]:
        return [s for s, _ in self.metrics]
