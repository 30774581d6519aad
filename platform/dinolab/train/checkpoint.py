"""Epoch checkpoints under a trial's folder: everything the next epoch depends on.

Layout of ``<trial dir>``:
  checkpoints/epoch_0003.pt   student, teacher (= the previous-epoch teacher for prev_epoch), loss
                              centers, optimizer, grad scaler, every RNG, step, metric history
  final/teacher_backbone.pt   the trained weights a user loads (``dinolab export``)
  final/student_backbone.pt
Writes are atomic (temporary file + rename), so a kill mid-write never leaves a torn checkpoint.

A checkpoint holds only tensors and plain Python types (numpy's RNG state too, see ``numpy_rng_plain``), and is
read with ``torch.load(weights_only=True)``: a file holding anything else is refused (``UnsafeCheckpoint``)
before any of it runs. Files written before that rule are converted once by ``dinolab checkpoints upgrade``
(``train/upgrade.py``).
"""

from __future__ import annotations

import os
import pickle
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


class UnsafeCheckpoint(Exception):
    """A checkpoint that does not load with ``weights_only=True``; nothing in it was run."""


def numpy_rng_plain(legacy: tuple) -> dict:
    """numpy's legacy state ('MT19937', key uint32 (624,), pos, has_gauss, cached_gaussian) as plain types."""
    name, key, pos, has_gauss, cached_gaussian = legacy
    return {"bit_generator": str(name), "key": [int(k) for k in key], "pos": int(pos),
            "has_gauss": int(has_gauss), "cached_gaussian": float(cached_gaussian)}


def rng_state() -> dict:
    """Every generator's state: python's (a tuple of ints), numpy's (plain types), torch's and CUDA's (uint8 tensors)."""
    state = {"python": random.getstate(), "numpy": numpy_rng_plain(np.random.get_state()), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    n = state["numpy"]
    np.random.set_state((n["bit_generator"], np.asarray(n["key"], dtype=np.uint32), n["pos"], n["has_gauss"], n["cached_gaussian"]))
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
    """The state saved at ``path``, read with ``weights_only=True``; ``UnsafeCheckpoint`` (one line) if it holds more."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        raise UnsafeCheckpoint(f"checkpoint {path} refused: {refusal_reason(e)}; nothing in it was run. A checkpoint "
                               f"dinolab wrote before safe loading is converted once with "
                               f"`dinolab checkpoints upgrade {Path(path).parent}`") from None


def refusal_reason(error: pickle.UnpicklingError) -> str:
    """The line of torch's weights_only error that says what was refused (its message is a paragraph)."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    detail = [line for line in lines if not line.startswith(("Weights only load failed", "Please file", "Check the documentation"))]
    return (detail[-1] if detail else lines[0] if lines else "not loadable with weights_only=True").rstrip(".")
