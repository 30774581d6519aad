"""The embedded default data set: shapes on textured backgrounds, generated in code.

Each image shows one object whose class is its *shape* (disk, square, triangle, cross, ring,
ell, star, bars, crescent, tee). Everything else is drawn at random per image, independently of
the class: the object's colour, its area (a fraction of the image drawn from one range for every
class, so size carries no class), rotation, mirroring and position, and the background (flat,
gradient, stripes, checkers or smooth blobs, in random colours). So neither mean colour nor
object size reveals the class; a network must learn shape to separate the classes, which is
what self-supervised training is meant to teach.

With ``objects=(m, n)`` an image holds m..n objects, all of its class's shape, each with its own
colour, area, rotation, mirroring and position (placed so their bounding circles do not overlap
where that fits). Two crops of such an image then show different objects that share only their
shape, so shape is the cue that two views have in common, which is what DINO's views teach.

The object is drawn at ``SUPERSAMPLE`` times the output resolution and box-averaged down, which
anti-aliases its edges; its mask is the set of output pixels at least half covered by it. Background
patterns are band-limited (soft-edged), so they are drawn at the output resolution. The object's colour
keeps an RGB distance of at least ``MIN_CONTRAST`` from every background colour, so it is always visible.
Image ``i`` of a split depends only on ``(seed, split, i)`` (and the image side): its label is
``i % num_classes`` (balanced), its parameters come from ``numpy.random.default_rng([seed,
split_id, i])``. Images are generated lazily and cached in memory per dataset object.
"""

from __future__ import annotations

import functools
import math
from typing import Any, Callable, Optional

import numpy as np
from PIL import Image, ImageDraw
from torch.utils.data import Dataset

from dinolab.config.schema import SYNTHETIC_MAX_OBJECT_AREA, SYNTHETIC_MAX_OBJECTS

# Bump when the rendering changes: it is part of the data fingerprint.
GENERATOR_VERSION = 1
SUPERSAMPLE = 4
SPLITS = {"train": 0, "test": 1}
# The object's area as a fraction of the image, the same range for every class.
AREA_RANGE = (0.06, 0.16)
# Minimum RGB distance (in [0, 1] units) between the object colour and any background colour.
MIN_CONTRAST = 0.4
PIXEL_NOISE = 0.02
BACKGROUNDS = ("flat", "gradient", "stripes", "checkers", "blobs")

# A shape is a list of drawing ops in unit coordinates (bounding radius <= 1 around the origin):
# ("poly", [(x, y), ...], fill) or ("disk", cx, cy, r, fill); fill 1 draws, fill 0 erases.
Op = tuple


def _regular(n: int, radius: float = 1.0, phase: float = math.pi / 2) -> list[tuple[float, float]]:
    return [(radius * math.cos(phase + 2 * math.pi * k / n), radius * math.sin(phase + 2 * math.pi * k / n)) for k in range(n)]


def _star(points: int, inner: float) -> list[tuple[float, float]]:
    out = []
    for k in range(2 * points):
        r = 1.0 if k % 2 == 0 else inner
        a = math.pi / 2 + math.pi * k / points
        out.append((r * math.cos(a), r * math.sin(a)))
    return out


def _centre_polys(polys: list[list[tuple[float, float]]]) -> list[list[tuple[float, float]]]:
    """Shift a group of polygons to their bounding-box centre and scale the farthest vertex to radius 1."""
    pts = np.array([p for poly in polys for p in poly], dtype=np.float64)
    centre = (pts.min(0) + pts.max(0)) / 2
    radius = np.sqrt(((pts - centre) ** 2).sum(1)).max()
    return [[(float((x - centre[0]) / radius), float((y - centre[1]) / radius)) for x, y in poly] for poly in polys]


def _rect(x0: float, y0: float, x1: float, y1: float) -> list[tuple[float, float]]:
    return [(x0, y0), (x1, y0), (x1, y1), (x0, y1)]


