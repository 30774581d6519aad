"""Per-step (and per-epoch) schedules, built once before training (DINO ``utils.cosine_scheduler``).

The loop indexes them with the global iteration ``epoch * steps_per_epoch + it`` (lr, weight decay,
teacher momentum) or with the epoch (teacher temperature); modules only receive the current value.
"""

from __future__ import annotations

import numpy as np


def cosine_schedule(
    base: float,
    final: float,
    epochs: int,
    steps_per_epoch: int,
    warmup_epochs: int = 0,
    start_warmup_value: float = 0.0,
) -> np.ndarray:
    """(epochs * steps_per_epoch,) float64: linear warm-up, then a half cosine from ``base`` to ``final``.

    Warm-up: W = warmup_epochs * steps_per_epoch values linspace(start_warmup_value, base, W), end
    point included (the last warm-up step is already at ``base``). Then, for the T remaining steps,
    value_i = final + 0.5 (base - final) (1 + cos(pi i / T)), i = 0..T-1, so the last value is close
    to but not exactly ``final``.
    """
    if epochs < 1 or steps_per_epoch < 1:
        raise ValueError(f"epochs and steps_per_epoch must be >= 1, got {epochs} and {steps_per_epoch}")
    if not 0 <= warmup_epochs <= epochs:
        raise ValueError(f"warmup_epochs must be in [0, epochs={epochs}], got {warmup_epochs}")
    total = epochs * steps_per_epoch
    n_warmup = warmup_epochs * steps_per_epoch
    warmup = np.linspace(start_warmup_value, base, n_warmup)
    n_cosine = total - n_warmup
    i = np.arange(n_cosine)
    cosine = final + 0.5 * (base - final) * (1.0 + np.cos(np.pi * i / max(n_cosine, 1)))
    return np.concatenate((warmup, cosine))


def teacher_temp_schedule(warmup_temp: float, temp: float, warmup_epochs: int, epochs: int) -> np.ndarray:
    """(epochs,) per-epoch tau_t: linspace(warmup_temp, temp, warmup_epochs) (end included), then ``temp``."""
    if epochs < 1:
        raise ValueError(f"epochs must be >= 1, got {epochs}")
    if not 0 <= warmup_epochs <= epochs:
        raise ValueError(f"warmup_epochs must be in [0, epochs={epochs}], got {warmup_epochs}")
    return np.concatenate((np.linspace(warmup_temp, temp, warmup_epochs), np.full(epochs - warmup_epochs, float(temp))))


def lr_base(lr: float, total_batch: int) -> float:
    """Linear scaling rule (Goyal et al. 2017; DINO): the peak lr for a total batch, given ``lr`` for batch 256."""
    if total_batch < 1:
        raise ValueError(f"total_batch must be >= 1, got {total_batch}")
    return lr * total_batch / 256.0
