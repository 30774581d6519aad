"""DINO's multi-crop augmentation: crops, the per-view probabilities of the paper's table, the eval transform."""

import math

import numpy as np
import pytest
import torch
import torchvision.transforms.functional as TF
from PIL import Image, ImageFilter
from torchvision import transforms as T

from dinolab.config.schema import CropsConfig
from dinolab.data import multicrop
from dinolab.data.multicrop import MultiCropAugmentation, eval_transform

MEAN = np.array([0.485, 0.456, 0.406])
STD = np.array([0.229, 0.224, 0.225])

# The paper's table (reference section 9): probability of each operation in each view.
PAPER = {
    "global1": {"hflip": 0.5, "jitter": 0.8, "gray": 0.2, "blur": 1.0, "solarize": 0.0},
    "global2": {"hflip": 0.5, "jitter": 0.8, "gray": 0.2, "blur": 0.1, "solarize": 0.2},
    "local": {"hflip": 0.5, "jitter": 0.8, "gray": 0.2, "blur": 0.5, "solarize": 0.0},
}
ORDER = ["crop", "hflip", "jitter", "gray", "blur", "solarize"]


def rand_image(w, h, seed=0):
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8), mode="RGB")


@pytest.mark.parametrize("g,l,n", [(32, 16, 6), (224, 96, 2), (32, 16, 0)])
def test_crop_count_sizes_dtype(g, l, n):
    aug = MultiCropAugmentation(g, l, n, (0.4, 1.0), (0.05, 0.4))
    crops = aug(rand_image(256 if g > 32 else 32, 256 if g > 32 else 32))
    assert len(crops) == 2 + n
    assert [tuple(c.shape) for c in crops] == [(3, g, g)] * 2 + [(3, l, l)] * n
    assert all(c.dtype == torch.float32 for c in crops)
    # Normalised: a [0, 1] image maps into [(0 - mean) / std, (1 - mean) / std] per channel.
    lo, hi = torch.tensor(-MEAN / STD).view(3, 1, 1), torch.tensor((1 - MEAN) / STD).view(3, 1, 1)
    assert all(((c >= lo - 1e-5) & (c <= hi + 1e-5)).all() for c in crops)


def test_from_config_and_blur_scale_default():
    aug = MultiCropAugmentation.from_config(CropsConfig(global_size=32, local_size=16, local_number=3))
    assert (aug.global_size, aug.local_size, aug.local_number) == (32, 16, 3)
    assert aug.blur_radius_scale == pytest.approx(32 / 224)
    assert MultiCropAugmentation(224, 96, 8, (0.4, 1), (0.05, 0.4)).blur_radius_scale == 1.0
    assert MultiCropAugmentation(448, 96, 8, (0.4, 1), (0.05, 0.4)).blur_radius_scale == 1.0
    with pytest.raises(ValueError, match="local_number"):
        MultiCropAugmentation(32, 16, -1, (0.4, 1), (0.05, 0.4))


def test_normalize_matches_imagenet_formula():
    img = Image.new("RGB", (4, 4), (200, 100, 30))
    out = multicrop.normalize()(img)
    expected = (np.array([200, 100, 30]) / 255 - MEAN) / STD
    assert torch.allclose(out[:, 0, 0].double(), torch.tensor(expected), atol=1e-6)


@pytest.fixture
def recorder(monkeypatch):
    """Replace every random operation's effect by a recording one (flip/jitter/gray/solarize become identity).

    ``events`` collects (name, detail) in call order; "crop" carries (area fraction, output side, interpolation)
    and "blur" its radius.
    """
    events = []
    real_resized_crop, real_blur = TF.resized_crop, ImageFilter.GaussianBlur

    def resized_crop(img, top, left, height, width, size, interpolation, antialias=True):
        events.append(("crop", (height * width / (img.size[0] * img.size[1]), size[0], interpolation)))
        return real_resized_crop(img, top, left, height, width, size, interpolation, antialias=antialias)

    def record(name):
        def op(img, *a, **k):
            events.append((name, None))
            return img
        return op

    def blur(radius):
        events.append(("blur", radius))
        return real_blur(radius)

    monkeypatch.setattr(TF, "resized_crop", resized_crop)
    monkeypatch.setattr(TF, "hflip", record("hflip"))
    monkeypatch.setattr(TF, "rgb_to_grayscale", record("gray"))
    monkeypatch.setattr(T.ColorJitter, "forward", lambda self, img: record("jitter")(img))
    monkeypatch.setattr(multicrop.ImageOps, "solarize", record("solarize"))
    monkeypatch.setattr(multicrop.ImageFilter, "GaussianBlur", blur)
    return events


def within_binomial(k, n, p, z=4.5):
    """k successes of n consistent with probability p (normal approximation; exact for p in {0, 1})."""
    return abs(k - n * p) <= z * math.sqrt(n * p * (1 - p)) + 1e-9


