"""A fast, two-stage version of DINO's multi-crop augmentation (same distribution of views as ``multicrop``).

The reference ``MultiCropAugmentation`` runs torchvision's PIL transforms one image at a time (colour jitter
alone is ~40% of its cost). This module splits the same recipe (dino_reference.md section 9) in two:

Stage 1, ``FastMultiCropGeometry`` (per image, in the Dataset / DataLoader workers): decode to a uint8
tensor (3, H, W); per view draw the RandomResizedCrop box exactly as ``RandomResizedCrop.get_params`` does
(area fraction ~ U(scale), log aspect ratio ~ U(log 3/4, log 4/3), 10 tries, then the central fallback),
resize it bicubic + antialias to the view's side and flip it with p = 0.5. Views stay uint8 (cheap to
collate, pin and copy).

Stage 2, ``BatchedPhotometric`` (batched, on the training device, after collation): per image

    ColorJitter(0.4, 0.4, 0.2, 0.1) with p = 0.8, the four operations in a random order (torchvision's
    ``fn_idx = randperm(4)``) -> RandomGrayscale p = 0.2 -> GaussianBlur p_view, radius ~ U(0.1, 2) * s
    -> Solarize p_view -> x / 255, ImageNet normalisation,

    view     blur p   solarize p
    global1  1.0      0
    global2  0.1      0.2
    local    0.5      0

Moving the flip before the colour operations changes nothing: every colour operation is per pixel except
contrast (image mean: flip invariant) and the blur (symmetric kernel: commutes with a flip).

The colour operations follow torchvision.transforms.v2's uint8 kernels: values are kept as float32 holding
integers 0..255 and truncated after every operation as a uint8 result would be, so each operation equals
``v2.functional.adjust_*`` on uint8 up to float rounding. The blur reproduces PIL's ``GaussianBlur(radius)``:
three passes of an "extended box" filter per axis whose variance is radius^2 (Gwosdek et al. 2011), each
pass rounded to integers as PIL does, with edge pixels replicated.

All randomness comes from torch (a ``torch.Generator`` passed in, else the global generator of the device),
so seeding reproduces the views. Use in a training loop::

    geometry, photometric = fast_multicrop(cfg.crops)
    dataset = build_dataset(cfg.data, "train", transform=geometry)   # items: (list of uint8 views, label)
    for views, _ in loader:                                          # views: list of uint8 (B, 3, S, S)
        crops = photometric([v.to(device, non_blocking=True) for v in views])   # float, normalised
"""

from __future__ import annotations

import collections
import functools
import itertools
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Optional, Sequence, Union

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from .multicrop import BLUR_RADIUS, IMAGENET_MEAN, IMAGENET_STD, resolve_blur_radius_scale

if TYPE_CHECKING:
    from ..config.schema import CropsConfig

# RandomResizedCrop defaults (torchvision): aspect ratio range and tries before the central fallback.
RATIO = (3.0 / 4.0, 4.0 / 3.0)
CROP_TRIES = 10
HFLIP_P = 0.5
# ColorJitter(brightness, contrast, saturation, hue) applied with JITTER_P, then RandomGrayscale(GRAY_P).
JITTER = (0.4, 0.4, 0.2, 0.1)
JITTER_P = 0.8
GRAY_P = 0.2
# Per-view probabilities of the paper's table.
BLUR_P = {"global1": 1.0, "global2": 0.1, "local": 0.5}
SOLARIZE_P = {"global1": 0.0, "global2": 0.2, "local": 0.0}
SOLARIZE_THRESHOLD = 128
# ITU-R 601-2 luma weights as torchvision's rgb_to_grayscale uses them.
LUMA = (0.2989, 0.587, 0.114)
BLUR_PASSES = 3  # PIL's GaussianBlur = 3 box passes per axis
# torchvision's float -> uint8 conversion multiplies by 256 - eps and truncates.
TO_UINT8_SCALE = 255.0 + 1.0 - 1e-3
# Stage 2 on CPU works through the batch in chunks of about this many values (1 MB of float32: cache-sized).
CPU_CHUNK_ELEMENTS = 2 ** 18
# CPU images of at least this many values take the "programs" strategy (see BatchedPhotometric.apply).
PROGRAM_MIN_ELEMENTS = 3 * 48 * 48


# ----------------------------------------------------------------------------------------------- stage 1


@dataclass(frozen=True)
class CropBox:
    """One view's geometry: the crop box in input pixels and whether the resized crop is mirrored."""

    top: int
    left: int
    height: int
    width: int
    flip: bool


