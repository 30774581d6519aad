"""Swin Transformers (EsViT's multi-stage backbones) on timm's ``SwinTransformer``.

Structure (dino_reference.md section 16): a patch embedding, then stages of shifted-window
attention blocks, each later stage starting with a 2x2 patch merging (4C -> 2C, tokens / 4).
The pooled feature is the mean of the last-stage tokens after the final LayerNorm (EsViT's
``forward_features``); the tokens are those last-stage tokens, (B, h*w, C).

Mixed crop sizes: the model is built for the global crop (``img_size``; it fixes each stage's
window and whether it shifts) with ``strict_img_size=False``, so timm rebuilds the shifted-window
mask for each input. Every input side must be a multiple of ``patch_size * 2**(n_stages - 1)``
(checked with timm 1.0.31: otherwise some patch merging gets an odd grid and zero-pads it, mixing
padding into the tokens). A stage grid that is not a multiple of the window is zero-padded inside
the block (e.g. 96 px crops with window 7, as in EsViT); timm pads after the cyclic shift, which
differs from the reference Swin/EsViT order (pad, then shift) only in the padded border windows.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import timm
import torch
from torch import nn

from .base import Backbone, check_side, reject_unused
from .registry import register_backbone


@dataclass(frozen=True)
class SwinSpec:
    timm_name: str
    embed_dim: int
    depths: tuple[int, ...]
    num_heads: tuple[int, ...]
    patch_size: int = 4
    window_size: int = 7


def _structure(arch: str, spec: SwinSpec, model_cfg: Any) -> dict:
    """The timm keyword arguments for ``arch`` after ``model_cfg``'s overrides (ValueError if invalid).

    The only place a Swin's defaults (the spec's patch, window, width, depths, heads) fill unset knobs.
    """
    reject_unused(SwinBackbone, arch, model_cfg, "small_stem is a ResNet stem")
    depths = model_cfg.depths
    num_heads = model_cfg.num_heads
    if num_heads is not None and isinstance(num_heads, int):
        raise ValueError(f"model.num_heads={num_heads!r}: a Swin takes one int per stage, e.g. [3, 6, 12, 24] (model.arch={arch})")
    depths = tuple(int(d) for d in depths) if depths is not None else spec.depths
    heads = tuple(int(h) for h in num_heads) if num_heads is not None else spec.num_heads
    if not depths or min(depths) < 1:
        raise ValueError(f"model.depths={list(depths)!r}: a Swin takes one positive depth per stage (model.arch={arch})")
    if len(heads) != len(depths):
        raise ValueError(
            f"model.num_heads={list(heads)} and model.depths={list(depths)} must have one entry per stage (model.arch={arch})"
        )
    embed_dim = int(spec.embed_dim if model_cfg.embed_dim is None else model_cfg.embed_dim)
    for stage, h in enumerate(heads):
        width = embed_dim * 2**stage
        if h < 1 or width % h:
            raise ValueError(
                f"model.num_heads[{stage}]={h} must be >= 1 and divide stage {stage}'s width {width} "
                f"(model.embed_dim={embed_dim} * 2^{stage}; model.arch={arch})"
            )
    return dict(
        patch_size=int(spec.patch_size if model_cfg.patch_size is None else model_cfg.patch_size),
        window_size=int(spec.window_size if model_cfg.window_size is None else model_cfg.window_size),
        embed_dim=embed_dim,
        depths=list(depths),
        num_heads=list(heads),
    )


@register_backbone("swin")
class SwinBackbone(Backbone):
    """A timm SwinTransformer behind the backbone contract; ``self.model`` is the timm module."""

    archs = {
        "swin_tiny": SwinSpec("swin_tiny_patch4_window7_224", 96, (2, 2, 6, 2), (3, 6, 12, 24)),
        "swin_small": SwinSpec("swin_small_patch4_window7_224", 96, (2, 2, 18, 2), (3, 6, 12, 24)),
        "swin_base": SwinSpec("swin_base_patch4_window7_224", 128, (2, 2, 18, 2), (4, 8, 16, 32)),
    }

    def __init__(self, model: nn.Module, multiple: int) -> None:
        super().__init__(model.num_features)
        self.model = model
        self.multiple = int(multiple)

    knobs = ("patch_size", "window_size", "embed_dim", "depths", "num_heads")

    @classmethod
    def resolve(cls, arch: str, model_cfg: Any) -> dict:
        # Every Swin alias is timm's SwinTransformer with the same block recipe: these five values are the network.
        return _structure(arch, cls.archs[arch], model_cfg)

    @classmethod
    def multiple(cls, structure: dict) -> int:
        return structure["patch_size"] * 2 ** (len(structure["depths"]) - 1)

    @classmethod
    def create(cls, arch: str, structure: dict, image_size: int, drop_path_rate: float) -> "SwinBackbone":
        multiple = cls.multiple(structure)
        kwargs = {**structure, "depths": tuple(structure["depths"]), "num_heads": tuple(structure["num_heads"])}
        model = timm.create_model(
            cls.archs[arch].timm_name,
            pretrained=False,
            num_classes=0,
            img_size=image_size,  # fixes each stage's window / shift for the global crop
            strict_img_size=False,  # other sizes: the shifted-window mask is built per input
            global_pool="avg",
            drop_path_rate=drop_path_rate,  # explicit: timm's Swin default is 0.1, the teacher needs 0
            **kwargs,
        )
        return cls(model, multiple)

    def forward_features(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, 3, H, W) -> (mean of the last-stage tokens (B, C), last-stage tokens (B, h*w, C)).

        h = H / (patch * 2^(stages-1)); tokens are taken after the final LayerNorm.
        """
        height, width = x.shape[-2:]
        for what, side in (("input height", height), ("input width", width)):
            check_side(self.family, side, self.multiple, what)
        features = self.model.forward_features(x)  # (B, h, w, C), NHWC, after the final norm
        tokens = features.flatten(1, 2)
        return tokens.mean(dim=1), tokens
