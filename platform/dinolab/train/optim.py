"""The optimizer and its parameter groups, per-parameter gradient clipping, last-layer freezing (DINO ``utils.py``)."""

from __future__ import annotations

import torch
from torch import nn


def param_groups(model: nn.Module) -> list[dict]:
    """[{params: regularized}, {params: not_regularized, weight_decay: 0.0}] over trainable parameters.

    Regularized (group 0; the loop writes the weight-decay schedule into it): every parameter whose name
    does not end in ".bias" and which is not 1-D, so cls_token, pos_embed and a trainable head
    weight_g (K, 1) are decayed, as in DINO. Not regularized: biases and 1-D parameters (norm weights).
    """
    regularized, not_regularized = [], []
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        if name.endswith(".bias") or param.dim() == 1:
            not_regularized.append(param)
        else:
            regularized.append(param)
    return [{"params": regularized}, {"params": not_regularized, "weight_decay": 0.0}]


def build_optimizer(kind: str, groups: list[dict]) -> torch.optim.Optimizer:
    """AdamW (DINO's) or SGD with momentum 0.9 over ``groups``; lr and weight decay are set by the loop every step.

    AdamW is torch's fused kernel (CPU and CUDA): one pass over each parameter instead of a dozen
    element-wise ops, the same update to float rounding; about 7x faster on the 17M-parameter head of
    out_dim 65536 on a CPU.
    """
    if kind == "adamw":
        return torch.optim.AdamW(groups, fused=True)
    if kind == "sgd":
        return torch.optim.SGD(groups, lr=0, momentum=0.9)
    raise ValueError(f"train.optimizer must be adamw or sgd, got {kind!r}")


@torch.no_grad()
def clip_gradients(model: nn.Module, clip: float) -> list[float]:
    """Clip each parameter's gradient to L2 norm ``clip`` on its own (not a global norm, as DINO).

    For every parameter with a gradient: n = ||grad||_2; if clip / (n + 1e-6) < 1 the gradient is
    multiplied by that factor. ``clip`` = 0 turns clipping off (norms are still returned).
    Returns the pre-clipping norms in ``named_parameters`` order.
    """
    if clip < 0:
        raise ValueError(f"clip must be >= 0 (0 = off), got {clip}")
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    if not grads:
        return []
    norms = [g.detach().norm(2).float() for g in grads]  # 0-d tensors: one host sync at the end, not one per parameter
    if clip > 0:
        for g, n in zip(grads, norms):
            g.mul_((clip / (n + 1e-6)).clamp(max=1.0).to(g.dtype))
    return torch.stack([n.to(norms[0].device) for n in norms]).tolist()


def cancel_last_layer_gradients(model: nn.Module, epoch: int, freeze_last_layer: int) -> None:
    """While epoch < freeze_last_layer, drop the gradient of every parameter named "*last_layer*"
    so the optimizer skips it entirely (no update, no weight decay). Call after backward, before step."""
    if epoch >= freeze_last_layer:
        return
    for name, param in model.named_parameters():
        if "last_layer" in name:
            param.grad = None