def to_uint8_tensor(img: Union[Image.Image, torch.Tensor, np.ndarray]) -> torch.Tensor:
    """PIL image (any mode) | uint8 array (H, W, 3) | uint8 tensor (3, H, W) -> uint8 tensor (3, H, W).

    Images and arrays come back as a (3, H, W) view of (H, W, 3) memory (channels last), which the
    antialiased resize reads faster than a planar copy.
    """
    if isinstance(img, Image.Image):
        if img.mode != "RGB":
            img = img.convert("RGB")
        img = np.array(img)  # a writable copy: torch refuses to wrap PIL's read-only buffer quietly
    if isinstance(img, np.ndarray):
        if img.dtype != np.uint8 or img.ndim != 3 or img.shape[2] != 3:
            raise ValueError(f"expected a uint8 array (H, W, 3), got {img.dtype} {img.shape}")
        return torch.from_numpy(img).permute(2, 0, 1)
    if isinstance(img, torch.Tensor):
        if img.dtype != torch.uint8 or img.ndim != 3 or img.shape[0] != 3:
            raise ValueError(f"expected a uint8 tensor (3, H, W), got {img.dtype} {tuple(img.shape)}")
        return img
    raise ValueError(f"expected a PIL image, a numpy array or a tensor, got {type(img).__name__}")


def resized_crop_box(height: int, width: int, scale: Sequence[float], u: Sequence[float],
                     ratio: Sequence[float] = RATIO) -> tuple[int, int, int, int]:
    """torchvision's ``RandomResizedCrop.get_params`` driven by given uniforms -> (top, left, h, w).

    ``u`` holds 2 * CROP_TRIES + 2 draws of U(0, 1): per try (area, log aspect) and then (top, left).
    Try t: target area = H W U(scale), aspect = exp(U(log r0, log r1)), w = round(sqrt(area * aspect)),
    h = round(sqrt(area / aspect)); accepted if 0 < w <= W and 0 < h <= H, with top ~ U{0..H-h},
    left ~ U{0..W-w}. After CROP_TRIES failures: the central crop of the whole image clipped to the ratio range.
    """
    area = height * width
    lo, hi = math.log(ratio[0]), math.log(ratio[1])
    for t in range(CROP_TRIES):
        target = area * (scale[0] + (scale[1] - scale[0]) * u[2 * t])
        aspect = math.exp(lo + (hi - lo) * u[2 * t + 1])
        w = int(round(math.sqrt(target * aspect)))
        h = int(round(math.sqrt(target / aspect)))
        if 0 < w <= width and 0 < h <= height:
            # floor(U * n) is uniform on 0..n-1, as torch.randint(0, n) is.
            top = min(int(u[2 * CROP_TRIES] * (height - h + 1)), height - h)
            left = min(int(u[2 * CROP_TRIES + 1] * (width - w + 1)), width - w)
            return top, left, h, w
    in_ratio = width / height
    if in_ratio < min(ratio):
        w, h = width, int(round(width / min(ratio)))
    elif in_ratio > max(ratio):
        h, w = height, int(round(height * max(ratio)))
    else:
        w, h = width, height
    return (height - h) // 2, (width - w) // 2, h, w


def _check_scale(name: str, scale: Sequence[float]) -> tuple[float, float]:
    lo, hi = float(scale[0]), float(scale[1])
    if not 0.0 < lo <= hi <= 1.0:
        raise ValueError(f"{name} must satisfy 0 < low <= high <= 1, got ({lo}, {hi})")
    return lo, hi


class FastMultiCropGeometry:
    """Stage 1: image -> ``[global1, global2, local1..localN]`` uint8 views, (3, G, G) x 2 then (3, L, L) x N.

    Per view: RandomResizedCrop (torchvision's sampling; bicubic, antialiased resize of the uint8 tensor),
    then a horizontal flip with p = 0.5. Arguments as ``MultiCropAugmentation`` (``blur_radius_scale`` is
    accepted for a common signature; the blur is stage 2's).
    """

    def __init__(self, global_size: int, local_size: int, local_number: int, global_scale: Sequence[float],
                 local_scale: Sequence[float], blur_radius_scale: Optional[float] = None) -> None:
        if local_number < 0:
            raise ValueError(f"local_number must be >= 0, got {local_number}")
        if global_size < 1 or local_size < 1:
            raise ValueError(f"global_size and local_size must be >= 1, got {global_size}, {local_size}")
        self.global_size, self.local_size, self.local_number = int(global_size), int(local_size), int(local_number)
        self.global_scale = _check_scale("global_scale", global_scale)
        self.local_scale = _check_scale("local_scale", local_scale)
        # (side, scale) per view, in output order.
        self.views = ([(self.global_size, self.global_scale)] * 2
                      + [(self.local_size, self.local_scale)] * self.local_number)

    def sample(self, height: int, width: int, generator: Optional[torch.Generator] = None) -> list[CropBox]:
        """The boxes and flips of every view for an image of (height, width)."""
        n_u = 2 * CROP_TRIES + 3  # tries, (top, left), flip
        u = torch.rand((len(self.views), n_u), generator=generator, dtype=torch.float64).tolist()
        boxes = []
        for (_, scale), uv in zip(self.views, u):
            top, left, h, w = resized_crop_box(height, width, scale, uv)
            boxes.append(CropBox(top, left, h, w, uv[-1] < HFLIP_P))
        return boxes

    def apply(self, image: torch.Tensor, boxes: Sequence[CropBox]) -> list[torch.Tensor]:
        """uint8 (3, H, W) and one box per view -> the uint8 views (3, S, S)."""
        out = []
        for (size, _), b in zip(self.views, boxes):
            # torch's uint8 antialiased bicubic kernel (what torchvision's resized_crop calls) runs its
            # vectorised path on channels-last memory: (1, 3, h, w) with strides (., 1, 3w, 3).
            crop = image[:, b.top:b.top + b.height, b.left:b.left + b.width]
            crop = crop.unsqueeze(0).contiguous(memory_format=torch.channels_last)
            # F.interpolate(crop, size=(size, size), mode="bicubic", antialias=True), minus its Python argument
            # checks (~10% of this loop at 12 views per image): the same kernel, align_corners False, no scales.
            view = torch._C._nn._upsample_bicubic2d_aa(crop, (size, size), False, None)[0]  # (3, S, S), channels last
            hwc = view.permute(1, 2, 0).numpy()  # (S, S, 3), no copy
            if b.flip:
                hwc = hwc[:, ::-1]
            # Planar (3, S, S) for collation: numpy's transposing copy of uint8 is ~4x faster than torch's.
            out.append(torch.from_numpy(np.ascontiguousarray(hwc.transpose(2, 0, 1))))
        return out

    def views_and_boxes(self, img, generator: Optional[torch.Generator] = None
                        ) -> tuple[list[torch.Tensor], list[CropBox]]:
        """Like ``__call__`` and also the sampled ``CropBox`` of each view (for tests and diagnostics)."""
        image = to_uint8_tensor(img)
        boxes = self.sample(image.shape[-2], image.shape[-1], generator)
        return self.apply(image, boxes), boxes

    def __call__(self, img, generator: Optional[torch.Generator] = None) -> list[torch.Tensor]:
        return self.views_and_boxes(img, generator)[0]

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(global={self.global_size} {self.global_scale}, "
                f"local={self.local_size} {self.local_scale} x {self.local_number})")


