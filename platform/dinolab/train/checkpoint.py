"""Epoch checkpoints under a trial's folder: everything the next epoch depends on.

Layout of ``<trial dir>``:
  checkpoints/epoch_0003.pt   student, teacher (= the previous-epoch teacher for prev_epoch), loss
                              centers, optimizer, grad scaler, every RNG, step, metric history
  final/teacher_backbone.pt   the trained weights a user loads (``dinolab export``)
  final/student_backbone.pt
Writes are atomic (temporary file + rename), so a kill mid-write never leaves a torn checkpoint.
"""

from __future__ import annotations

import os
import random
import re
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch

_PATTERN = re.compile(r"epoch_(\d+)\.pt$")


def checkpoint_dir(workdir: Path) -> Path:
    return Path(workdir) / "checkpoints"


def atomic_save(obj: Any, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def rng_state() -> dict:
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def list_checkpoints(workdir: Path) -> list[tuple[int, Path]]:
    """(epoch, path) pairs, oldest first."""
    folder = checkpoint_dir(workdir)
    if not folder.is_dir():
        return []
    found = []
    for p in folder.iterdir():
        m = _PATTERN.search(p.name)
        if m:
            found.append((int(m.group(1)), p))
    return sorted(found)


def latest_checkpoint(workdir: Path) -> Optional[Path]:
    found = list_checkpoints(workdir)
    return found[-1][1] if found else None


def save_epoch_checkpoint(workdir: Path, epoch: int, state: dict, keep: int) -> Path:
    path = checkpoint_dir(workdir) / f"epoch_{epoch:04d}.pt"
    atomic_save(state, path)
    for _, old in list_checkpoints(workdir)[:-keep]:
        old.unlink(missing_ok=True)
    return path


def load_checkpoint(path: Path) -> dict:
    # weights_only=False: our own files hold RNG states and numpy arrays; never load untrusted checkpoints.
    return torch.load(path, map_location="cpu", weights_only=False)
