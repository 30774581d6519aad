"""The one DINO training loop, read top to bottom like facebookresearch/dino ``main_dino.py::train_dino`` /
``train_one_epoch`` (shared/reference/dino_reference.md sections 4-8): data, the training set-up (networks,
loss, optimizer, schedules: ``setup.build_training``), resume, the epochs, the end. It knows neither Ray nor
MLflow: it talks to a ``Reporter``. Evaluation is ``evaluation.Evaluator``'s; test-only fault injection
``faults``'.

Determinism: every epoch re-seeds python, numpy and torch from (seed, epoch) before its data order and
augmentations are drawn, so an interrupted run resumed from an epoch checkpoint ends bit-identical to an
uninterrupted one at the same thread count.
"""

from __future__ import annotations

import logging
import os
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

import numpy as np
import torch
import torch.distributed as dist

from dinolab.config.schema import ExperimentConfig
from dinolab.memory import peak_rss_mb, reset_peak_rss
from dinolab.track import contract
from dinolab.track.reporter import Reporter

from . import checkpoint as ckpt
from . import faults
from .evaluation import Evaluator
from .setup import TrainingSetup, build_training, unwrap
from .step import NonFiniteLoss, train_step  # noqa: F401 (NonFiniteLoss: re-exported)

log = logging.getLogger(__name__)


class TrainingCancelled(RuntimeError):
    """A cancel request was seen; checkpoints are kept for a later launch."""


class UnreadableImages(RuntimeError):
    """More than ``MAX_UNREADABLE_FRACTION`` of an epoch's training images could not be decoded."""


def unreadable_images(dataset, epoch: int) -> Optional[int]:
    """The epoch's count of unreadable training images (None: the data set cannot have any); raises
    ``UnreadableImages`` above ``dinolab.data.datasets.MAX_UNREADABLE_FRACTION`` of the images read."""
    from dinolab.data.datasets import MAX_UNREADABLE_FRACTION, take_unreadable

    counts = take_unreadable(dataset)
    if counts is None:
        return None
    bad, read, first = counts
    if bad > MAX_UNREADABLE_FRACTION * read:
        raise UnreadableImages(f"{bad} of the {read} training images read in epoch {epoch} could not be decoded "
                               f"(more than {MAX_UNREADABLE_FRACTION:.0%}); the first: {first}")
    return bad


@dataclass
class TrainResult:
    history: dict[str, list[float]] = field(default_factory=dict)
    final: dict[str, float] = field(default_factory=dict)
    epochs_done: int = 0
    start_epoch: int = 0
    workdir: Optional[Path] = None
    num_classes: int = 0


# ----------------------------------------------------------------------------- helpers


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)


def epoch_seed(seed: int, epoch: int, rank: int = 0) -> int:
    return (seed * 1_000_003 + epoch * 9_973 + rank * 101) % (2**31)


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"train.device={name} but CUDA is not available here")
    return device


def available_cpus() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - not Linux
        return max(1, os.cpu_count() or 1)


def world() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def build_train_loader(cfg: ExperimentConfig, per_worker_batch: int, seed: int):
    """(dataset, loader, on_device): ``on_device`` finishes the views once they are on the device
    (the fast path's batched colour operations; identity for the reference pipeline)."""
    from dinolab.data.datasets import build_dataset

    c = cfg.crops
    if cfg.data.augment == "fast":
        from dinolab.data.fast_multicrop import fast_multicrop

        # reuse_outputs: every consumer of ``on_device`` (this loop, the diagnostic scripts) is done with a
        # batch before it asks for the one after next, so stage 2 may write into that batch's buffers.
        geometry, photometric = fast_multicrop(c, reuse_outputs=True)
        dataset = build_dataset(cfg.data, "train", transform=geometry)
        on_device = photometric
    else:
        from dinolab.data.multicrop import MultiCropAugmentation

        aug = MultiCropAugmentation(c.global_size, c.local_size, c.local_number, tuple(c.global_scale), tuple(c.local_scale))
        dataset = build_dataset(cfg.data, "train", transform=aug)
        on_device = None
    rank, world_size = world()
    if world_size > 1:
        sampler = torch.utils.data.DistributedSampler(dataset, num_replicas=world_size, rank=rank, shuffle=True, seed=seed, drop_last=True)
    else:
        sampler = torch.utils.data.RandomSampler(dataset)
    loader = torch.utils.data.DataLoader(
        dataset,
        batch_size=per_worker_batch,
        sampler=sampler,
        num_workers=cfg.data.num_workers,
        pin_memory=torch.cuda.is_available(),
        drop_last=True,
        persistent_workers=False,
    )
    return dataset, loader, on_device