def test_each_view_applies_its_operations_with_the_papers_probabilities(recorder):
    torch.manual_seed(0)
    aug = MultiCropAugmentation(8, 4, 1, (0.4, 1.0), (0.05, 0.4))
    img = rand_image(8, 8)
    n = 1000
    candidates = sorted({p for view in PAPER.values() for p in view.values()})  # 0, .1, .2, .5, .8, 1
    for view_name, expected in PAPER.items():
        pipeline = getattr(aug, view_name)
        counts = {op: 0 for op in expected}
        for _ in range(n):
            recorder.clear()
            pipeline(img)
            names = [e[0] for e in recorder]
            # Every draw: one crop first, then operations in DINO's order, each at most once.
            assert names[0] == "crop" and names.count("crop") == 1
            assert names == sorted(names, key=ORDER.index) and len(set(names)) == len(names)
            for op in set(names) - {"crop"}:
                counts[op] += 1
        for op, p in expected.items():
            assert within_binomial(counts[op], n, p), (view_name, op, counts[op] / n, p)
            # Negative control: the same counts are inconsistent with every other probability in the table,
            # so swapping two views' settings (e.g. global2's blur 0.1 for a local's 0.5) would fail.
            for other in candidates:
                if other != p:
                    assert not within_binomial(counts[op], n, other), (view_name, op, other)


def test_crop_scales_sizes_and_bicubic(recorder):
    torch.manual_seed(1)
    aug = MultiCropAugmentation(16, 8, 4, (0.4, 1.0), (0.05, 0.4))
    img = rand_image(64, 64)
    for _ in range(100):
        recorder.clear()
        aug(img)
        crops = [d for name, d in recorder if name == "crop"]
        assert [c[1] for c in crops] == [16, 16, 8, 8, 8, 8]
        assert all(c[2] == T.InterpolationMode.BICUBIC for c in crops)
        # Pixel rounding of the crop box moves the area a little outside the nominal range.
        assert all(0.4 - 0.05 <= c[0] <= 1.0 for c in crops[:2])
        assert all(0.05 - 0.02 <= c[0] <= 0.4 + 0.05 for c in crops[2:])


def test_view_order_global1_global2_locals(recorder):
    torch.manual_seed(2)
    aug = MultiCropAugmentation(8, 4, 3, (0.4, 1.0), (0.05, 0.4))
    img = rand_image(16, 16)
    solarized_in = set()
    for _ in range(200):
        recorder.clear()
        aug(img)
        segment = -1
        blurred = set()
        for name, _ in recorder:
            segment += name == "crop"
            if name == "solarize":
                solarized_in.add(segment)
            if name == "blur":
                blurred.add(segment)
        assert segment == 4 and 0 in blurred  # 5 crops; the first view is always blurred
    assert solarized_in == {1}  # only global 2 solarizes


def test_blur_radius_range_and_scale(recorder):
    torch.manual_seed(3)
    img = rand_image(8, 8)
    for scale_arg, scale in [(None, 8 / 224), (1.0, 1.0)]:
        aug = MultiCropAugmentation(8, 4, 0, (0.4, 1.0), (0.05, 0.4), blur_radius_scale=scale_arg)
        recorder.clear()
        for _ in range(600):
            aug.global1(img)
        radii = np.array([d for name, d in recorder if name == "blur"]) / scale
        assert len(radii) == 600
        assert radii.min() >= 0.1 - 1e-9 and radii.max() <= 2.0 + 1e-9
        # U(0.1, 2.0): mean 1.05, sd 0.548 -> standard error 0.022
        assert abs(radii.mean() - 1.05) < 0.1 and abs(radii.std() - 1.9 / math.sqrt(12)) < 0.06


def test_solarize_and_blur_change_pixels_as_pil_does():
    """The real (unpatched) operations: solarize inverts values >= 128, blur smooths."""
    img = rand_image(16, 16)
    torch.manual_seed(0)
    sol = multicrop.RandomSolarize(1.0)(img)
    a, b = np.asarray(img).astype(int), np.asarray(sol).astype(int)
    assert np.array_equal(b, np.where(a >= 128, 255 - a, a))
    assert multicrop.RandomSolarize(0.0)(img) is img
    blurred = np.asarray(multicrop.RandomGaussianBlur(1.0)(img)).astype(float)
    assert blurred.std() < a.std()
    assert multicrop.RandomGaussianBlur(0.0)(img) is img


def test_eval_transform_small_image_passes_unchanged():
    img = rand_image(32, 32, seed=4)
    out = eval_transform(32)(img)
    expected = (np.asarray(img) / 255.0 - MEAN) / STD  # (H, W, 3)
    assert out.shape == (3, 32, 32) and out.dtype == torch.float32
    assert np.allclose(out.permute(1, 2, 0).numpy(), expected, atol=1e-5)


def test_eval_transform_large_image_resize_256_224_center_crop():
    img = rand_image(448, 300, seed=5)  # (W, H)
    out = eval_transform(224)(img)
    # Independent: shorter side 300 -> 256 (so 448 -> 382.3 -> 382), then the central 224 x 224.
    w = round(448 * 256 / 300)
    ref = img.resize((w, 256), Image.BICUBIC)
    left, top = int(round((w - 224) / 2.0)), int(round((256 - 224) / 2.0))
    ref = np.asarray(ref.crop((left, top, left + 224, top + 224))) / 255.0
    assert out.shape == (3, 224, 224)
    assert np.abs(out.permute(1, 2, 0).numpy() - (ref - MEAN) / STD).max() < 1e-5


def test_eval_transform_odd_and_grayscale_inputs():
    tf = eval_transform(32)
    assert tf(rand_image(20, 30)).shape == (3, 32, 32)  # upsampled, centre-cropped
    assert tf(rand_image(17, 64)).shape == (3, 32, 32)
    gray = Image.fromarray(np.full((40, 40), 77, dtype=np.uint8), mode="L")
    out = tf(gray)
    assert out.shape == (3, 32, 32)
    assert np.allclose(out[:, 5, 5].numpy(), (77 / 255 - MEAN) / STD, atol=2e-2)
