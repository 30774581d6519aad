"""Datasets (embedded synthetic shapes, ImageFolder, CIFAR) and DINO's multi-crop augmentation."""

from .datasets import build_dataset, check_data, data_fingerprint
from .multicrop import EvalTransform, MultiCropAugmentation, eval_transform
from .synthetic import CLASS_NAMES, SyntheticShapes

__all__ = [
    "CLASS_NAMES", "EvalTransform", "MultiCropAugmentation", "SyntheticShapes", "build_dataset", "check_data",
    "data_fingerprint", "eval_transform",
]