# ----------------------------------------------------------------------------- the loop


def train(
    cfg: ExperimentConfig,
    reporter: Reporter,
    *,
    workdir: Path,
    resume: bool = True,
    should_stop: Optional[Callable[[], bool]] = None,
    on_epoch_end: Optional[Callable[[int, dict], None]] = None,
) -> TrainResult:
    """Train DINO as ``cfg`` says, logging per-epoch metrics to ``reporter``.

    ``workdir`` holds the checkpoints; with ``resume`` the latest one is continued, and only the
    epochs after it are logged. ``should_stop`` is polled every step (a sweep's cancel marker).
    """
    workdir = Path(workdir)
    rank, world_size = world()
    is_main = rank == 0
    device = resolve_device(cfg.train.device)
    torch.set_num_threads(cfg.train.threads or available_cpus())
    reset_peak_rss()  # peak_rss_mb is this trial's, also in an actor process Ray Tune reuses
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)  # likewise cuda_peak_mb
    seed_everything(cfg.train.seed)

    # --- data: multi-crop views for training; a fixed evaluation bank for k-NN / linear probe.
    dataset, loader, finish_views = build_train_loader(cfg, cfg.train.batch_size // world_size, cfg.train.seed)
    steps_per_epoch = min(len(loader), cfg.train.steps_per_epoch or len(loader))
    if steps_per_epoch < 1:
        raise ValueError(f"train.batch_size={cfg.train.batch_size} is larger than the training set ({len(dataset)} images)")
    num_classes = len(dataset.classes)
    evaluator = Evaluator(cfg, device, num_classes) if is_main else None

    # --- networks, loss, optimizer, schedules, grad scaler, teacher policy.
    seed_everything(cfg.train.seed)
    setup = build_training(cfg, steps_per_epoch, device, world_size)
    backbone = setup.teacher.backbone  # what is evaluated and kept

    # --- resume from this trial's latest epoch checkpoint, else evaluate the network at random init.
    result = TrainResult(workdir=workdir, num_classes=num_classes)
    history: dict[str, list[float]] = {}
    latest = ckpt.latest_checkpoint(workdir) if resume else None
    if latest is not None:
        state = ckpt.load_checkpoint(latest)
        setup.load_state_dict(state)
        ckpt.set_rng_state(state["rng"])
        history, result.start_epoch = state["history"], state["epoch"] + 1
        result.final.update(state.get("final", {}))
        log.info("resumed from %s (epoch %d done)", latest, state["epoch"])
    elif evaluator is not None:
        result.final.update(evaluator.at_random_init(backbone))

    # --- the epochs.
    epochs = cfg.train.epochs
    interrupt = _interrupt(cfg, workdir, should_stop)
    progress = _progress(cfg, is_main, epochs, result.start_epoch)
    train_seconds, wall_start = 0.0, time.time()
    unreadable_images(dataset, result.start_epoch)  # counts from here on
    for epoch in range(result.start_epoch, epochs):
        seed_everything(epoch_seed(cfg.train.seed, epoch, rank))
        if hasattr(loader.sampler, "set_epoch"):
            loader.sampler.set_epoch(epoch)
        metrics, seconds = train_one_epoch(setup, loader, finish_views, epoch, interrupt, progress)
        train_seconds += seconds
        bad_images = unreadable_images(dataset, epoch)
        if bad_images is not None:
            metrics[contract.UNREADABLE_IMAGES] = bad_images
        if evaluator is not None and ((epoch + 1) % cfg.eval.knn_every == 0 or epoch == epochs - 1):
            metrics[contract.KNN_TOP1] = evaluator.knn(backbone)
        for k, v in metrics.items():
            history.setdefault(k, []).append(float(v))
        history.setdefault("epoch", []).append(float(epoch))
        if is_main:
            reporter.log_metrics(metrics, step=epoch)
            state = {"epoch": epoch, "global_step": (epoch + 1) * steps_per_epoch, **setup.state_dict(),
                     "rng": ckpt.rng_state(), "history": history, "final": dict(result.final)}
            ckpt.save_epoch_checkpoint(workdir, epoch, state, keep=cfg.train.keep_checkpoints)
            if on_epoch_end is not None:
                on_epoch_end(epoch, metrics)
        if world_size > 1:
            dist.barrier()
    progress.close()

    # --- the end: final weights, attention and linear probe, cost figures.
    result.history, result.epochs_done = history, epochs
    if is_main:
        ckpt.atomic_save(backbone.state_dict(), workdir / "final" / contract.WEIGHTS_FILE)
        ckpt.atomic_save(unwrap(setup.student).backbone.state_dict(), workdir / "final" / "student_backbone.pt")
        if contract.KNN_TOP1 in history:
            result.final[contract.KNN_TOP1] = history[contract.KNN_TOP1][-1]
        result.final.update(evaluator.at_end(backbone, reporter, step=epochs))
        images = (epochs - result.start_epoch) * steps_per_epoch * cfg.train.batch_size
        result.final.update(_costs(device, images, train_seconds, wall_start))
    return result


def train_one_epoch(setup: TrainingSetup, loader, finish_views, epoch: int, interrupt, progress) -> tuple[dict, float]:
    """One epoch of steps -> (its mean loss and collapse diagnostics, the schedules at its first step, throughput;
    the seconds it took)."""
    cfg, steps = setup.cfg, setup.steps_per_epoch
    sums = {contract.LOSS: 0.0, contract.TEACHER_ENTROPY: 0.0, contract.KL: 0.0}
    setup.student.train()
    start = time.perf_counter()
    for it, (crops, _) in enumerate(loader):
        if it >= steps:
            break
        step = epoch * steps + it
        interrupt(epoch, it, step)
        crops = [c.to(setup.device, non_blocking=True) for c in crops]
        if finish_views is not None:
            crops = finish_views(crops)  # colour jitter, grayscale, blur, solarize, normalise: batched
        out = train_step(setup, crops, step)
        sums[contract.LOSS] += out.loss
        if out.teacher_entropy is not None:
            sums[contract.TEACHER_ENTROPY] += out.teacher_entropy
            sums[contract.KL] += out.kl
        progress.update(epoch, it, steps, out.loss)
    setup.policy.on_epoch_end(unwrap(setup.student), setup.teacher)
    seconds = time.perf_counter() - start

    metrics = {k: v / steps for k, v in sums.items()}
    if cfg.dino.loss != "ce":  # no teacher distribution
        metrics.pop(contract.TEACHER_ENTROPY), metrics.pop(contract.KL)
    first = epoch * steps
    metrics.update({
        contract.LR: float(setup.lr[first]),
        contract.WEIGHT_DECAY: float(setup.weight_decay[first]),
        contract.MOMENTUM: float(setup.momentum[first]),
        contract.TEACHER_TEMP: float(setup.teacher_temp[epoch]),
        contract.IMAGES_PER_S: steps * cfg.train.batch_size / max(seconds, 1e-9),
    })
    return metrics, seconds


def _interrupt(cfg: ExperimentConfig, workdir: Path, should_stop: Optional[Callable[[], bool]]):
    """The check before every step: a cancel request (TrainingCancelled), or the fault a test asked for
    (``faults.InjectedFault``, once per trial folder)."""
    fault_at = faults.fault_step(cfg.name, workdir)

    def check(epoch: int, it: int, step: int) -> None:
        if should_stop is not None and should_stop():
            raise TrainingCancelled(f"cancelled at epoch {epoch} step {it}")
        if step == fault_at:
            faults.inject(workdir, step)

    return check


def _costs(device: torch.device, images: int, train_seconds: float, wall_start: float) -> dict[str, float]:
    """Throughput over the training steps (evaluation excluded), peak memory, the loop's wall time."""
    out = {contract.THROUGHPUT: images / train_seconds} if train_seconds > 0 else {}
    out.update({
        contract.TRAIN_SECONDS: train_seconds,
        contract.PEAK_RSS_MB: peak_rss_mb(),
        contract.CUDA_PEAK_MB: torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else 0.0,
        contract.LOOP_WALL_S: time.time() - wall_start,
    })
    return out


class _progress:
    """A tqdm bar over all steps of the run: main process only, when asked, and only on a terminal
    (Ray trial processes and CI logs get per-epoch log lines from the trial instead)."""

    def __init__(self, cfg, is_main, epochs, start_epoch):
        import sys

        self.bar = None
        if is_main and cfg.train.progress and sys.stderr.isatty():
            from tqdm.auto import tqdm

            self.bar = tqdm(total=epochs - start_epoch, desc=cfg.name, unit="epoch", leave=False, dynamic_ncols=True)
        self._epoch = start_epoch

    def update(self, epoch, it, steps, loss):
        if self.bar is None:
            return
        if it == steps - 1:
            self.bar.update(1)
        self.bar.set_postfix(epoch=epoch, step=f"{it + 1}/{steps}", loss=f"{loss:.3f}")

    def close(self):
        if self.bar is not None:
            self.bar.close()
