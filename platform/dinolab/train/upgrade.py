"""``dinolab checkpoints upgrade DIR``: convert epoch checkpoints written before safe loading, once.

Before, a checkpoint held numpy's RNG state as numpy's own tuple (a uint32 array among plain values), which
``torch.load(weights_only=True)`` refuses. The conversion reads each old file with ``weights_only=True`` plus
only numpy's array reconstruction allowed (``OLD_FORMAT_GLOBALS``, for this read alone), so even an old file
runs no code; rewrites that state as plain types (``checkpoint.numpy_rng_plain``); checks that the result
loads with plain ``weights_only=True``; and replaces the file atomically. Nothing else in the file changes,
so a converted trial resumes exactly where it stopped.
"""

from __future__ import annotations

import io
import pickle
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from dinolab.config import ConfigError
from dinolab.train import checkpoint as ckpt

try:  # numpy >= 2
    from numpy._core.multiarray import _reconstruct
except ImportError:  # numpy 1
    from numpy.core.multiarray import _reconstruct

# What np.random.get_state()'s uint32 array pickles as, under numpy 1's and numpy 2's module names.
OLD_FORMAT_GLOBALS = [
    (_reconstruct, "numpy.core.multiarray._reconstruct"),
    (_reconstruct, "numpy._core.multiarray._reconstruct"),
    np.ndarray,
    np.dtype,
    type(np.dtype(np.uint32)),  # the dtype's class, which torch asks to be allowed to build it
]


@dataclass
class Outcome:
    path: Path
    action: str  # "converted" | "would convert" | "already safe" | "refused"
    reason: str = ""


def find_checkpoints(folder: Path) -> list[Path]:
    """Every ``epoch_NNNN.pt`` under ``folder`` (a checkpoints/ folder, a trial folder or a storage root)."""
    folder = Path(folder).expanduser()
    if not folder.is_dir():
        raise ConfigError(f"checkpoints upgrade: {str(folder)!r} is not a folder")
    found = sorted(p for p in folder.rglob("epoch_*.pt") if p.is_file())
    if not found:
        raise ConfigError(f"checkpoints upgrade: no epoch_NNNN.pt checkpoints under {str(folder)!r}")
    return found


def upgrade_file(path: Path, dry_run: bool = False) -> Outcome:
    try:
        ckpt.load_checkpoint(path)
        return Outcome(path, "already safe")
    except ckpt.UnsafeCheckpoint:
        pass
    try:
        with torch.serialization.safe_globals(OLD_FORMAT_GLOBALS):
            state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        return Outcome(path, "refused", f"not a checkpoint of the old format ({ckpt.refusal_reason(e)}); left as it is")
    rng = state.get("rng") if isinstance(state, dict) else None
    if not isinstance(rng, dict) or not isinstance(rng.get("numpy"), tuple):
        return Outcome(path, "refused", "holds numpy arrays but no numpy RNG state tuple; left as it is")
    rng["numpy"] = ckpt.numpy_rng_plain(rng["numpy"])
    buffer = io.BytesIO()
    torch.save(state, buffer)
    try:
        torch.load(io.BytesIO(buffer.getvalue()), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        return Outcome(path, "refused", f"still not loadable after conversion ({ckpt.refusal_reason(e)}); left as it is")
    if dry_run:
        return Outcome(path, "would convert")
    ckpt.atomic_save(state, path)
    return Outcome(path, "converted")


def upgrade_checkpoints(folder: Path, dry_run: bool = False) -> list[Outcome]:
    return [upgrade_file(p, dry_run) for p in find_checkpoints(folder)]
