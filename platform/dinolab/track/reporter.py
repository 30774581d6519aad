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


class FileReporter(MemoryReporter):
    """MemoryReporter that also writes to ``folder``, for ``train`` run without MLflow (the GPU check).

    ``metrics.jsonl``: one line per ``log_metrics`` call, ``{"step": step, **metrics}``; ``tags.json``: the tags
    so far; ``artifacts.txt``: the paths handed to ``log_artifact`` (not copied); ``images/<key>_<step>.png``.
    One reporter is one run: the files of an earlier run in ``folder`` are replaced.
    """

    def __init__(self, folder: Path) -> None:
        super().__init__()
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        for name in ("metrics.jsonl", "tags.json", "artifacts.txt"):
            (self.folder / name).unlink(missing_ok=True)

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        import json

        super().log_metrics(metrics, step)
        with open(self.folder / "metrics.jsonl", "a") as f:
            f.write(json.dumps({"step": step, **{k: float(v) for k, v in metrics.items()}}) + "\n")

    def set_tags(self, tags: dict[str, str]) -> None:
        import json

        super().set_tags(tags)
        (self.folder / "tags.json").write_text(json.dumps(self.tags, indent=1) + "\n")

    def log_artifact(self, path: Path, artifact_path: Optional[str] = None) -> None:
        super().log_artifact(path, artifact_path)
        with open(self.folder / "artifacts.txt", "a") as f:
            f.write(f"{path}\t{artifact_path or ''}\n")

    def log_image(self, image: np.ndarray, key: str, step: int) -> None:
        from PIL import Image

        super().log_image(image, key, step)
        out = self.folder / "images" / f"{key.replace('/', '_')}_{step}.png"
        out.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.asarray(image)).save(out)
