"""ResNets (DINO's RN50 baseline) on timm's ``ResNet``.

The pooled feature is global average pooling of the last feature map (B, C); the tokens are
that map flattened, (B, h*w, C). Init follows torchvision's ResNet, which DINO uses: Kaiming
normal (fan_out) convolutions, BatchNorm 1/0, and no zero-init of the last BN of each block
(timm zero-inits it by default). ``small_stem`` replaces the 7x7 stride-2 stem and the max-pool
by one 3x3 stride-1 convolution (the CIFAR variant for 32 px images). ``embed_dim`` shrinks the
widths (the first stage's width, doubled at each of the four stages, as in ResNet: 64 -> 64/128/256/512)
and ``depths`` the blocks per stage (resnet18: [2, 2, 2, 2]), for small images on a CPU; the
pooled feature is then the last stage's width (x4 for resnet50's bottleneck blocks). The stem keeps
its 64 channels (timm fixes them for the plain stem; at 3x3 they cost little). As in DINO,
ResNets get no stochastic depth: ``drop_path_rate`` applies to the transformer families only.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import timm
import torch
from torch import nn

from .base import Backbone, reject_unused
from .registry import register_backbone

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ResNetSpec:
    timm_name: str
    depths: tuple[int, ...]  # blocks per stage, shown when model.depths is wrong


STAGES = 4
BASE_WIDTH = 64  # the first stage's width of both timm ResNets (doubled per stage)


def _structure(arch: str, model_cfg: Any) -> dict[str, Any]:
    """The ResNet ``arch`` builds after ``model_cfg``'s overrides, or ValueError naming the key.

    ``block`` (timm's model name: basic blocks for resnet18, bottlenecks for resnet50), ``layers``
    (blocks per stage), ``channels`` (stage widths) and ``small_stem``: the only place the
    defaults fill unset knobs.
    """
    reject_unused(
        ResNetBackbone, arch, model_cfg, "a ResNet has convolutions, not patches, attention windows or heads",
    )
    spec = ResNetBackbone.archs[arch]
    depths = model_cfg.depths
    if depths is not None and (len(depths) != STAGES or any(int(d) < 1 for d in depths)):
        raise ValueError(
            f"model.depths={list(depths)!r}: a ResNet takes {STAGES} positive block counts, one per stage, "
            f"e.g. {list(spec.depths)} (model.arch={arch})"
        )
    width = BASE_WIDTH if model_cfg.embed_dim is None else int(model_cfg.embed_dim)
    return dict(
        block=spec.timm_name,
        layers=[int(d) for d in (depths if depths is not None else spec.depths)],
        channels=[width * 2**i for i in range(STAGES)],  # (w, 2w, 4w, 8w)
        small_stem=bool(model_cfg.small_stem),
    )


@register_backbone("resnet")
class ResNetBackbone(Backbone):
    """A timm ResNet behind the backbone contract; ``self.model`` is the timm module."""

    archs = {"resnet18": ResNetSpec("resnet18", (2, 2, 2, 2)), "resnet50": ResNetSpec("resnet50", (3, 4, 6, 3))}
    knobs = ("embed_dim", "depths", "small_stem")

    def __init__(self, model: nn.Module) -> None:
        super().__init__(model.num_features)
        self.model = model

    @classmethod
    def resolve(cls, arch: str, model_cfg: Any) -> dict:
        return _structure(arch, model_cfg)

    @classmethod
    def uses_drop_path(cls, arch: str) -> bool:
        return False  # DINO trains ResNets without stochastic depth

    @classmethod
    def create(cls, arch: str, structure: dict, image_size: int, drop_path_rate: float) -> "ResNetBackbone":
        if drop_path_rate > 0:
            log.debug("%s: drop_path_rate=%g ignored (DINO trains ResNets without stochastic depth)", arch, drop_path_rate)
        model = timm.create_model(structure["block"], pretrained=False, num_classes=0, zero_init_last=False,
                                  layers=tuple(structure["layers"]), channels=tuple(structure["channels"]))
        if structure["small_stem"]:
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
