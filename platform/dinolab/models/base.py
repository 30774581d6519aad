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
its ``archs`` maps the arch aliases it owns to their structure, ``knobs`` names the ``ModelConfig``
structure fields it reads, and three class methods turn a ``ModelConfig`` into the resolved structure
(the values the built network really has: the trial id hashes them), an input-size multiple and a module.
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

    # The ModelConfig structure knobs this family reads; any other one that is set is refused.
    knobs: ClassVar[tuple[str, ...]] = ()

    @classmethod
    def resolve(cls, arch: str, model_cfg: Any) -> dict:
        """The structure ``arch`` builds after ``model_cfg``'s overrides and the family's defaults
        (JSON values; part of the trial id). ValueError naming the key when an override is invalid."""
        raise NotImplementedError

    @classmethod
    def multiple(cls, structure: dict) -> int:
        """Every input side must be a multiple of this, given ``resolve``'s structure (1: any size)."""
        return 1

    @classmethod
    def uses_drop_path(cls, arch: str) -> bool:
        """Whether ``model.drop_path_rate`` reaches the network (else it is not part of the trial id)."""
        return True

    @classmethod
    def create(cls, arch: str, structure: dict, image_size: int, drop_path_rate: float) -> "Backbone":
        """Build the family's module for ``arch`` with ``resolve``'s structure, never pretrained."""
        raise NotImplementedError


# Every structure knob of ModelConfig: a family refuses the ones it does not list in ``knobs``.
STRUCTURE_KNOBS = ("patch_size", "window_size", "embed_dim", "depths", "num_heads", "small_stem")


def reject_unused(cls: type[Backbone], arch: str, model_cfg: Any, reason: str) -> None:
    """ValueError when a structure knob outside ``cls.knobs`` is set (not None) for ``arch``."""
    for field in STRUCTURE_KNOBS:
        value = getattr(model_cfg, field, None)
        if field not in cls.knobs and value is not None:
            allowed = ", ".join(f"model.{k}" for k in cls.knobs) or "none"
            raise ValueError(
                f"model.{field}={value!r} does not apply to model.arch={arch} ({reason}); "
                f"this family takes {allowed} (leave model.{field} unset / null)"
            )


def check_side(arch: str, size: int, multiple: int, what: str) -> None:
    """ValueError when ``size`` is not a positive multiple of ``multiple`` (the one divisibility check)."""
    if size <= 0 or size % multiple:
        raise ValueError(f"{what}={size} is not a multiple of {multiple}, which model.arch={arch} needs")
