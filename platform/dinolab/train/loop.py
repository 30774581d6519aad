"""The one DINO training loop, read top to bottom: data, networks, loss, optimizer, schedules,
resume, loop, end. It knows neither Ray nor MLflow: it talks to a ``Reporter``.

Follows facebookresearch/dino ``main_dino.py::train_dino`` / ``train_one_epoch`` (see
shared/reference/dino_reference.md sections 4-8): the teacher sees only the two global crops,
the student all crops; lr / weight decay / momentum are per-step arrays, the teacher temperature
a per-epoch array; per-parameter clipping; the head's last layer frozen in the first epoch(s).

Determinism: every epoch re-seeds python, numpy and torch from (seed, epoch) before its data
order and augmentations are drawn, so an interrupted run resumed from an epoch checkpoint ends
bit-identical to an uninterrupted one at the same thread count.
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
from torch import nn

from dinolab.config.schema import ExperimentConfig
from dinolab.memory import peak_rss_mb, reset_peak_rss
from dinolab.track import contract
from dinolab.track.reporter import Reporter

from . import checkpoint as ckpt
from .step import NonFiniteLoss, StepParts, train_step, unwrap  # noqa: F401 (NonFiniteLoss, unwrap: re-exported)
from .teacher import TeacherPolicy, copy_student_to_teacher

log = logging.getLogger(__name__)


class TrainingCancelled(RuntimeError):
    """A cancel request was seen; checkpoints are kept for a later launch."""


class InjectedFault(RuntimeError):
    """Raised once by ``train.fail_at_step`` (fault-injection tests)."""


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


def autocast_dtype(precision: str, device: torch.device) -> Optional[torch.dtype]:
    """bf16/fp16 autocast on CUDA; CPU always runs fp32 (CPU autocast is slower for these models)."""
    if device.type != "cuda" or precision == "fp32":
        return None
    if precision == "fp16":
        return torch.float16
    if precision == "bf16" or torch.cuda.is_bf16_supported():
        return torch.bfloat16
    return torch.float16


def available_cpus() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - not Linux
        return max(1, os.cpu_count() or 1)


def world() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


class _SubsetView(torch.utils.data.Dataset):
    """The first ``n`` items of a seeded permutation of a dataset (a fixed evaluation bank)."""

    def __init__(self, dataset, n: Optional[int], seed: int) -> None:
        self.dataset = dataset
        order = np.random.default_rng(seed).permutation(len(dataset)) if n and n < len(dataset) else np.arange(len(dataset))
        self.indices = order[: n or len(dataset)].tolist()

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i):
        return self.dataset[self.indices[i]]


# ----------------------------------------------------------------------------- building blocks


def build_networks(cfg: ExperimentConfig):
    """Student and teacher multi-crop networks (teacher: no drop path, no predictor)."""
    from dinolab.models.head import DINOHead
    from dinolab.models.multicrop import MultiCropNetwork
    from dinolab.models.registry import build_backbone

    d = cfg.dino

    def make(drop_path: float, predictor: bool) -> nn.Module:
        backbone = build_backbone(cfg.model, image_size=cfg.crops.global_size, drop_path_rate=drop_path)

        def head(with_predictor: bool) -> DINOHead:  # the pooled head and EsViT's dense head share every knob
            return DINOHead(backbone.embed_dim, d.out_dim, d.hidden_dim, d.bottleneck_dim, d.head_layers, d.norm_last_layer,
                            predictor=with_predictor, use_bn=d.use_bn_in_head)

        pooled_head = head(predictor)  # built first: the initial weights depend on the order
        return MultiCropNetwork(backbone, pooled_head, dense_head=head(False) if cfg.esvit.region_loss else None)

    student = make(cfg.model.drop_path_rate, d.predictor)
    teacher = make(0.0, False)
    copy_student_to_teacher(student, teacher)
    for p in teacher.parameters():
        p.requires_grad_(False)
    return student, teacher


def sync_batchnorms(net: nn.Module, world_size: int, device: torch.device) -> nn.Module:
    """BatchNorm layers (a ResNet backbone, ``dino.use_bn_in_head``) -> SyncBatchNorm when several CUDA workers
    train one batch, so their statistics are the whole batch's, as the reference code converts both networks.
    Unchanged on one worker, and on CPU workers (torch's SyncBatchNorm runs only on GPUs): there each worker
    normalises over its own share of the batch."""
    if world_size > 1 and device.type == "cuda":
        return nn.SyncBatchNorm.convert_sync_batchnorm(net)
    return net


def build_criterion(cfg: ExperimentConfig, n_crops: int):
    from dinolab.losses.dino import DINOLoss

    return DINOLoss(
        cfg.dino.out_dim,
        n_crops,
        student_temp=cfg.dino.student_temp,
        center_momentum=cfg.dino.center_momentum,
        centering=cfg.dino.centering,
        sinkhorn_iterations=cfg.dino.sinkhorn_iterations,
    )


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


def build_eval_sets(cfg: ExperimentConfig):
    from dinolab.data.datasets import build_dataset
    from dinolab.data.multicrop import eval_transform

    tf = eval_transform(cfg.eval_image_size)
    train = _SubsetView(build_dataset(cfg.data, "train", transform=tf), cfg.eval.max_train_images, seed=0)
    test = _SubsetView(build_dataset(cfg.data, "test", transform=tf), cfg.eval.max_test_images, seed=1)
    return train, test


def evaluate_knn(backbone: nn.Module, eval_sets, cfg: ExperimentConfig, device, num_classes: int):
    """Weighted k-NN top-1 (%) of a backbone's pooled features, and the features themselves."""
    from dinolab.eval.features import extract_features
    from dinolab.eval.knn import weighted_knn

    train_set, test_set = eval_sets
    tr_f, tr_y = extract_features(backbone, train_set, batch_size=256, device=device)
    te_f, te_y = extract_features(backbone, test_set, batch_size=256, device=device)
    top1 = weighted_knn(tr_f, tr_y, te_f, te_y, k=cfg.eval.knn_k, temperature=cfg.eval.knn_temperature, num_classes=num_classes)
    return float(top1), (tr_f, tr_y, te_f, te_y)


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
    from dinolab.train.optim import build_optimizer, param_groups
    from dinolab.train.schedules import cosine_schedule, teacher_temp_schedule

    workdir = Path(workdir)
    rank, world_size = world()
    is_main = rank == 0
    device = resolve_device(cfg.train.device)
    torch.set_num_threads(cfg.train.threads or available_cpus())
    reset_peak_rss()  # peak_rss_mb is this trial's, also in an actor process Ray Tune reuses
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)  # likewise cuda_peak_mb
    seed_everything(cfg.train.seed)

    # --- data: multi-crop views for training; a fixed eval bank for k-NN / linear probe.
    per_worker_batch = cfg.train.batch_size // world_size
    dataset, loader, finish_views = build_train_loader(cfg, per_worker_batch, cfg.train.seed)
    num_classes = len(dataset.classes)
    steps_per_epoch = len(loader)
    if cfg.train.steps_per_epoch:
        steps_per_epoch = min(steps_per_epoch, cfg.train.steps_per_epoch)
    if steps_per_epoch < 1:
        raise ValueError(f"train.batch_size={cfg.train.batch_size} is larger than the training set ({len(dataset)} images)")
    eval_sets = build_eval_sets(cfg) if is_main else None
    n_crops = 2 + cfg.crops.local_number

    # --- networks: student (drop path, optional predictor) and teacher (no gradients).
    seed_everything(cfg.train.seed)
    student, teacher = build_networks(cfg)
    student, teacher = student.to(device), teacher.to(device)
    student, teacher = sync_batchnorms(student, world_size, device), sync_batchnorms(teacher, world_size, device)
    if world_size > 1:
        student = nn.parallel.DistributedDataParallel(student, device_ids=[device.index] if device.type == "cuda" else None)
    policy = TeacherPolicy(cfg.dino.teacher)

    # --- loss: DINO cross-entropy (or a Table 7 variant), EsViT's region loss on top.
    criterion = build_criterion(cfg, n_crops).to(device)
    region_criterion = None
    if cfg.esvit.region_loss:
        from dinolab.losses.region import RegionLoss

        region_criterion = RegionLoss(cfg.dino.out_dim, student_temp=cfg.dino.student_temp, center_momentum=cfg.dino.center_momentum).to(device)

    # --- optimizer: weight decay on weights only (not biases / norms), values set every step.
    optimizer = build_optimizer(cfg.train.optimizer, param_groups(unwrap(student)))
    amp_dtype = autocast_dtype(cfg.train.precision, device)
    scaler = torch.amp.GradScaler("cuda", enabled=amp_dtype == torch.float16)
    parts = StepParts(cfg, student, teacher, criterion, region_criterion, optimizer, scaler, policy, amp_dtype, n_crops)

    # --- schedules: per-step lr (linear scaling by the total batch), wd, momentum; per-epoch tau_t.
    epochs = cfg.train.epochs
    lr_sched = cosine_schedule(cfg.train.lr * cfg.train.batch_size / 256.0, cfg.train.min_lr, epochs, steps_per_epoch, cfg.train.warmup_epochs)
    wd_sched = cosine_schedule(cfg.train.weight_decay, cfg.train.weight_decay_end, epochs, steps_per_epoch)
    mom_sched = cosine_schedule(cfg.dino.momentum, 1.0, epochs, steps_per_epoch)
    temp_sched = teacher_temp_schedule(cfg.dino.warmup_teacher_temp, cfg.dino.teacher_temp, cfg.dino.warmup_teacher_temp_epochs, epochs)

    # --- resume: continue from the latest epoch checkpoint of this trial.
    result = TrainResult(workdir=workdir, num_classes=num_classes)
    history: dict[str, list[float]] = {}
    start_epoch = 0
    latest = ckpt.latest_checkpoint(workdir) if resume else None
    if latest is not None:
        state = ckpt.load_checkpoint(latest)
        unwrap(student).load_state_dict(state["student"])
        teacher.load_state_dict(state["teacher"])
        criterion.load_state_dict(state["criterion"])
        if region_criterion is not None:
            region_criterion.load_state_dict(state["region_criterion"])
        optimizer.load_state_dict(state["optimizer"])
        scaler.load_state_dict(state["scaler"])
        ckpt.set_rng_state(state["rng"])
        history = state["history"]
        result.final.update(state.get("final", {}))
        start_epoch = state["epoch"] + 1
        log.info("resumed from %s (epoch %d done)", latest, state["epoch"])
    elif is_main and eval_sets is not None:
        # k-NN of the network at random init: the baseline every trained number is read against.
        knn0, _ = evaluate_knn(unwrap(teacher).backbone, eval_sets, cfg, device, num_classes)
        result.final[contract.KNN_TOP1_RANDOM_INIT] = knn0
        if unwrap(teacher).backbone.supports_attention:
            from dinolab.eval.attention import evaluate_attention

            attn0, _ = evaluate_attention(unwrap(teacher).backbone, eval_sets[1])
            result.final.update({contract.random_init_key(k): v for k, v in attn0.items()})
    result.start_epoch = start_epoch

    # --- loop.
    # Fault injection fires once per trial folder (a marker survives the retry's new process).
    fault_marker = workdir / "fault_injected"
    fault_pending = cfg.train.fail_at_step is not None and not fault_marker.exists()
    train_seconds, train_images = 0.0, 0
    wall_start = time.time()
    eval_cache = None
    progress = _progress(cfg, is_main, epochs, start_epoch)
    unreadable_images(dataset, start_epoch)  # counts from here on
    for epoch in range(start_epoch, epochs):
        seed_everything(epoch_seed(cfg.train.seed, epoch, rank))
        if hasattr(loader.sampler, "set_epoch"):
            loader.sampler.set_epoch(epoch)
        teacher_temp = float(temp_sched[epoch])
        sums = {contract.LOSS: 0.0, contract.TEACHER_ENTROPY: 0.0, contract.KL: 0.0}
        student.train()
        epoch_start = time.perf_counter()
        n_steps = 0
        for it, (crops, _) in enumerate(loader):
            if it >= steps_per_epoch:
                break
            step = epoch * steps_per_epoch + it
            if should_stop is not None and should_stop():
                raise TrainingCancelled(f"cancelled at epoch {epoch} step {it}")
            if fault_pending and step == cfg.train.fail_at_step:
                fault_marker.parent.mkdir(parents=True, exist_ok=True)
                fault_marker.touch()
                raise InjectedFault(f"train.fail_at_step={step}: injected fault")
            for i, group in enumerate(optimizer.param_groups):
                group["lr"] = float(lr_sched[step])
                if i == 0:  # only the regularized group gets weight decay
                    group["weight_decay"] = float(wd_sched[step])

            crops = [c.to(device, non_blocking=True) for c in crops]
            if finish_views is not None:
                crops = finish_views(crops)  # colour jitter, grayscale, blur, solarize, normalise: batched
            out = train_step(parts, crops, epoch=epoch, teacher_temp=teacher_temp, momentum=float(mom_sched[step]),
                             where=f"at epoch {epoch} step {it}")
            sums[contract.LOSS] += out.loss
            if out.teacher_entropy is not None:
                sums[contract.TEACHER_ENTROPY] += out.teacher_entropy
                sums[contract.KL] += out.kl
            n_steps += 1
            progress.update(epoch, it, steps_per_epoch, out.loss)

        policy.on_epoch_end(unwrap(student), teacher)
        bad_images = unreadable_images(dataset, epoch)
        elapsed = time.perf_counter() - epoch_start
        train_seconds += elapsed
        train_images += n_steps * cfg.train.batch_size

        metrics = {k: v / max(n_steps, 1) for k, v in sums.items()}
        if cfg.dino.loss != "ce":
            metrics.pop(contract.TEACHER_ENTROPY), metrics.pop(contract.KL)
        metrics.update({
            contract.LR: float(lr_sched[epoch * steps_per_epoch]),
            contract.WEIGHT_DECAY: float(wd_sched[epoch * steps_per_epoch]),
            contract.MOMENTUM: float(mom_sched[epoch * steps_per_epoch]),
            contract.TEACHER_TEMP: teacher_temp,
            contract.IMAGES_PER_S: n_steps * cfg.train.batch_size / max(elapsed, 1e-9),
        })
        if bad_images is not None:
            metrics[contract.UNREADABLE_IMAGES] = bad_images
        last_epoch = epoch == epochs - 1
        if is_main and ((epoch + 1) % cfg.eval.knn_every == 0 or last_epoch):
            metrics[contract.KNN_TOP1], eval_cache = evaluate_knn(unwrap(teacher).backbone, eval_sets, cfg, device, num_classes)
        for k, v in metrics.items():
            history.setdefault(k, []).append(float(v))
        history.setdefault("epoch", []).append(float(epoch))

        if is_main:
            reporter.log_metrics(metrics, step=epoch)
            state = {
                "epoch": epoch,
                "global_step": (epoch + 1) * steps_per_epoch,
                "student": unwrap(student).state_dict(),
                "teacher": teacher.state_dict(),
                "criterion": criterion.state_dict(),
                "region_criterion": region_criterion.state_dict() if region_criterion is not None else None,
                "optimizer": optimizer.state_dict(),
                "scaler": scaler.state_dict(),
                "rng": ckpt.rng_state(),
                "history": history,
                "final": dict(result.final),
            }
            ckpt.save_epoch_checkpoint(workdir, epoch, state, keep=cfg.train.keep_checkpoints)
            if on_epoch_end is not None:
                on_epoch_end(epoch, metrics)
        if world_size > 1:
            dist.barrier()
    progress.close()

    # --- end: final weights, linear probe on cached frozen features, cost figures.
    result.history = history
    result.epochs_done = epochs
    if is_main:
        final_dir = workdir / "final"
        ckpt.atomic_save(unwrap(teacher).backbone.state_dict(), final_dir / contract.WEIGHTS_FILE)
        ckpt.atomic_save(unwrap(student).backbone.state_dict(), final_dir / "student_backbone.pt")
        if eval_cache is None:  # resumed after the last epoch's evaluation
            _, eval_cache = evaluate_knn(unwrap(teacher).backbone, eval_sets, cfg, device, num_classes)
        if contract.KNN_TOP1 in history:
            result.final[contract.KNN_TOP1] = history[contract.KNN_TOP1][-1]
        if unwrap(teacher).backbone.supports_attention:
            # The paper's Figures 1/3/4: last-block [CLS] attention, and its Jaccard with object masks.
            from dinolab.eval.attention import evaluate_attention

            attn, figure = evaluate_attention(unwrap(teacher).backbone, eval_sets[1])
            result.final.update(attn)
            reporter.log_image(figure, contract.ATTENTION_IMAGE, step=epochs)
        if cfg.eval.linear:
            from dinolab.eval.linear import linear_probe

            tr_f, tr_y, te_f, te_y = eval_cache
            probe = linear_probe(
                tr_f, tr_y, te_f, te_y, num_classes, lrs=cfg.eval.linear_lrs, epochs=cfg.eval.linear_epochs,
                val_fraction=cfg.eval.val_fraction, seed=cfg.train.seed,
            )
            result.final[contract.LINEAR_TOP1] = float(probe["top1"])
            result.final[contract.LINEAR_VAL_TOP1] = float(probe["val_top1"])
        if train_seconds > 0:
            result.final[contract.THROUGHPUT] = train_images / train_seconds
        result.final[contract.TRAIN_SECONDS] = train_seconds
        result.final[contract.PEAK_RSS_MB] = peak_rss_mb()
        result.final[contract.CUDA_PEAK_MB] = torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else 0.0
        result.final[contract.LOOP_WALL_S] = time.time() - wall_start
    return result


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
