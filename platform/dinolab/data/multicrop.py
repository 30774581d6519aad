"""DINO's multi-crop augmentation and the evaluation transform.

``MultiCropAugmentation`` follows DINO's ``DataAugmentationDINO`` (paper Section 3.1 and Appendix; the
table in shared/reference/dino_reference.md section 9). Every view applies, after its crop, the shared
``flip_and_color_jitter`` = RandomHorizontalFlip(0.5) -> ColorJitter(0.4, 0.4, 0.2, 0.1) with p = 0.8 ->
RandomGrayscale(0.2), then its own blur / solarize, then ToTensor and ImageNet normalisation:

    view       crop                                          blur p   solarize p
    global 1   RandomResizedCrop(global_size, global_scale)  1.0      0
    global 2   RandomResizedCrop(global_size, global_scale)  0.1      0.2
    local xN   RandomResizedCrop(local_size, local_scale)    0.5      0

Crops use bicubic interpolation; blur is PIL's GaussianBlur with radius ~ U(0.1, 2.0) * blur_radius_scale;
solarize is PIL's (threshold 128). All randomness comes from torch's generator (``torch.rand``), so seeding
torch (as DataLoader does per worker) makes the views reproducible.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Callable, Optional, Sequence

import torch
from PIL import Image, ImageFilter, ImageOps
from torchvision import transforms as T
from torchvision.transforms import InterpolationMode

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
BLUR_RADIUS = (0.1, 2.0)
# Resize-then-crop ratio of the standard ImageNet evaluation (256 -> 224).
EVAL_RESIZE_RATIO = 256 / 224

if TYPE_CHECKING:
    from ..config.schema import CropsConfig


def _uniform() -> float:
    """One draw of U(0, 1) from torch's global generator."""
    return float(torch.rand(()))


class RandomGaussianBlur:
    """PIL Gaussian blur applied with probability ``p``; radius ~ U(radius_min, radius_max) * radius_scale.

    PIL image -> PIL image (same size).
    """

    def __init__(self, p: float, radius_min: float = BLUR_RADIUS[0], radius_max: float = BLUR_RADIUS[1],
                 radius_scale: float = 1.0) -> None:
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"blur probability must be in [0, 1], got {p}")
        self.p, self.radius_min, self.radius_max, self.radius_scale = p, radius_min, radius_max, radius_scale

    def __call__(self, img: Image.Image) -> Image.Image:
        if self.p < 1.0 and _uniform() >= self.p:  # p = 1 draws nothing: always blur
            return img
        radius = (self.radius_min + (self.radius_max - self.radius_min) * _uniform()) * self.radius_scale
        return img.filter(ImageFilter.GaussianBlur(radius=radius))

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(p={self.p}, radius=U({self.radius_min}, {self.radius_max})"
                f" * {self.radius_scale:.4g})")


class RandomSolarize:
    """PIL solarize (invert pixels >= 128) with probability ``p``. PIL image -> PIL image."""

    def __init__(self, p: float) -> None:
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"solarize probability must be in [0, 1], got {p}")
        self.p = p

    def __call__(self, img: Image.Image) -> Image.Image:
        if _uniform() < self.p:
            return ImageOps.solarize(img)
        return img

    def __repr__(self) -> str:
        return f"{type(self).__name__}(p={self.p})"


def flip_and_color_jitter() -> T.Compose:
    """DINO's shared photometric block: hflip 0.5, ColorJitter(0.4, 0.4, 0.2, 0.1) with p 0.8, grayscale 0.2."""
    return T.Compose([
        T.RandomHorizontalFlip(p=0.5),
        T.RandomApply([T.ColorJitter(brightness=0.4, contrast=0.4, saturation=0.2, hue=0.1)], p=0.8),
        T.RandomGrayscale(p=0.2),
    ])


def normalize() -> T.Compose:
    """PIL (H, W, 3) uint8 -> Tensor (3, H, W) float, ImageNet mean/std normalised."""
    return T.Compose([T.ToTensor(), T.Normalize(IMAGENET_MEAN, IMAGENET_STD)])


def resolve_blur_radius_scale(global_size: int, blur_radius_scale: Optional[float]) -> float:
    """The multiplier of the U(0.1, 2.0) blur radius: given, or global_size/224 clipped to <= 1."""
    if blur_radius_scale is None:
        blur_radius_scale = min(global_size / 224.0, 1.0)
    if blur_radius_scale <= 0:
        raise ValueError(f"blur_radius_scale must be > 0, got {blur_radius_scale}")
    return float(blur_radius_scale)


