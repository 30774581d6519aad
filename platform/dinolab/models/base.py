"""The backbone contract every family implements (see docs/contracts.md, "models/").

A backbone maps images ``x (B, 3, H, W)`` to

- ``forward(x) -> (B, D)``: the pooled feature the DINO head and the k-NN / linear evaluations use
  (ViT: the normalised [CLS] token; Swin: the mean of the last-stage tokens after the final norm,
  as EsViT; ResNet: global average pooling);
- ``forward_features(x) -> (pooled (B, D), tokens (B, N, D))``: the same pooled feature and the
  last-stage tokens (ViT: patch tokens only, no [CLS]; Swin: the last stage's N = h*w tokens;
  ResNet: the last feature map flattened to N = h*w) for EsViT's region-level loss;
- ``get_last_selfattention`` / ``get_intermediate_layers``: ViT only (``supports_attention``).

A family is one subclass registered with ``dinolab.models.registry.register_backbone(family)``;
its ``archs`` maps the arch aliases it owns to their structure, and two class methods turn a
``ModelConfig`` into an input-size constraint and a built module.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from torch import nn


class Backbone(nn.Module):
    """Base class of the backbone families; subclasses fill in ``forward_features``."""

    family: ClassVar[str] = ""
    supports_attention: ClassVar[bool] = False
    # alias -> the family's description of that architecture (timm model name and structure)
    archs: ClassVar[dict[str, Any]] = {}

    def __init__(self, embed_dim: int) -> None:
        super().__init__()
        self.embed_dim = int(embed_dim)

    # --- the contract -------------------------------------------------------------------------

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) -> pooled feature (B, D)."""
        return self.forward_features(x)[0]

    def forward_features(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, 3, H, W) -> (pooled (B, D), last-stage tokens (B, N, D))."""
        raise NotImplementedError

    def get_last_selfattention(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) -> attention of the last block (B, heads, 1 + N, 1 + N); ViT only."""
        raise NotImplementedError(
            f"{type(self).__name__} (family {self.family!r}) has no [CLS] self-attention; "
            "supports_attention is False (use a vit_* arch)"
        )

    def get_intermediate_layers(self, x: torch.Tensor, n: int = 1) -> list[torch.Tensor]:
        """(B, 3, H, W) -> the last n blocks' outputs, each through the final norm, (B, 1 + N, D); ViT only."""
        raise NotImplementedError(
            f"{type(self).__name__} (family {self.family!r}) has no transformer blocks with a [CLS] token; "
            "get_intermediate_layers needs a vit_* arch"
        )

    # --- what the registry calls -------------------------------------------------------------

    @classmethod
    def input_multiple(cls, arch: str, model_cfg: Any) -> int:
        """Every input side must be a multiple of this (validates the overrides as well)."""
        raise NotImplementedError

    @classmethod
    def create(cls, arch: str, model_cfg: Any, image_size: int, drop_path_rate: float) -> "Backbone":
        """Build the family's module for ``arch`` with ``model_cfg``'s overrides, never pretrained."""
        raise NotImplementedError


def reject_overrides(arch: str, model_cfg: Any, fields: tuple[str, ...], reason: str) -> None:
    """ValueError when one of ``fields`` is set (not None / not False) for an arch that has no use for it."""
    for field in fields:
        value = getattr(model_cfg, field, None)
        if value is not None and value is not False:
            raise ValueError(f"model.{field}={value!r} does not apply to model.arch={arch}: {reason}")


def check_side(arch: str, size: int, multiple: int, what: str) -> None:
    """ValueError when ``size`` is not a positive multiple of ``multiple``."""
    if size <= 0 or size % multiple:
        raise ValueError(f"{what}={size} is not a multiple of {multiple}, which model.arch={arch} needs")