# ------------------------------------------------------------------------------- stage 2: the operations
# Every operation takes x: float (n, 3, H, W) holding integers 0..255 (a uint8 image as float) and per-image
# factors (n,), and returns the same kind of tensor: what torchvision's uint8 kernel returns, as float.
# They avoid torch.where, remainder and bool-tensor arithmetic, which run 10-30x slower per element on
# CPU than plain arithmetic, clamp, floor, abs, min/max and lerp.


def _per_image(f: torch.Tensor) -> torch.Tensor:
    return f.reshape(-1, 1, 1, 1)


def grayscale(x: torch.Tensor) -> torch.Tensor:
    """(n, 3, H, W) -> (n, 1, H, W): L = 0.2989 R + 0.587 G + 0.114 B, not rounded."""
    r, g, b = x.unbind(1)
    return torch.mul(r, LUMA[0]).add_(g, alpha=LUMA[1]).add_(b, alpha=LUMA[2]).unsqueeze(1)


def rgb_to_grayscale(x: torch.Tensor) -> torch.Tensor:
    """RandomGrayscale's output: floor(L) in all 3 channels, (n, 3, H, W)."""
    return grayscale(x).floor_().expand_as(x).contiguous()


def adjust_brightness(x: torch.Tensor, f: torch.Tensor) -> torch.Tensor:
    """Blend with black: floor(clamp(f x, 0, 255))."""
    return (x * _per_image(f)).clamp_(0.0, 255.0).floor_()


def _blend(x: torch.Tensor, other: torch.Tensor, f: torch.Tensor) -> torch.Tensor:
    """floor(clamp(f x + (1 - f) other, 0, 255)): torchvision's blend of uint8 images; other (n, 1, H|1, W|1)."""
    f = _per_image(f)
    # (1 - f) other is computed on ``other``'s single channel, then added over the 3 channels. Two plain
    # passes (mul, then an in-place broadcast add) run ~3x faster on CPU than one broadcast addcmul.
    return torch.mul(x, f).add_(other * (1.0 - f)).clamp_(0.0, 255.0).floor_()


def adjust_contrast(x: torch.Tensor, f: torch.Tensor) -> torch.Tensor:
    """Blend with the image mean of floor(L)."""
    return _blend(x, grayscale(x).floor_().mean(dim=(1, 2, 3), keepdim=True), f)


def adjust_saturation(x: torch.Tensor, f: torch.Tensor) -> torch.Tensor:
    """Blend with the image's own floor(L)."""
    return _blend(x, grayscale(x).floor_(), f)


def _is_max(channel: torch.Tensor, maxc: torch.Tensor) -> torch.Tensor:
    """1.0 where ``channel`` equals the max, else 0.0 (integer values: a smaller one is smaller by >= 1)."""
    return (channel - maxc).add_(1.0).clamp_(min=0.0)


