"""The one training set-up: everything a DINO step reads, built from a config.

``build_training`` follows facebookresearch/dino ``main_dino.py::train_dino`` (shared/reference/
dino_reference.md sections 4-7), in its order: student and teacher networks (SyncBatchNorm across several
CUDA workers, the student DDP-wrapped), the DINO loss (or a Table 7 variant) with EsViT's region loss on
top, the optimizer (weight decay on weights only), the per-step schedules (lr with the linear scaling rule,
weight decay, teacher momentum) and the per-epoch teacher temperature, the fp16 grad scaler and autocast
dtype, the teacher policy. ``train()`` and the step benchmark both run what it returns, through
``dinolab.train.step.train_step``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np
import torch
from torch import nn

from dinolab.config.schema import ExperimentConfig

from .teacher import TeacherPolicy, copy_student_to_teacher


def unwrap(model: nn.Module) -> nn.Module:
    """The module inside a DistributedDataParallel wrapper (or the module itself)."""
    return model.module if hasattr(model, "module") else model


def build_networks(cfg: ExperimentConfig):
    """Student and teacher multi-crop networks (teacher: no drop path, no predictor, no gradients, the student's weights)."""
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

    d = cfg.dino
    return DINOLoss(d.out_dim, n_crops, student_temp=d.student_temp, center_momentum=d.center_momentum,
                    centering=d.centering, sinkhorn_iterations=d.sinkhorn_iterations)


def autocast_dtype(precision: str, device: torch.device) -> Optional[torch.dtype]:
    """bf16/fp16 autocast on CUDA; CPU always runs fp32 (CPU autocast is slower for these models)."""
    if device.type != "cuda" or precision == "fp32":
        return None
    if precision == "fp16":
        return torch.float16
    if precision == "bf16" or torch.cuda.is_bf16_supported():
        return torch.bfloat16
    return torch.float16


@dataclass
class TrainingSetup:
    """What a step reads and updates, and the schedules it is indexed into."""

    cfg: ExperimentConfig
    student: nn.Module  # DDP-wrapped on several workers (``unwrap`` gives the network)
    teacher: nn.Module  # never wrapped, never receives gradients
    criterion: nn.Module  # DINOLoss (holds the centre)
    region_criterion: Optional[nn.Module]  # EsViT RegionLoss, or None
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler  # enabled only for fp16 autocast
    amp_dtype: Optional[torch.dtype]  # None: fp32
    policy: TeacherPolicy
    device: torch.device
    n_crops: int  # 2 global + the local crops
    steps_per_epoch: int
    lr: np.ndarray  # (epochs * steps_per_epoch,) per global step
    weight_decay: np.ndarray  # (epochs * steps_per_epoch,)
    momentum: np.ndarray  # (epochs * steps_per_epoch,) the teacher's EMA momentum
    teacher_temp: np.ndarray  # (epochs,) per epoch

    def state_dict(self) -> dict:
        """What an epoch checkpoint holds of the set-up (the loop adds epoch, RNG and history)."""
        return {
            "student": unwrap(self.student).state_dict(),
            "teacher": self.teacher.state_dict(),
            "criterion": self.criterion.state_dict(),
            "region_criterion": self.region_criterion.state_dict() if self.region_criterion is not None else None,
            "optimizer": self.optimizer.state_dict(),
            "scaler": self.scaler.state_dict(),
        }

    def load_state_dict(self, state: dict) -> None:
        unwrap(self.student).load_state_dict(state["student"])
        self.teacher.load_state_dict(state["teacher"])
        self.criterion.load_state_dict(state["criterion"])
        if self.region_criterion is not None:
            self.region_criterion.load_state_dict(state["region_criterion"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scaler.load_state_dict(state["scaler"])


def build_training(cfg: ExperimentConfig, steps_per_epoch: int, device: torch.device, world_size: int = 1) -> TrainingSetup:
    """The set-up for ``cfg`` on ``device``, one of ``world_size`` workers sharing ``cfg.train.batch_size``.

    The networks' initial weights are drawn from torch's global RNG: seed it first.
    """
    from .optim import build_optimizer, param_groups
    from .schedules import cosine_schedule, lr_base, teacher_temp_schedule

    t, d = cfg.train, cfg.dino
    n_crops = 2 + cfg.crops.local_number
    # Networks: student (drop path, optional predictor) and teacher.
    student, teacher = build_networks(cfg)
    student = sync_batchnorms(student.to(device), world_size, device)
    teacher = sync_batchnorms(teacher.to(device), world_size, device)
    if world_size > 1:
        student = nn.parallel.DistributedDataParallel(student, device_ids=[device.index] if device.type == "cuda" else None)
    # Loss: DINO cross-entropy (or a Table 7 variant), EsViT's region loss on top.
    criterion = build_criterion(cfg, n_crops).to(device)
    region_criterion = None
    if cfg.esvit.region_loss:
        from dinolab.losses.region import RegionLoss

        region_criterion = RegionLoss(d.out_dim, student_temp=d.student_temp, center_momentum=d.center_momentum).to(device)
    # Optimizer: weight decay on weights only (not biases / norms); lr and weight decay set every step.
    optimizer = build_optimizer(t.optimizer, param_groups(unwrap(student)))
    amp_dtype = autocast_dtype(t.precision, device)
    # Schedules: per-step lr (linear scaling by the total batch), wd, momentum; per-epoch tau_t.
    epochs = t.epochs
    return TrainingSetup(
        cfg=cfg, student=student, teacher=teacher, criterion=criterion, region_criterion=region_criterion,
        optimizer=optimizer, scaler=torch.amp.GradScaler("cuda", enabled=amp_dtype == torch.float16), amp_dtype=amp_dtype,
        policy=TeacherPolicy(d.teacher), device=device, n_crops=n_crops, steps_per_epoch=steps_per_epoch,
        lr=cosine_schedule(lr_base(t.lr, t.batch_size), t.min_lr, epochs, steps_per_epoch, t.warmup_epochs),
        weight_decay=cosine_schedule(t.weight_decay, t.weight_decay_end, epochs, steps_per_epoch),
        momentum=cosine_schedule(d.momentum, 1.0, epochs, steps_per_epoch),
        teacher_temp=teacher_temp_schedule(d.warmup_teacher_temp, d.teacher_temp, d.warmup_teacher_temp_epochs, epochs),
    )