def _shape_library() -> dict[str, list[Op]]:
    s = 1 / math.sqrt(2)
    w = 0.3  # cross arm half-width relative to arm length
    cross = [(w, -1), (w, -w), (1, -w), (1, w), (w, w), (w, 1), (-w, 1), (-w, w), (-1, w), (-1, -w), (-w, -w), (-w, -1)]
    ell = [(0, 0), (1, 0), (1, 0.36), (0.36, 0.36), (0.36, 1.2), (0, 1.2)]
    bars = [_rect(-0.75, -0.9, -0.3, 0.9), _rect(0.3, -0.9, 0.75, 0.9)]
    tee = [_rect(-0.8, 0.5, 0.8, 0.85), _rect(-0.2, -0.9, 0.2, 0.5)]
    return {
        "disk": [("disk", 0.0, 0.0, 1.0, 1)],
        "square": [("poly", [(-s, -s), (s, -s), (s, s), (-s, s)], 1)],
        "triangle": [("poly", _regular(3), 1)],
        "cross": [("poly", p, 1) for p in _centre_polys([cross])],
        "ring": [("disk", 0.0, 0.0, 1.0, 1), ("disk", 0.0, 0.0, 0.55, 0)],
        "ell": [("poly", p, 1) for p in _centre_polys([ell])],
        "star": [("poly", _star(5, 0.45), 1)],
        "bars": [("poly", p, 1) for p in _centre_polys(bars)],
        "crescent": [("disk", 0.0, 0.0, 1.0, 1), ("disk", 0.5, 0.0, 0.85, 0)],
        "tee": [("poly", p, 1) for p in _centre_polys(tee)],
    }


SHAPES: dict[str, list[Op]] = _shape_library()
CLASS_NAMES: list[str] = list(SHAPES)


def _draw_mask(ops: list[Op], side: int, centre: tuple[float, float], scale: float, angle: float, mirror: bool) -> Image.Image:
    """Binary mask (side x side, mode "L", 0 or 255) of a shape placed at ``centre`` (px), radius ``scale`` (px), rotated by ``angle``."""
    canvas = Image.new("L", (side, side), 0)
    draw = ImageDraw.Draw(canvas)
    ca, sa = math.cos(angle), math.sin(angle)
    cx, cy = centre
    sx = -1.0 if mirror else 1.0

    def place(x: float, y: float) -> tuple[float, float]:
        x = sx * x
        return cx + scale * (ca * x - sa * y), cy + scale * (sa * x + ca * y)

    for op in ops:
        if op[0] == "poly":
            draw.polygon([place(x, y) for x, y in op[1]], fill=255 * op[2])
        else:
            _, ox, oy, r, fill = op
            px, py = place(ox, oy)
            rr = r * scale
            draw.ellipse([px - rr, py - rr, px + rr, py + rr], fill=255 * fill)
    return canvas


@functools.lru_cache(maxsize=None)
def unit_area(name: str) -> float:
    """Area of a shape at scale 1 (bounding radius 1), measured by rendering it large once."""
    side = 512
    mask = np.asarray(_draw_mask(SHAPES[name], side, (side / 2, side / 2), side / 2 - 2, 0.0, False)) > 127
    return float(mask.sum()) / (side / 2 - 2) ** 2


def _segment_distance(c: np.ndarray, a: np.ndarray, b: np.ndarray) -> float:
    """Euclidean distance from colour c to the segment [a, b] (backgrounds blend a and b)."""
    ab = b - a
    t = float(np.clip(np.dot(c - a, ab) / max(np.dot(ab, ab), 1e-12), 0.0, 1.0))
    return float(np.linalg.norm(c - (a + t * ab)))


def _background_weights(kind: str, side: int, rng: np.random.Generator) -> np.ndarray:
    """Blend weights t (side, side) in [0, 1] between the background's two colours.

    Patterns are band-limited (clipped sinusoids with soft edges), so they need no supersampling.
    """
    coords = np.arange(side, dtype=np.float64) + 0.5
    y, x = np.meshgrid(coords, coords, indexing="ij")
    theta = rng.uniform(0, 2 * math.pi)
    u = x * math.cos(theta) + y * math.sin(theta)
    v = -x * math.sin(theta) + y * math.cos(theta)
    if kind == "flat":
        return np.zeros_like(x)
    if kind == "gradient":
        return (u - u.min()) / max(u.max() - u.min(), 1e-6)
    if kind == "stripes":
        period = rng.uniform(0.15, 0.4) * side
        return np.clip(0.5 + 1.5 * np.sin(2 * math.pi * u / period + rng.uniform(0, 2 * math.pi)), 0.0, 1.0)
    if kind == "checkers":
        cell = rng.uniform(0.1, 0.25) * side
        return np.clip(0.5 + 2.0 * np.sin(math.pi * u / cell) * np.sin(math.pi * v / cell), 0.0, 1.0)
    if kind == "blobs":
        t = np.zeros_like(x)
        for _ in range(3):
            phi = rng.uniform(0, 2 * math.pi)
            freq = rng.uniform(0.5, 2.0) * 2 * math.pi / side
            t += np.sin(freq * (x * math.cos(phi) + y * math.sin(phi)) + rng.uniform(0, 2 * math.pi))
        return (t - t.min()) / max(t.max() - t.min(), 1e-6)
    raise ValueError(f"unknown background {kind!r}; valid: {', '.join(BACKGROUNDS)}")