def adjust_hue(x: torch.Tensor, f: torch.Tensor) -> torch.Tensor:
    """Shift the HSV hue by f (a fraction of the circle, |f| <= 0.5); S and V are kept.

    V = max, C = max - min, hue in sixths h6 = (g - b) / C if R is the max, else 2 + (b - r) / C if G is,
    else 4 + (r - g) / C. With H' = (h6 + 6 f) mod 6, HSV -> RGB is channel_n = V - C clamp(min(k, 4 - k), 0, 1),
    k = (n + H') mod 6, n = 5, 3, 1 for R, G, B; on H' in [0, 6) the three ramps are
    R: 2 - |H' - 3|,  G: 2 - min(H' + 1, |H' - 5|),  B: 2 - min(|H' - 1|, 7 - H')  (then clamped to [0, 1]).
    Computed on the 0..255 scale; the result is converted to uint8 as torchvision converts [0, 1] floats:
    floor(y * (256 - 1e-3)).
    """
    r, g, b = x.unbind(1)  # (n, H, W) each
    maxc = torch.maximum(torch.maximum(r, g), b)
    chroma = maxc - torch.minimum(torch.minimum(r, g), b)
    # Numerators are integers, so the lerps with 0/1 weights pick one branch exactly; R wins ties, then G.
    h6 = torch.lerp((r - g).add_(chroma, alpha=4.0), (b - r).add_(chroma, alpha=2.0), _is_max(g, maxc))
    h6 = torch.lerp(h6, g - b, _is_max(r, maxc))
    # C = 0 only where r = g = b, whose numerators are 0: any finite divisor works there.
    h6.div_(chroma.clamp_min(1e-6)).add_(6.0 * f.reshape(-1, 1, 1))
    h6.sub_(torch.mul(h6, 1.0 / 6.0).floor_(), alpha=6.0)  # mod 6 -> [0, 6)
    dist_r = (h6 - 3.0).abs_()
    dist_g = torch.minimum(h6 + 1.0, (h6 - 5.0).abs_())
    dist_b = torch.minimum((h6 - 1.0).abs_(), h6.neg_().add_(7.0))
    # V - C clamp(2 - d, 0, 1) = (V - 2C) + C clamp(d, 1, 2), with the uint8 conversion's scale folded in.
    scale = TO_UINT8_SCALE / 255.0
    base = maxc.sub_(chroma, alpha=2.0).mul_(scale)
    chroma.mul_(scale)
    out = torch.empty_like(x)
    for c, dist in enumerate((dist_r, dist_g, dist_b)):
        torch.addcmul(base, chroma, dist.clamp_(1.0, 2.0), out=out[:, c])
    return out.floor_()


