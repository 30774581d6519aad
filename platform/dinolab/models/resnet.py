"""ResNets (DINO's RN50 baseline) on timm's ``ResNet``.

The pooled feature is global average pooling of the last feature map (B, C); the tokens are
that map flattened, (B, h*w, C). Init follows torchvision's ResNet, which DINO uses: Kaiming
normal (fan_out) convolutions, BatchNorm 1/0, and no zero-init of the last BN of each block
(timm zero-inits it by default). ``small_stem`` replaces the 7x7 stride-2 stem and the max-pool
by one 3x3 stride-1 convolution (the CIFAR variant for 32 px images). As in DINO, ResNets get
no stochastic depth: ``drop_path_rate`` applies to the transformer families only.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import timm
import torch
from torch import nn

from .base import Backbone, reject_overrides
from .registry import register_backbone

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ResNetSpec:
    timm_name: str  # a ResNet alias has no structure to override


def _check(arch: str, model_cfg: Any) -> None:
    reject_overrides(
        arch, model_cfg, ("window_size", "embed_dim", "depths", "num_heads"),
        "a ResNet's width and depth are fixed by its name (resnet18, resnet50)",
    )


@register_backbone("resnet")
class ResNetBackbone(Backbone):
    """A timm ResNet behind the backbone contract; ``self.model`` is the timm module."""

    archs = {"resnet18": ResNetSpec("resnet18"), "resnet50": ResNetSpec("resnet50")}

    def __init__(self, model: nn.Module) -> None:
        super().__init__(model.num_features)
        self.model = model

    @classmethod
    def input_multiple(cls, arch: str, model_cfg: Any) -> int:
        _check(arch, model_cfg)
        return 1  # convolutions and adaptive pooling take any size

    @classmethod
    def create(cls, arch: str, model_cfg: Any, image_size: int, drop_path_rate: float) -> "ResNetBackbone":
        _check(arch, model_cfg)
        if drop_path_rate > 0:
            log.debug("%s: drop_path_rate=%g ignored (DINO trains ResNets without stochastic depth)", arch, drop_path_rate)
        model = timm.create_model(cls.archs[arch].timm_name, pretrained=False, num_classes=0, zero_init_last=False)
        if getattr(model_cfg, "small_stem", False):
            width = model.conv1.out_channels
            model.conv1 = nn.Conv2d(3, width, kernel_size=3, stride=1, padding=1, bias=False)
            nn.init.kaiming_normal_(model.conv1.weight, mode="fan_out", nonlinearity="relu")
            model.maxpool = nn.Identity()
        return cls(model)

    def forward_features(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, 3, H, W) -> (global average (B, C), last feature map as tokens (B, h*w, C))."""
        features = self.model.forward_features(x)  # (B, C, h, w)
        tokens = features.flatten(2).transpose(1, 2)
        return tokens.mean(dim=1), tokens
