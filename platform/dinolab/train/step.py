"""One DINO optimisation step, shared by the training loop and the step benchmark.

The step, in the reference's order: the step's lr / weight decay into the optimizer (from the set-up's
schedules), teacher on the 2 global views and student on every view (under bf16/fp16 autocast on CUDA),
the configured objective, a finiteness check, backward (through the fp16 grad scaler when there is one),
per-parameter clipping, the head's last layer frozen in the first epoch(s), the optimizer step, the
teacher update (EMA / copy / previous iteration), the centre's EMA update, and the collapse diagnostics
(teacher entropy, teacher-student KL).
"""

from __future__ import annotations

import math
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Optional

import torch

from .setup import TrainingSetup, unwrap


class NonFiniteLoss(RuntimeError):
    """The loss is NaN or infinite: the trial stops and is marked failed with this message."""


@dataclass
class StepOutput:
    loss: float
    teacher_entropy: Optional[float]  # None for the MSE / InfoNCE objectives (no teacher distribution)
    kl: Optional[float]


def objective(cfg, criterion, region_criterion, s_out, t_out, teacher_temp: float, n_crops: int):
    """The configured objective; returns (loss, teacher probabilities or None, DINO view-level
    cross-entropy or None). The last differs from the loss only with EsViT's region term."""
    from dinolab.losses.variants import infonce_loss, mse_loss

    if cfg.dino.loss == "mse":
        return mse_loss(s_out.logits, t_out.logits, n_crops), None, None
    if cfg.dino.loss == "infonce":
        return infonce_loss(s_out.logits, t_out.logits, n_crops, cfg.dino.infonce_temp), None, None
    out = criterion(s_out.logits, t_out.logits, teacher_temp)
    loss = out.loss
    if region_criterion is not None:
        # EsViT: each pair's term is 0.5 view-level + 0.5 region-level cross-entropy.
        region = region_criterion(s_out.tokens, s_out.region_logits, t_out.tokens, t_out.region_logits, teacher_temp)
        loss = 0.5 * loss + 0.5 * region
    return loss, out.teacher_probs, out.loss


def train_step(setup: TrainingSetup, crops: list[torch.Tensor], step: int) -> StepOutput:
    """Global step ``step`` (epoch * steps_per_epoch + iteration) on normalised views ``crops`` (2 global
    (B, 3, G, G) first, then the locals (B, 3, L, L)).

    Raises NonFiniteLoss (before any parameter changes) when the loss is not finite, naming the epoch and step.
    """
    from dinolab.losses.diagnostics import kl_from_cross_entropy, teacher_entropy
    from dinolab.train.optim import cancel_last_layer_gradients, clip_gradients

    p, cfg = setup, setup.cfg
    epoch, it = divmod(step, p.steps_per_epoch)
    for i, group in enumerate(p.optimizer.param_groups):
        group["lr"] = float(p.lr[step])
        if i == 0:  # only the regularized group gets weight decay
            group["weight_decay"] = float(p.weight_decay[step])
    teacher_temp = float(p.teacher_temp[epoch])
    tokens = p.region_criterion is not None
    with torch.autocast(crops[0].device.type, dtype=p.amp_dtype) if p.amp_dtype else nullcontext():
        # Only the 2 global views reach the teacher; the student sees every view.
        t_out = p.teacher(crops[:2], with_tokens=tokens)
        s_out = p.student(crops, with_tokens=tokens)
        loss, teacher_probs, view_ce = objective(cfg, p.criterion, p.region_criterion, s_out, t_out, teacher_temp, p.n_crops)

    value = loss.item()
    if not math.isfinite(value):
        raise NonFiniteLoss(f"loss is {value} at epoch {epoch} step {it}")

    student = unwrap(p.student)
    p.optimizer.zero_grad(set_to_none=True)
    p.policy.before_step(student, p.teacher)
    p.scaler.scale(loss).backward()
    if cfg.train.clip_grad:
        p.scaler.unscale_(p.optimizer)
        clip_gradients(student, cfg.train.clip_grad)
    cancel_last_layer_gradients(student, epoch, cfg.train.freeze_last_layer)
    p.scaler.step(p.optimizer)
    p.scaler.update()
    p.policy.after_step(student, p.teacher, float(p.momentum[step]))
    if cfg.dino.loss == "ce":
        p.criterion.update_center(t_out.logits.float())
    if p.region_criterion is not None:
        p.region_criterion.update_center(torch.cat([r.float() for r in t_out.region_logits], dim=1))

    entropy = kl = None
    if teacher_probs is not None:  # Figure 7's diagnostics: h(P_t), and KL = CE - h (no second softmax)
        entropy = teacher_entropy(teacher_probs)
        kl = kl_from_cross_entropy(value if view_ce is loss else view_ce.item(), entropy)
    return StepOutput(value, entropy, kl)
