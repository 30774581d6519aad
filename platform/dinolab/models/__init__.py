"""Backbones (registry over timm: ViT, Swin, ResNet, any timm model), the DINO head, the multi-crop forward.

Importing this package is cheap: timm is imported when a family is first needed.
"""

from .base import Backbone
from .head import DINOHead, WeightNormLinear
from .multicrop import MultiCropNetwork, MultiCropOutput
from .registry import build_backbone, family_of, input_multiple, list_backbones, register_backbone, resolve_arch

__all__ = [
    "Backbone", "DINOHead", "MultiCropNetwork", "MultiCropOutput", "WeightNormLinear", "build_backbone", "family_of",
    "input_multiple", "list_backbones", "register_backbone", "resolve_arch",
]