@functools.lru_cache(maxsize=None)
def _const(values: tuple[float, ...], device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """A per-channel constant (1, 3, 1, 1) on a device, made once."""
    return torch.tensor(values, device=device, dtype=dtype).view(1, -1, 1, 1)


def solarize(x: torch.Tensor) -> torch.Tensor:
    """PIL's ImageOps.solarize(threshold=128): x -> 255 - x where x >= 128; as 127.5 - |x - 127.5| on integers."""
    centre = SOLARIZE_THRESHOLD - 0.5
    return (x - centre).abs_().neg_().add_(centre)


def box_blur_radius(radius: torch.Tensor, passes: int = BLUR_PASSES) -> tuple[torch.Tensor, torch.Tensor]:
    """PIL's Gaussian radius -> extended box (l, a): weights 1 on |i| <= l, a on |i| = l + 1, sum 2l + 1 + 2a.

    Each of the ``passes`` boxes has variance radius^2 / passes, so their composition has variance radius^2:
    sigma2 = r^2 / p, L = sqrt(12 sigma2 + 1), l = floor((L - 1) / 2),
    a = (2l + 1)(l (l + 1) - 3 sigma2) / (6 (sigma2 - (l + 1)^2)).
    """
    s2 = radius.double() ** 2 / passes
    l = torch.floor((torch.sqrt(12.0 * s2 + 1.0) - 1.0) / 2.0)
    a = (2 * l + 1) * (l * (l + 1) - 3 * s2) / (6 * (s2 - (l + 1) ** 2))
    return l, a


def _box_weights(radius: torch.Tensor, half: int) -> torch.Tensor:
    """(n,) radii -> (n, 2 half + 1) normalised extended-box kernels (zero beyond each image's support)."""
    l, a = box_blur_radius(radius)
    offsets = torch.arange(-half, half + 1, device=radius.device, dtype=torch.float64).abs()  # (K,)
    l, a = l.unsqueeze(1), a.unsqueeze(1)
    w = (offsets <= l).double() + a * (offsets == l + 1).double()
    return (w / (2 * l + 1 + 2 * a)).float()


def _max_box_half(radius_max: float) -> int:
    """The widest box half-width (l + 1) any radius <= radius_max needs."""
    l, _ = box_blur_radius(torch.tensor([radius_max], dtype=torch.float64))
    return int(l.item()) + 1


def _box_pass(x: torch.Tensor, w: torch.Tensor, dim: int) -> torch.Tensor:
    """One rounded extended-box pass along ``dim`` (-1 or -2) with replicated edges.

    x (n, c, H, W); w (n, 2 half + 1) symmetric per-image kernels -> round(sum_k w_k x[clip(i + k - half)]).
    Shifted slices are added in place, and the out-of-image taps (the replicated edge pixel) onto the
    first / last k rows or columns: no padded copy. A single image takes Python-float weights.
    """
    half, size = (w.shape[1] - 1) // 2, x.shape[dim]
    if x.shape[0] == 1:
        weights = w[0].tolist()

        def add(dst, src, k):
            dst.add_(src, alpha=weights[k])
    else:
        cols = w.view(-1, w.shape[1], 1, 1, 1).unbind(1)  # K of (n, 1, 1, 1)

        def add(dst, src, k):
            dst.addcmul_(src, cols[k])
    out = x * (weights[half] if x.shape[0] == 1 else cols[half])
    for k in range(1, min(half, size - 1) + 1):
        left, right = half - k, half + k  # taps reading x[i - k] and x[i + k]
        add(out.narrow(dim, k, size - k), x.narrow(dim, 0, size - k), left)
        add(out.narrow(dim, 0, size - k), x.narrow(dim, k, size - k), right)
        add(out.narrow(dim, 0, k), x.narrow(dim, 0, 1), left)  # x[i - k] left of the image: x[0]
        add(out.narrow(dim, size - k, k), x.narrow(dim, size - 1, 1), right)  # right of it: x[-1]
    for k in range(size, half + 1):  # a kernel wider than the image: for every i, i - k clips to 0, i + k to -1
        add(out, x.narrow(dim, 0, 1), half - k)
        add(out, x.narrow(dim, size - 1, 1), half + k)
    return out.round_()


def gaussian_blur(x: torch.Tensor, radius: torch.Tensor, half: Optional[int] = None) -> torch.Tensor:
    """PIL's ``ImageFilter.GaussianBlur(radius)`` per image: (n, 3, H, W), radius (n,) -> (n, 3, H, W).

    3 extended-box passes along W, then 3 along H, each with replicated edges and rounded to integers.
    ``half``: kernel half-width >= the largest l + 1 (computed from the radii when not given).
    """
    if x.shape[0] == 0:
        return x
    if half is None:
        half = _max_box_half(float(radius.max()))
    return _blur_with(x, _box_weights(radius, half).to(x.device, x.dtype))


def _blur_with(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """x (n, 3, H, W) blurred with per-image extended-box kernels w (n, K): 3 passes along W, then along H."""
    for dim in (-1, -2):
        for _ in range(BLUR_PASSES):
            x = _box_pass(x, w, dim)
    return x


def normalize(x: torch.Tensor, out: Optional[torch.Tensor] = None) -> torch.Tensor:
    """(n, 3, H, W) 0..255 -> (x / 255 - mean) / std with ImageNet's mean and std, as x / (255 std) - mean / std."""
    scale = _const(tuple(1.0 / (255.0 * s) for s in IMAGENET_STD), x.device, x.dtype)
    shift = _const(tuple(-m / s for m, s in zip(IMAGENET_MEAN, IMAGENET_STD)), x.device, x.dtype)
    # mul then in-place add: ~3x faster on CPU than addcmul with two broadcast (1, 3, 1, 1) operands.
    return torch.mul(x, scale, out=out).add_(shift)


_JITTER_OPS = (adjust_brightness, adjust_contrast, adjust_saturation, adjust_hue)  # torchvision's fn_idx order


# ------------------------------------------------------------------------------------ stage 2: batching


@dataclass
class PhotometricParams:
    """Per-image draws for n images (all tensors on one device).

    jitter (n,) bool; order (n, 4) long, a permutation of 0..3 = (brightness, contrast, saturation, hue)
    giving the operation at each position; factors (n, 4) float; gray (n,) bool; blur (n,) bool;
    radius (n,) float (already times blur_radius_scale); solarize (n,) bool.
    """

    jitter: torch.Tensor
    order: torch.Tensor
    factors: torch.Tensor
    gray: torch.Tensor
    blur: torch.Tensor
    radius: torch.Tensor
    solarize: torch.Tensor


class _Plan:
    """The params as Python lists (one device sync), to pick each operation's images without tensor ops."""

    def __init__(self, p: PhotometricParams) -> None:
        self.jitter, self.gray = p.jitter.tolist(), p.gray.tolist()
        self.blur, self.solarize = p.blur.tolist(), p.solarize.tolist()
        self.order = p.order.tolist()
        self.box_l = box_blur_radius(p.radius)[0].long().tolist()

    def jitter_rows(self, rows: range, pos: int, op: int) -> list[int]:
        return [i for i in rows if self.jitter[i] and self.order[i][pos] == op]

    def program(self, i: int) -> tuple:
        """Image i's sequence of operations: (jitter order or (), box l if blurred else -1, gray, solarize).

        Sorting by it puts images of one jitter order together and, among them, those of one blur width
        (the blur is the stage with the most passes, so it gets the longest runs).
        """
        return (tuple(self.order[i]) if self.jitter[i] else (), self.box_l[i] if self.blur[i] else -1,
                self.gray[i], self.solarize[i])


def _runs(values: list) -> list[tuple[int, int, object]]:
    """Maximal stretches of equal consecutive values: [1, 1, 2] -> [(0, 2, 1), (2, 3, 2)] as (start, stop, value)."""
    runs, start = [], 0
    for value, group in itertools.groupby(values):
        stop = start + sum(1 for _ in group)
        runs.append((start, stop, value))
        start = stop
    return runs


def _on_run(x: torch.Tensor, a: int, b: int, fn) -> torch.Tensor:
    """x with images a..b-1 replaced by fn(x[a:b]); the whole tensor is not copied back."""
    if a == 0 and b == x.shape[0]:
        return fn(x)
    x[a:b] = fn(x[a:b])
    return x


def _on_rows(x: torch.Tensor, rows: list[int], start: int, fn) -> torch.Tensor:
    """x (chunk of images start..) with fn(x_sel, rows) applied to the given absolute rows."""
    if not rows:
        return x
    if len(rows) == x.shape[0]:  # the whole chunk: no gather / scatter
        return fn(x, rows)
    idx = torch.tensor([i - start for i in rows], device=x.device)
    return x.index_copy_(0, idx, fn(x.index_select(0, idx), rows))


class BatchedPhotometric:
    """Stage 2: uint8 views ``[global1, global2, local1..localN]`` (B, 3, S, S) -> float, normalised, same shapes.

    Per image and view: ColorJitter(0.4, 0.4, 0.2, 0.1) with p 0.8 in a random order of its four operations,
    grayscale p 0.2, blur (p 1.0 / 0.1 / 0.5 for global1 / global2 / locals, radius ~ U(0.1, 2) *
    blur_radius_scale), solarize (p 0.2 on global2), ImageNet normalisation. Runs on the views' device
    without gradients. Arguments as ``MultiCropAugmentation``; ``blur_radius_scale`` defaults to
    ``min(global_size / 224, 1)`` like the reference.

    The probabilities are attributes (``jitter_p``, ``gray_p``, ``blur_p``, ``solarize_p``) so a test can
    build a deliberately wrong recipe.

    ``reuse_outputs`` (CPU only): each call writes into the output buffers of the call before the previous
    one (double buffering) instead of fresh memory. A fresh output (148 MB for a batch of 64 of the paper
    recipe) is mapped page by page on its first write, one page fault per 4 KB, which cost ~10% of this
    stage on CPU. Only for a consumer that is done with a batch once it asks for the batch after the next
    one, as the training loop is; it keeps one more batch of outputs alive. CUDA's caching allocator already
    hands out warm memory, so there it changes nothing.
    """

    def __init__(self, global_size: int, local_size: int, local_number: int,
                 global_scale: Sequence[float] = (0.4, 1.0), local_scale: Sequence[float] = (0.05, 0.4),
                 blur_radius_scale: Optional[float] = None, reuse_outputs: bool = False) -> None:
        if local_number < 0:
            raise ValueError(f"local_number must be >= 0, got {local_number}")
        self.global_size, self.local_size, self.local_number = int(global_size), int(local_size), int(local_number)
        self.blur_radius_scale = resolve_blur_radius_scale(global_size, blur_radius_scale)
        self.jitter_p, self.gray_p = JITTER_P, GRAY_P
        self.jitter = JITTER
        self.blur_p, self.solarize_p = dict(BLUR_P), dict(SOLARIZE_P)
        self._blur_half = _max_box_half(BLUR_RADIUS[1] * self.blur_radius_scale)
        self.reuse_outputs = bool(reuse_outputs)
        self._spare: collections.deque = collections.deque(maxlen=2)  # the last two calls' output buffers

    # -- sampling
    def sample(self, blur_p: torch.Tensor, solarize_p: torch.Tensor, generator: Optional[torch.Generator] = None,
               device: Optional[torch.device] = None) -> PhotometricParams:
        """Draw the parameters of n = len(blur_p) images; uniforms on the generator's device, moved to ``device``."""
        n = blur_p.shape[0]
        draw_device = generator.device if generator is not None else (device or torch.device("cpu"))
        u = torch.rand((n, 13), generator=generator, device=draw_device)
        if device is not None:
            u = u.to(device)
        blur_p, solarize_p = blur_p.to(u.device), solarize_p.to(u.device)
        b, c, s, h = self.jitter
        lo = torch.tensor([max(0.0, 1 - b), max(0.0, 1 - c), max(0.0, 1 - s), -h], device=u.device)
        hi = torch.tensor([1 + b, 1 + c, 1 + s, h], device=u.device)
        r0, r1 = BLUR_RADIUS
        return PhotometricParams(
            jitter=u[:, 0] < self.jitter_p,
            order=torch.argsort(u[:, 1:5], dim=1),  # argsort of iid uniforms: a uniform random permutation
            factors=lo + (hi - lo) * u[:, 5:9],
            gray=u[:, 9] < self.gray_p,
            blur=u[:, 10] < blur_p,
            radius=(r0 + (r1 - r0) * u[:, 11]) * self.blur_radius_scale,
            solarize=u[:, 12] < solarize_p,
        )

    # -- applying
    @torch.no_grad()
    def apply(self, views: torch.Tensor, p: PhotometricParams, strategy: Optional[str] = None,
              out: Optional[torch.Tensor] = None) -> torch.Tensor:
        """uint8 (n, 3, S, S) and its params -> float32 (n, 3, S, S), normalised (into ``out`` when given).

        Two ways to run the same operations (``strategy``; default: "programs" for CPU images of at least
        PROGRAM_MIN_ELEMENTS values, else "masked"):
          "masked": for each operation (and each jitter position) gather the images that apply it, run it
            on them as one batch, scatter them back; on CPU in chunks of about CPU_CHUNK_ELEMENTS values so
            the passes over a chunk run in cache. Few, large kernel launches: right for GPUs and tiny images.
          "programs": sort the images by their whole sequence of operations (``_Plan.program``) and run each
            block of images sharing a jitter order straight through, without gather / scatter per operation:
            the jitter on the whole block, then grayscale, blur and solarize on the runs of the block that
            share them (contiguous, since sorted); blocks capped at CPU_CHUNK_ELEMENTS. Fewer memory passes,
            fewer op launches per image and narrower blur kernels per run: right for large images on CPU.
        """
        n, device = views.shape[0], views.device
        if strategy is None:
            big = views[0].numel() >= PROGRAM_MIN_ELEMENTS if n else False
            strategy = "programs" if device.type == "cpu" and big else "masked"
        if strategy not in ("masked", "programs"):
            raise ValueError(f"strategy must be one of masked, programs; got {strategy!r}")
        if out is not None and (out.shape != views.shape or out.dtype != torch.float32 or out.device != device):
            raise ValueError(f"out must be float32 {tuple(views.shape)} on {device}, got {out.dtype} {tuple(out.shape)} on {out.device}")
        if n == 0:
            return views.float()
        plan = _Plan(p)
        factors = p.factors.to(device)
        box = _box_weights(p.radius, self._blur_half).to(device)  # (n, 2 half + 1)
        cap = n if device.type != "cpu" else max(1, CPU_CHUNK_ELEMENTS // max(1, views[0].numel()))
        if out is None:
            out = torch.empty(views.shape, dtype=torch.float32, device=device)
        if strategy == "masked":
            for start in range(0, n, cap):
                rows = range(start, min(n, start + cap))
                out[rows.start:rows.stop] = self._apply_chunk(views[rows.start:rows.stop], rows, plan, factors, box)
            return out
        keys = [plan.program(i) for i in range(n)]
        order = sorted(range(n), key=keys.__getitem__)
        start = 0
        while start < n:
            stop = start + 1
            while stop < n and stop - start < cap and keys[order[stop]][0] == keys[order[start]][0]:
                stop += 1
            rows = order[start:stop]
            block_keys = [keys[i] for i in rows]
            if stop - start == 1:  # one image: slices, written straight into its output row
                i = rows[0]
                self._run_block(views[i:i + 1], block_keys, factors[i:i + 1], box[i:i + 1], out=out[i:i + 1])
            else:
                idx = torch.tensor(rows, device=device)
                out.index_copy_(0, idx, self._run_block(views.index_select(0, idx), block_keys,
                                                        factors.index_select(0, idx), box.index_select(0, idx)))
            start = stop
        return out

    def _run_block(self, views: torch.Tensor, keys: list[tuple], factors: torch.Tensor, box: torch.Tensor,
                   out: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Images (m, 3, S, S) uint8 sharing a jitter order and their sorted programs -> float normalised (into out).

        ``keys[j]`` is image j's ``_Plan.program``: (jitter order, box l or -1, gray, solarize). Grayscale,
        blur and solarize each run once per stretch of consecutive images that share their setting.
        """
        x = views.float()
        for op in keys[0][0]:
            x = _JITTER_OPS[op](x, factors[:, op])
        for a, b, gray in _runs([k[2] for k in keys]):
            if gray:
                x = _on_run(x, a, b, rgb_to_grayscale)
        for a, b, box_l in _runs([k[1] for k in keys]):
            if box_l >= 0:
                half, centre = box_l + 1, self._blur_half
                w = box[a:b, centre - half:centre + half + 1]
                x = _on_run(x, a, b, lambda v, w=w: _blur_with(v, w))
        for a, b, solar in _runs([k[3] for k in keys]):
            if solar:
                x = _on_run(x, a, b, solarize)
        return normalize(x, out=out)

    def _apply_chunk(self, views: torch.Tensor, rows: range, plan: _Plan, factors: torch.Tensor,
                     box: torch.Tensor) -> torch.Tensor:
        """The "masked" strategy on images ``rows`` (uint8 (m, 3, S, S)) -> float normalised (m, 3, S, S)."""
        start, device = rows.start, views.device

        def take(t: torch.Tensor, sel: list[int]) -> torch.Tensor:  # rows of a per-image tensor
            if len(sel) == 1:
                return t[sel[0]:sel[0] + 1]
            return t.index_select(0, torch.tensor(sel, device=device))

        x = views.float()
        for pos in range(4):  # the jitter's operation at each position, per image
            for op in range(4):
                fn = _JITTER_OPS[op]
                x = _on_rows(x, plan.jitter_rows(rows, pos, op), start,
                             lambda v, sel: fn(v, take(factors, sel)[:, op]))
        x = _on_rows(x, [i for i in rows if plan.gray[i]], start, lambda v, sel: rgb_to_grayscale(v))
        blurred = [i for i in rows if plan.blur[i]]
        if blurred:
            # Keep only the taps the widest box of these images needs (3 for radius < 1.41, else 5 ...).
            half, centre = max(plan.box_l[i] for i in blurred) + 1, self._blur_half
            w = box[:, centre - half:centre + half + 1]
            x = _on_rows(x, blurred, start, lambda v, sel: _blur_with(v, take(w, sel)))
        x = _on_rows(x, [i for i in rows if plan.solarize[i]], start, lambda v, sel: solarize(v))
        return normalize(x)

    def _check(self, views: Sequence[torch.Tensor]) -> None:
        n_views = 2 + self.local_number
        if len(views) != n_views:
            raise ValueError(f"expected {n_views} views (2 global + {self.local_number} local), got {len(views)}")
        sizes = [self.global_size] * 2 + [self.local_size] * self.local_number
        for i, (v, s) in enumerate(zip(views, sizes)):
            if v.dtype != torch.uint8 or v.ndim != 4 or tuple(v.shape[1:]) != (3, s, s):
                raise ValueError(f"view {i}: expected uint8 (B, 3, {s}, {s}), got {v.dtype} {tuple(v.shape)}")
        if len({v.shape[0] for v in views}) != 1:
            raise ValueError(f"views have different batch sizes: {[v.shape[0] for v in views]}")

    def sample_for_views(self, batch: int, generator: Optional[torch.Generator] = None,
                         device: Optional[torch.device] = None) -> tuple[PhotometricParams, PhotometricParams]:
        """Params for the 2 B global images (global1 rows then global2 rows) and the N B local ones (view-major)."""
        g_blur = torch.tensor([self.blur_p["global1"]] * batch + [self.blur_p["global2"]] * batch)
        g_sol = torch.tensor([self.solarize_p["global1"]] * batch + [self.solarize_p["global2"]] * batch)
        n_local = self.local_number * batch
        l_blur = torch.full((n_local,), float(self.blur_p["local"]))
        l_sol = torch.full((n_local,), float(self.solarize_p["local"]))
        return (self.sample(g_blur, g_sol, generator, device), self.sample(l_blur, l_sol, generator, device))

    def __call__(self, views: Sequence[torch.Tensor], generator: Optional[torch.Generator] = None
                 ) -> list[torch.Tensor]:
        """``[global1, global2, local1..localN]`` uint8 (B, 3, S, S) -> the same list, float32 normalised."""
        return self.call_with_params(views, generator)[0]

    def call_with_params(self, views: Sequence[torch.Tensor], generator: Optional[torch.Generator] = None
                         ) -> tuple[list[torch.Tensor], tuple[PhotometricParams, PhotometricParams]]:
        """``__call__`` and the (global, local) params drawn (see ``sample_for_views``)."""
        self._check(views)
        batch, device = views[0].shape[0], views[0].device
        g_params, l_params = self.sample_for_views(batch, generator, device)
        groups = [torch.cat(list(views[:2]))] + ([torch.cat(list(views[2:]))] if self.local_number else [])
        buffers = self._output_buffers([g.shape for g in groups], device)
        out = list(self.apply(groups[0], g_params, out=buffers[0]).split(batch))
        if self.local_number:
            out.extend(self.apply(groups[1], l_params, out=buffers[1]).split(batch))
        return out, (g_params, l_params)

    def _output_buffers(self, shapes: list[torch.Size], device: torch.device) -> Sequence[Optional[torch.Tensor]]:
        """This call's (global, local) output buffers: None (fresh memory) unless ``reuse_outputs`` on CPU; then
        the buffers of the call before the previous one, when there was one of the same shapes."""
        if not (self.reuse_outputs and device.type == "cpu"):
            return [None] * len(shapes)
        if len(self._spare) == 2 and [b.shape for b in self._spare[0]] == list(shapes):
            buffers = self._spare.popleft()
        else:
            buffers = tuple(torch.empty(s, dtype=torch.float32) for s in shapes)
        self._spare.append(buffers)
        return buffers

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(global={self.global_size}, local={self.local_size} x {self.local_number}, "
                f"blur_radius_scale={self.blur_radius_scale:.4g})")


def fast_multicrop(crops: "CropsConfig", blur_radius_scale: Optional[float] = None, reuse_outputs: bool = False
                   ) -> tuple[FastMultiCropGeometry, BatchedPhotometric]:
    """Both stages from the ``crops`` section: (per-image geometry for the Dataset, batched photometric;
    ``reuse_outputs`` as ``BatchedPhotometric``'s)."""
    args = (crops.global_size, crops.local_size, crops.local_number, tuple(crops.global_scale),
            tuple(crops.local_scale))
    return (FastMultiCropGeometry(*args, blur_radius_scale=blur_radius_scale),
            BatchedPhotometric(*args, blur_radius_scale=blur_radius_scale, reuse_outputs=reuse_outputs))