PALETTES = ("vivid", "muted", "grey", "light")
GREY_BASE = 0.5  # the "grey" and "light" palettes' one background grey for every image


def _muted_background(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, float]:
    """Near-grey background colours and the grey ``base`` they were drawn around (objects: ``_muted_object_colour``).

    With few distinct colours across the data set, colour is a weak cue for telling images apart,
    so a self-supervised network that must match two views of one image has to use shape and
    texture: the demo learns shape in minutes instead of colour histograms.
    """
    base = rng.uniform(0.3, 0.7)
    bg_a = np.clip(base + rng.normal(0.0, 0.05, 3), 0, 1)
    bg_b = np.clip(base + rng.uniform(-0.12, 0.12) + rng.normal(0.0, 0.05, 3), 0, 1)
    return bg_a, bg_b, base


def _muted_object_colour(rng: np.random.Generator, base: float) -> np.ndarray:
    """An object colour 0.3-0.4 lighter (dark background) or darker (light background) than grey ``base``."""
    sign = -1.0 if base > 0.5 else 1.0
    return np.clip(base + sign * rng.uniform(0.3, 0.4) + rng.normal(0.0, 0.05, 3), 0, 1)


def _grey_colours(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """The "grey" palette's background: mid-grey GREY_BASE for every image (the pattern's second colour
    a grey within 0.12 of it), so the image's grey level carries nothing that tells images apart."""
    bg_a = np.full(3, GREY_BASE)
    return bg_a, np.full(3, GREY_BASE + rng.uniform(-0.12, 0.12))


def _grey_object_colour(rng: np.random.Generator) -> np.ndarray:
    """An object 0.3-0.4 lighter or darker than GREY_BASE, the side drawn per object (no per-image polarity)."""
    sign = -1.0 if rng.random() < 0.5 else 1.0
    return np.clip(GREY_BASE + sign * rng.uniform(0.3, 0.4) + rng.normal(0.0, 0.05, 3), 0, 1)


def _light_object_colour(rng: np.random.Generator) -> np.ndarray:
    """The "light" palette's object: a pure grey 0.3-0.4 lighter than GREY_BASE, for every object. With one
    background grey and one polarity, nothing but the object's shape, size, pose and place tells images apart."""
    return np.full(3, GREY_BASE + rng.uniform(0.3, 0.4))


def _vivid_object_colour(rng: np.random.Generator, bg_a: np.ndarray, bg_b: np.ndarray) -> np.ndarray:
    """A random RGB colour at least ``MIN_CONTRAST`` from every blend of the background colours (the
    farthest of 64 draws where none is)."""
    best, best_d = None, -1.0
    for _ in range(64):
        colour = rng.random(3)
        d = _segment_distance(colour, bg_a, bg_b)
        if d > best_d:
            best, best_d = colour, d
        if d >= MIN_CONTRAST:
            break
    return best


def _place(rng: np.random.Generator, image_size: int, radius: float, placed: list[tuple[float, float, float]],
           tries: int) -> tuple[float, float]:
    """A centre (px) keeping the bounding circle of ``radius`` inside the image and, within ``tries`` draws,
    off the circles already ``placed`` (cx, cy, r); the last draw where none fits. One draw when nothing is placed."""
    margin = radius + 0.5
    if margin >= image_size / 2:
        return image_size / 2, image_size / 2
    for _ in range(max(tries, 1)):
        cx, cy = rng.uniform(margin, image_size - margin, size=2)
        if all(math.hypot(cx - px, cy - py) >= radius + pr for px, py, pr in placed):
            break
    return float(cx), float(cy)


def render(label: int, image_size: int, rng: np.random.Generator, palette: str = "vivid",
           area_range: tuple[float, float] = AREA_RANGE,
           backgrounds: tuple[str, ...] = BACKGROUNDS,
           max_rotation: float = 180.0, objects: tuple[int, int] = (1, 1)) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """Draw one image of class ``label``.

    palette: "vivid" (random RGB colours everywhere), "muted" (near-grey, see ``_muted_background``) or
    "grey" (one background grey, see ``_grey_colours``) or "light" (that background, every object a lighter
    grey, see ``_light_object_colour``); either way the colours are drawn independently of the class.
    backgrounds: the background kinds drawn from, uniformly (a subset of ``BACKGROUNDS``).
    max_rotation: each object's rotation is drawn from U(-max_rotation, max_rotation) degrees (180: any angle).
    objects: (min, max) objects of the class's shape, the count drawn uniformly; (1, 1) draws the
    same images as before the option existed (the count is not drawn then).
    Returns (image (S, S, 3) uint8, mask (S, S) bool: the union of the objects, params dict: the first
    object's parameters at the top level, every object's under "objects"). All draws come from ``rng``.
    """
    if palette not in PALETTES:
        raise ValueError(f"palette must be one of {PALETTES}, got {palette!r}")
    name = CLASS_NAMES[label]
    big = image_size * SUPERSAMPLE
    count = 1 if objects[1] <= 1 else int(rng.integers(objects[0], objects[1] + 1))
    # Geometry per object: area fraction -> radius in px; the bounding circle stays inside the image.
    shapes: list[dict[str, Any]] = []
    placed: list[tuple[float, float, float]] = []
    for _ in range(count):
        area = rng.uniform(*area_range)
        radius = min(image_size * math.sqrt(area / unit_area(name)), 0.49 * image_size)
        cx, cy = _place(rng, image_size, radius, placed, tries=20)
        placed.append((cx, cy, radius))
        # One draw either way, so the images of the default (any angle) do not depend on this option's existence.
        angle = rng.uniform(0, 2 * math.pi) if max_rotation >= 180.0 else math.radians(rng.uniform(-max_rotation, max_rotation))
        mirror = bool(rng.random() < 0.5)
        shapes.append(dict(centre=(cx, cy), radius=float(radius), angle=float(angle), mirror=mirror, area_fraction=float(area)))
    # Colours: each object's is far from every blend of the two background colours.
    kind = backgrounds[int(rng.integers(len(backgrounds)))]
    if palette == "muted":
        bg_a, bg_b, base = _muted_background(rng)
    elif palette in ("grey", "light"):
        bg_a, bg_b = _grey_colours(rng)
    else:
        bg_a, bg_b = rng.random(3), rng.random(3)
    if kind == "flat":
        bg_b = bg_a
    for shape in shapes:  # drawn after the background: a vivid colour keeps its distance from it
        if palette == "muted":
            colour = _muted_object_colour(rng, base)
        elif palette == "grey":
            colour = _grey_object_colour(rng)
        elif palette == "light":
            colour = _light_object_colour(rng)
        else:
            colour = _vivid_object_colour(rng, bg_a, bg_b)
        shape["colour"] = tuple(float(c) for c in colour)
        shape["contrast"] = _segment_distance(np.asarray(colour), bg_a, bg_b)
    # Objects are drawn supersampled and box-averaged: coverage (S, S) in [0, 1] anti-aliases edges and gives the mask.
    t = _background_weights(kind, image_size, rng)[..., None]  # (S, S, 1)
    image = (1 - t) * bg_a + t * bg_b  # (S, S, 3)
    mask = np.zeros((image_size, image_size), dtype=bool)
    for shape in shapes:
        cx, cy = shape["centre"]
        obj = _draw_mask(SHAPES[name], big, (cx * SUPERSAMPLE, cy * SUPERSAMPLE), shape["radius"] * SUPERSAMPLE,
                         shape["angle"], shape["mirror"])
        coverage = np.asarray(obj.resize((image_size, image_size), Image.BOX), dtype=np.float64) / 255.0
        cov = coverage[..., None]
        image = image * (1 - cov) + np.asarray(shape["colour"]) * cov
        mask |= coverage >= 0.5
    image = image + rng.normal(0.0, PIXEL_NOISE, size=image.shape)
    image = np.clip(np.round(image * 255), 0, 255).astype(np.uint8)
    params = dict(
        label=label, shape=name, **shapes[0], background=kind,
        background_colours=(tuple(float(c) for c in bg_a), tuple(float(c) for c in bg_b)), objects=shapes,
    )
    return image, mask, params


class SyntheticShapes(Dataset):
    """Shape-classified images on random backgrounds; ``__getitem__(i) -> (PIL RGB (S x S), int label)``.

    Args:
        num_images: images in the split.
        image_size: side S in px.
        num_classes: 2..10 shape classes, the first ``num_classes`` of ``CLASS_NAMES``.
        seed: the data set's generator seed (not the trial's).
        split: "train" or "test" (independent random streams).
        transform: optional callable applied to the PIL image.
    """

    def __init__(self, num_images: int, image_size: int, num_classes: int, seed: int, split: str,
                 transform: Optional[Callable] = None, palette: str = "vivid",
                 area_range: tuple[float, float] = AREA_RANGE, backgrounds: tuple[str, ...] = BACKGROUNDS,
                 max_rotation: float = 180.0, objects: tuple[int, int] = (1, 1)) -> None:
        if palette not in PALETTES:
            raise ValueError(f"palette must be one of {PALETTES}, got {palette!r}")
        unknown = [b for b in backgrounds if b not in BACKGROUNDS]
        if not backgrounds or unknown:
            raise ValueError(f"backgrounds must be a non-empty subset of {BACKGROUNDS}, got {tuple(backgrounds)}")
        self.backgrounds = tuple(backgrounds)
        if not 0.0 <= max_rotation <= 180.0:
            raise ValueError(f"max_rotation must be in [0, 180] degrees, got {max_rotation}")
        self.max_rotation = float(max_rotation)
        if len(objects) != 2 or not 1 <= objects[0] <= objects[1] <= SYNTHETIC_MAX_OBJECTS:
            raise ValueError(f"objects must be (min, max) with 1 <= min <= max <= {SYNTHETIC_MAX_OBJECTS}, got {tuple(objects)}")
        self.objects = (int(objects[0]), int(objects[1]))
        if not 0 < area_range[0] <= area_range[1] < SYNTHETIC_MAX_OBJECT_AREA:
            raise ValueError(f"area_range must satisfy 0 < low <= high < {SYNTHETIC_MAX_OBJECT_AREA}, got {area_range}")
        self.palette, self.area_range = palette, (float(area_range[0]), float(area_range[1]))
        if split not in SPLITS:
            raise ValueError(f"split must be one of {', '.join(SPLITS)}, got {split!r}")
        if not 2 <= num_classes <= len(CLASS_NAMES):
            raise ValueError(f"num_classes must be in 2..{len(CLASS_NAMES)}, got {num_classes}")
        if num_images < 1 or image_size < 4:
            raise ValueError(f"need num_images >= 1 and image_size >= 4, got {num_images}, {image_size}")
        self.num_images, self.image_size, self.num_classes = int(num_images), int(image_size), int(num_classes)
        self.seed, self.split, self.transform = int(seed), split, transform
        self.classes: list[str] = CLASS_NAMES[:num_classes]
        self.targets: list[int] = [i % num_classes for i in range(num_images)]
        s = self.image_size
        self._images = np.zeros((num_images, s, s, 3), dtype=np.uint8)  # cache (N, S, S, 3)
        self._masks = np.zeros((num_images, s, s), dtype=bool)  # cache (N, S, S)
        self._params: list[Optional[dict]] = [None] * num_images

    def __len__(self) -> int:
        return self.num_images

    def _ensure(self, i: int) -> int:
        if not -self.num_images <= i < self.num_images:
            raise IndexError(f"index {i} out of range for {self.num_images} images")
        i = i % self.num_images
        if self._params[i] is None:
            rng = np.random.default_rng([self.seed, SPLITS[self.split], i])
            self._images[i], self._masks[i], self._params[i] = render(self.targets[i], self.image_size, rng, self.palette, self.area_range,
                                                                         self.backgrounds, self.max_rotation, self.objects)
        return i

    def __getitem__(self, i: int) -> tuple[Any, int]:
        i = self._ensure(int(i))
        img = Image.fromarray(self._images[i], mode="RGB")
        return (self.transform(img) if self.transform is not None else img), self.targets[i]

    def mask(self, i: int) -> np.ndarray:
        """The object's pixels: (S, S) bool."""
        return self._masks[self._ensure(int(i))].copy()

    def describe(self, i: int) -> dict[str, Any]:
        """The drawing parameters of image i (shape, centre, radius in px, angle, colours, background)."""
        return dict(self._params[self._ensure(int(i))])

    def arrays(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Everything at once: images (N, S, S, 3) uint8, masks (N, S, S) bool, labels (N,) int64."""
        for i in range(self.num_images):
            self._ensure(i)
        return self._images.copy(), self._masks.copy(), np.asarray(self.targets, dtype=np.int64)