class MultiCropAugmentation:
    """PIL image -> ``[global1, global2, local1..localN]``: 2 tensors (3, G, G) then N tensors (3, L, L), float32.

    Args:
        global_size: G, the global crops' side (paper 224; CIFAR 32).
        local_size: L, the local crops' side (paper 96; CIFAR 16).
        local_number: N >= 0 local crops (paper code 8; 0 turns multi-crop off).
        global_scale, local_scale: RandomResizedCrop area ranges (paper (0.4, 1) and (0.05, 0.4)).
        blur_radius_scale: multiplies the U(0.1, 2.0) blur radius. DINO's radius was chosen for 224 px
            crops; on a 32 px crop a radius of up to 2 px erases most of the content, so the default is
            ``min(global_size / 224, 1)`` (1 at the paper's size, 1/7 for 32 px). Pass 1.0 for the
            paper's radius at any size.
    """

    def __init__(self, global_size: int, local_size: int, local_number: int, global_scale: Sequence[float],
                 local_scale: Sequence[float], blur_radius_scale: Optional[float] = None) -> None:
        if local_number < 0:
            raise ValueError(f"local_number must be >= 0, got {local_number}")
        self.global_size, self.local_size, self.local_number = int(global_size), int(local_size), int(local_number)
        self.blur_radius_scale = resolve_blur_radius_scale(global_size, blur_radius_scale)
        bicubic = InterpolationMode.BICUBIC

        def view(size: int, scale: Sequence[float], extra: list) -> T.Compose:
            crop = T.RandomResizedCrop(size, scale=tuple(scale), interpolation=bicubic)
            return T.Compose([crop, flip_and_color_jitter(), *extra, normalize()])

        def blur(p: float) -> RandomGaussianBlur:
            return RandomGaussianBlur(p, radius_scale=self.blur_radius_scale)

        self.global1 = view(global_size, global_scale, [blur(1.0)])
        self.global2 = view(global_size, global_scale, [blur(0.1), RandomSolarize(0.2)])
        self.local = view(local_size, local_scale, [blur(0.5)])

    @classmethod
    def from_config(cls, crops: "CropsConfig", blur_radius_scale: Optional[float] = None) -> "MultiCropAugmentation":
        """Built from the ``crops`` section of an experiment."""
        return cls(crops.global_size, crops.local_size, crops.local_number, crops.global_scale, crops.local_scale,
                   blur_radius_scale=blur_radius_scale)

    def __call__(self, img: Image.Image) -> list[torch.Tensor]:
        crops = [self.global1(img), self.global2(img)]
        crops.extend(self.local(img) for _ in range(self.local_number))
        return crops

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(global={self.global_size}, local={self.local_size} x {self.local_number}, "
                f"blur_radius_scale={self.blur_radius_scale:.4g})")


class EvalTransform:
    """PIL image -> Tensor (3, S, S) float, normalised: the deterministic evaluation view.

    An image whose shorter side exceeds S is resized (bicubic) so its shorter side is round(S * 256/224)
    and centre-cropped to S (the paper's 256 -> 224 protocol); a smaller or equal one is resized so its
    shorter side is S and centre-cropped (a square S x S image passes unchanged).
    """

    def __init__(self, image_size: int) -> None:
        if image_size < 1:
            raise ValueError(f"image_size must be >= 1, got {image_size}")
        self.image_size = int(image_size)
        self._large = T.Compose([T.Resize(round(image_size * EVAL_RESIZE_RATIO), interpolation=InterpolationMode.BICUBIC),
                                 T.CenterCrop(image_size)])
        self._small = T.Compose([T.Resize(image_size, interpolation=InterpolationMode.BICUBIC), T.CenterCrop(image_size)])
        self._normalize = normalize()

    def __call__(self, img: Image.Image) -> torch.Tensor:
        if img.mode != "RGB":
            img = img.convert("RGB")
        if min(img.size) > self.image_size:
            img = self._large(img)
        elif img.size != (self.image_size, self.image_size):
            img = self._small(img)
        return self._normalize(img)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.image_size})"


def eval_transform(image_size: int) -> Callable[[Image.Image], torch.Tensor]:
    """The evaluation transform: PIL -> Tensor (3, image_size, image_size) float (see ``EvalTransform``)."""
    return EvalTransform(image_size)
