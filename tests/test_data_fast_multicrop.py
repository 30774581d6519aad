"""The two-stage fast multi-crop: each operation against torchvision / PIL, and the whole recipe against
the reference ``MultiCropAugmentation`` in distribution (with negative controls)."""

import itertools
import math

import numpy as np
import pytest
import torch
import torchvision.transforms.functional as TF
import torchvision.transforms.v2.functional as F2
from PIL import Image, ImageFilter, ImageOps
from scipy import stats
from torchvision import transforms as T

from dinolab.config.schema import CropsConfig
from dinolab.data import fast_multicrop as fm
from dinolab.data.fast_multicrop import (BatchedPhotometric, CropBox, FastMultiCropGeometry, PhotometricParams,
                                         fast_multicrop)
from dinolab.data.multicrop import MultiCropAugmentation
from dinolab.data.synthetic import SyntheticShapes

MEAN = np.array([0.485, 0.456, 0.406])
STD = np.array([0.229, 0.224, 0.225])


def rand_uint8(n, h, w, seed=0):
    """(n, 3, h, w) uint8 with flat grey patches, saturated primaries and channel ties mixed into noise."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(0, 256, (n, 3, h, w), generator=g, dtype=torch.uint8)
    x[:, :, :3, :3] = 77  # grey: r = g = b
    x[:, 0, 3:6, :3], x[:, 1:, 3:6, :3] = 255, 0  # pure red
    x[:, 0, 6:9, :3] = x[:, 1, 6:9, :3]  # r = g ties
    x[:, 2, 9:12, :3] = x[:, 1, 9:12, :3]  # g = b ties
    return x


def to_pil(x):
    """(3, H, W) uint8 tensor -> PIL RGB."""
    return Image.fromarray(x.permute(1, 2, 0).numpy().copy(), mode="RGB")


def from_pil(img):
    return torch.from_numpy(np.array(img)).permute(2, 0, 1)


def assert_close_uint8(ours, ref, max_diff=1, frac=0.03):
    """Float results holding integers vs uint8 references: at most ``max_diff`` off, rarely off at all
    (a product rounded differently lands on the other side of a truncation now and then)."""
    d = (ours.double() - ref.double()).abs()
    assert d.max() <= max_diff, d.max()
    assert (d > 0).double().mean() <= frac, (d > 0).double().mean()


# ---------------------------------------------------------------------------------------- shapes, API


@pytest.mark.parametrize("g,l,n", [(32, 16, 6), (64, 32, 2), (32, 16, 0)])
def test_views_shapes_dtypes_and_counts(g, l, n):
    geometry = FastMultiCropGeometry(g, l, n, (0.4, 1.0), (0.05, 0.4))
    photometric = BatchedPhotometric(g, l, n, (0.4, 1.0), (0.05, 0.4))
    ds = SyntheticShapes(6, 48, 4, seed=0, split="train")
    per_image = [geometry(ds[i][0]) for i in range(5)]
    per_image.append(geometry(from_pil(ds[5][0])))  # a (3, H, W) uint8 tensor works as well as PIL
    assert all(len(v) == 2 + n for v in per_image)
    assert all(v.dtype == torch.uint8 and v.is_contiguous() for views in per_image for v in views)
    assert [tuple(v.shape) for v in per_image[0]] == [(3, g, g)] * 2 + [(3, l, l)] * n
    batch = [torch.stack(v) for v in zip(*per_image)]  # DataLoader's default collate
    out = photometric(batch)
    assert [tuple(v.shape) for v in out] == [(6, 3, g, g)] * 2 + [(6, 3, l, l)] * n
    assert all(v.dtype == torch.float32 for v in out)
    lo, hi = torch.tensor(-MEAN / STD).view(3, 1, 1), torch.tensor((1 - MEAN) / STD).view(3, 1, 1)
    assert all(((v >= lo - 1e-5) & (v <= hi + 1e-5)).all() for v in out)


def test_fast_multicrop_from_config_and_errors():
    crops = CropsConfig(global_size=32, local_size=16, local_number=3, global_scale=(0.3, 1.0), local_scale=(0.1, 0.3))
    geometry, photometric = fast_multicrop(crops)
    assert (geometry.global_size, geometry.local_size, geometry.local_number) == (32, 16, 3)
    assert geometry.global_scale == (0.3, 1.0) and geometry.local_scale == (0.1, 0.3)
    assert photometric.blur_radius_scale == pytest.approx(32 / 224)  # the reference's default
    assert fast_multicrop(crops, blur_radius_scale=1.0)[1].blur_radius_scale == 1.0
    with pytest.raises(ValueError, match="local_number"):
        FastMultiCropGeometry(32, 16, -1, (0.4, 1), (0.05, 0.4))
    with pytest.raises(ValueError, match="local_scale"):
        FastMultiCropGeometry(32, 16, 2, (0.4, 1), (0.5, 0.4))
    with pytest.raises(ValueError, match="expected 5 views"):
        photometric([torch.zeros(2, 3, 32, 32, dtype=torch.uint8)] * 4)
    with pytest.raises(ValueError, match="uint8"):
        photometric([torch.zeros(2, 3, 32, 32)] * 2 + [torch.zeros(2, 3, 16, 16)] * 3)
    x = torch.zeros(2, 3, 16, 16, dtype=torch.uint8)
    with pytest.raises(ValueError, match="masked, programs"):
        photometric.apply(x, photometric.sample_for_views(1)[0], strategy="fast")


# ------------------------------------------------------------------------------------------- stage 1


def test_crop_box_hand_computed_tries():
    # 100 x 200 (H x W) image, scale (0.5, 0.5), ratio (3/4, 4/3).
    # Try 0: aspect = exp(log(4/3)) = 4/3, area 10000 -> w = round(sqrt(13333.3)) = 115, h = round(86.6) = 87: ok.
    u = [0.0, 1.0] + [0.5] * 18 + [0.5, 0.25]
    top, left, h, w = fm.resized_crop_box(100, 200, (0.5, 0.5), u)
    assert (h, w) == (87, 115)
    assert (top, left) == (int(0.5 * 14), int(0.25 * 86))  # floor(U * (H - h + 1)), floor(U * (W - w + 1))
    # Scale 1 on a 100 x 100 image with aspect 4/3 is too wide (w = 115 > 100): rejected; the 2nd try
    # (aspect 1) gives the whole image.
    u = [1.0, 1.0, 1.0, 0.5] + [0.5] * 16 + [0.0, 0.0]
    assert fm.resized_crop_box(100, 100, (1.0, 1.0), u) == (0, 0, 100, 100)


@pytest.mark.parametrize("h,w", [(10, 1000), (1000, 10)])
def test_crop_box_fallback_equals_torchvision(h, w):
    """Images no box of full area fits (any aspect in 3/4..4/3 is too tall or too wide): after 10 failed
    tries both fall back to the central crop clipped to the ratio range; torchvision's own draws fail too."""
    u = [0.5] * 20 + [0.3, 0.7]
    torch.manual_seed(0)
    expected = tuple(T.RandomResizedCrop.get_params(Image.new("RGB", (w, h)), [1.0, 1.0], [3 / 4, 4 / 3]))
    assert fm.resized_crop_box(h, w, (1.0, 1.0), u) == expected
    # Hand-computed: the longer side cut to 4/3 of the shorter one, centred.
    short, long_ = min(h, w), round(min(h, w) * 4 / 3)
    centred = ((h - long_) // 2, 0, long_, short) if h > w else (0, (w - long_) // 2, short, long_)
    assert expected == centred


def test_crop_box_fallback_inside_ratio_range_is_the_whole_image():
    u = [1.0, 0.0] * 10 + [0.3, 0.7]  # every try: full area at aspect 3/4 -> h = 63 > 50: rejected
    assert fm.resized_crop_box(50, 60, (1.0, 1.0), u) == (0, 0, 50, 60)  # in_ratio 1.2 is in range


def test_resize_and_flip_match_pil_reference():
    """Stage 1's uint8 bicubic antialiased resize vs torchvision's PIL path for the same box."""
    geometry = FastMultiCropGeometry(48, 24, 1, (0.4, 1.0), (0.05, 0.4))
    img = to_pil(rand_uint8(1, 80, 96, seed=3)[0].float().div(4).add(100).to(torch.uint8))  # smooth-ish
    img = img.filter(ImageFilter.GaussianBlur(1.5))
    boxes = [CropBox(5, 7, 60, 70, False), CropBox(10, 20, 50, 40, True), CropBox(30, 40, 20, 25, False)]
    views = geometry.apply(from_pil(img), boxes)
    for view, b, size in zip(views, boxes, (48, 48, 24)):
        ref = TF.resized_crop(img, b.top, b.left, b.height, b.width, [size, size], T.InterpolationMode.BICUBIC)
        if b.flip:
            ref = ImageOps.mirror(ref)
        d = (view.double() - from_pil(ref).double()).abs()
        assert d.mean() < 0.5 and d.max() <= 8


@pytest.mark.parametrize("layout", ["hwc", "planar"])
def test_resize_and_flip_equal_torchvision_tensor_kernel(layout):
    """Stage 1's channels-last resize + numpy planarisation = torchvision's resized_crop (+ flip) on the
    uint8 tensor, bit for bit, for upsampling, downsampling, non-square and whole-image boxes."""
    import torchvision.transforms.v2.functional as TF2

    geometry = FastMultiCropGeometry(32, 16, 3, (0.4, 1.0), (0.05, 0.4))
    hwc = rand_uint8(1, 41, 57, seed=5)[0].permute(1, 2, 0).contiguous()  # (H, W, 3) memory
    image = fm.to_uint8_tensor(hwc.numpy()) if layout == "hwc" else hwc.permute(2, 0, 1).contiguous()
    boxes = [CropBox(0, 0, 41, 57, False), CropBox(3, 5, 30, 40, True), CropBox(10, 20, 8, 11, False),
             CropBox(1, 2, 16, 16, True), CropBox(20, 30, 21, 27, True)]
    views = geometry.apply(image, boxes)
    for view, b, size in zip(views, boxes, (32, 32, 16, 16, 16)):
        ref = TF2.resized_crop(image, b.top, b.left, b.height, b.width, [size, size],
                               interpolation=T.InterpolationMode.BICUBIC, antialias=True)
        if b.flip:
            ref = ref.flip(-1)
        assert view.dtype == torch.uint8 and view.is_contiguous() and view.shape == (3, size, size)
        assert torch.equal(view, ref), b


def test_geometry_reproducible_from_generator():
    geometry = FastMultiCropGeometry(16, 8, 3, (0.4, 1.0), (0.05, 0.4))
    img = rand_uint8(1, 40, 40)[0]
    a = geometry.views_and_boxes(img, torch.Generator().manual_seed(5))
    b = geometry.views_and_boxes(img, torch.Generator().manual_seed(5))
    c = geometry.views_and_boxes(img, torch.Generator().manual_seed(6))
    assert a[1] == b[1] and all(torch.equal(x, y) for x, y in zip(a[0], b[0]))
    assert a[1] != c[1]


# ----------------------------------------------------------------------- stage 2: single operations


@pytest.mark.parametrize("name,op,ref_op,factors", [
    ("brightness", fm.adjust_brightness, F2.adjust_brightness, [0.6, 0.85, 1.0, 1.2, 1.4, 2.5]),
    ("contrast", fm.adjust_contrast, F2.adjust_contrast, [0.6, 0.85, 1.0, 1.2, 1.4, 0.0]),
    ("saturation", fm.adjust_saturation, F2.adjust_saturation, [0.8, 0.9, 1.0, 1.1, 1.2, 0.0]),
    ("hue", fm.adjust_hue, F2.adjust_hue, [-0.5, -0.1, -0.03, 0.0, 0.07, 0.5]),
])
def test_jitter_operations_match_torchvision_uint8_kernels(name, op, ref_op, factors):
    x = rand_uint8(len(factors), 20, 24, seed=1)
    ours = op(x.float(), torch.tensor(factors))  # one factor per image, in one batched call
    ref = torch.stack([ref_op(x[i], float(f)) for i, f in enumerate(factors)])
    assert_close_uint8(ours, ref)


def test_hue_is_the_hsv_rotation_written_out():
    """adjust_hue against colorsys (Python's HSV) on single pixels: V and S kept, H shifted."""
    import colorsys

    pixels = [(200, 30, 30), (30, 200, 60), (10, 20, 250), (255, 255, 0), (128, 128, 128), (90, 40, 160)]
    x = torch.tensor(pixels, dtype=torch.float32).view(len(pixels), 3, 1, 1)
    for f in (-0.5, -0.1, 0.05, 0.3):
        out = fm.adjust_hue(x, torch.full((len(pixels),), f)).view(len(pixels), 3)
        for (r, g, b), got in zip(pixels, out.tolist()):
            h, s, v = colorsys.rgb_to_hsv(r / 255, g / 255, b / 255)
            exp = colorsys.hsv_to_rgb((h + f) % 1.0, s, v)
            assert all(abs(e * 255 - o) <= 1.0 for e, o in zip(exp, got)), ((r, g, b), f, got, exp)


def test_grayscale_solarize_normalize():
    x = rand_uint8(3, 16, 16, seed=2)
    gray = fm.rgb_to_grayscale(x.float())
    assert_close_uint8(gray, F2.rgb_to_grayscale(x, num_output_channels=3))
    sol = fm.solarize(x.float())
    ref = torch.stack([from_pil(ImageOps.solarize(to_pil(x[i]), threshold=128)) for i in range(3)])
    assert torch.equal(sol, ref.float())
    norm = fm.normalize(x.float())
    exp = (x.double() / 255 - torch.tensor(MEAN).view(1, 3, 1, 1)) / torch.tensor(STD).view(1, 3, 1, 1)
    assert torch.allclose(norm.double(), exp, atol=1e-5)


@pytest.mark.parametrize("size", [(24, 30), (5, 7), (2, 3)])
def test_blur_matches_pil_gaussian_blur(size):
    radii = [0.1, 0.1 / 7, 0.4, 0.8, 1.2, 1.45, 1.7, 2.0]
    x = rand_uint8(len(radii), *size, seed=4)
    ours = fm.gaussian_blur(x.float(), torch.tensor(radii))
    for i, r in enumerate(radii):
        ref = from_pil(to_pil(x[i]).filter(ImageFilter.GaussianBlur(radius=r))).double()
        d = (ours[i].double() - ref).abs()
        assert d.mean() < 0.15 and d.max() <= 2, (r, d.mean(), d.max())
    # The kernel's variance is the radius squared (PIL's definition of the radius).
    for r in (0.3, 1.0, 2.0):
        l, a = fm.box_blur_radius(torch.tensor([r]))
        k = np.array([a.item()] + [1.0] * (2 * int(l) + 1) + [a.item()])
        k = k / k.sum()
        k3 = np.convolve(np.convolve(k, k), k)
        offsets = np.arange(len(k3)) - len(k3) // 2
        assert np.isclose((k3 * offsets ** 2).sum(), r * r, rtol=1e-6)


# ----------------------------------------------------------------------- stage 2: the whole pipeline


def reference_chain(x, order, factors, gray, radius, solar):
    """One uint8 image through torchvision v2 jitter ops in ``order``, gray, PIL blur, PIL solarize, normalise."""
    ops = (F2.adjust_brightness, F2.adjust_contrast, F2.adjust_saturation, F2.adjust_hue)
    for op in order:
        x = ops[op](x, float(factors[op]))
    if gray:
        x = F2.rgb_to_grayscale(x, num_output_channels=3)
    img = to_pil(x)
    if radius is not None:
        img = img.filter(ImageFilter.GaussianBlur(radius=radius))
    if solar:
        img = ImageOps.solarize(img, threshold=128)
    return (torch.from_numpy(np.array(img)).double() / 255 - torch.tensor(MEAN)) / torch.tensor(STD)  # (H, W, 3)


@pytest.mark.parametrize("strategy", ["masked", "programs"])
def test_pipeline_applies_each_images_own_order_and_ops(strategy):
    perms = list(itertools.permutations(range(4)))
    n = 12
    g = torch.Generator().manual_seed(7)
    p = PhotometricParams(
        jitter=torch.tensor([True] * 10 + [False] * 2),
        order=torch.tensor([perms[(5 * i) % 24] for i in range(n)]),
        factors=torch.stack([0.6 + 0.8 * torch.rand(n, generator=g), 0.6 + 0.8 * torch.rand(n, generator=g),
                             0.8 + 0.4 * torch.rand(n, generator=g), 0.2 * torch.rand(n, generator=g) - 0.1], 1),
        gray=torch.tensor([i % 4 == 1 for i in range(n)]),
        blur=torch.tensor([i % 3 == 0 for i in range(n)]),
        radius=0.1 + 1.9 * torch.rand(n, generator=g),
        solarize=torch.tensor([i % 5 == 2 for i in range(n)]),
    )
    x = rand_uint8(n, 18, 18, seed=8)
    photometric = BatchedPhotometric(18, 8, 1, blur_radius_scale=1.0)
    out = photometric.apply(x, p, strategy=strategy)
    for i in range(n):
        ref = reference_chain(x[i], p.order[i].tolist() if p.jitter[i] else [], p.factors[i].tolist(), bool(p.gray[i]),
                              float(p.radius[i]) if p.blur[i] else None, bool(p.solarize[i]))
        d = (out[i].permute(1, 2, 0).double() - ref).abs() * torch.tensor(STD) * 255  # in uint8 levels
        assert d.mean() < 0.3 and d.max() <= 3, (i, d.mean(), d.max())


def test_strategies_agree_exactly_and_seed_reproduces():
    photometric = BatchedPhotometric(64, 32, 2)
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (40, 3, 64, 64), generator=g, dtype=torch.uint8)
    p, _ = photometric.sample_for_views(20, generator=g)
    assert torch.equal(photometric.apply(x, p, "masked"), photometric.apply(x, p, "programs"))
    views = [torch.randint(0, 256, (4, 3, s, s), generator=g, dtype=torch.uint8) for s in (64, 64, 32, 32)]
    a = photometric(views, generator=torch.Generator().manual_seed(1))
    b = photometric(views, generator=torch.Generator().manual_seed(1))
    c = photometric(views, generator=torch.Generator().manual_seed(2))
    assert all(torch.equal(u, v) for u, v in zip(a, b))
    assert not all(torch.equal(u, v) for u, v in zip(a, c))


def test_programs_block_of_one_jitter_order_with_mixed_stages_matches_masked():
    """One jitter order for all images, so "programs" runs them as one block, with grayscale, two blur
    widths and solarize each on a different stretch of it: the result must equal the per-operation
    "masked" strategy image for image."""
    n = 12
    p = PhotometricParams(
        jitter=torch.ones(n, dtype=torch.bool),
        order=torch.tensor([[3, 1, 0, 2]] * n),
        factors=torch.tensor([[1.3, 0.7, 1.1, 0.06]] * n) + torch.linspace(0, 0.1, n).unsqueeze(1),
        gray=torch.tensor([i % 2 == 0 for i in range(n)]),
        blur=torch.tensor([i % 3 != 0 for i in range(n)]),
        radius=torch.tensor([0.5 if i % 4 < 2 else 1.8 for i in range(n)]),  # box l = 0 and l = 1
        solarize=torch.tensor([i % 5 == 1 for i in range(n)]),
    )
    x = rand_uint8(n, 20, 20, seed=3)
    photometric = BatchedPhotometric(20, 8, 1, blur_radius_scale=1.0)
    assert torch.equal(photometric.apply(x, p, "programs"), photometric.apply(x, p, "masked"))


@pytest.mark.parametrize("n_local", [2, 0])
def test_reused_outputs_equal_fresh_ones_and_are_double_buffered(n_local):
    """reuse_outputs: the same views as fresh outputs; call k + 2 writes into call k's buffers, never into
    call k + 1's (which the consumer may still hold)."""
    g = torch.Generator().manual_seed(4)
    batches = [[torch.randint(0, 256, (3, 3, s, s), generator=g, dtype=torch.uint8) for s in [64, 64] + [32] * n_local]
               for _ in range(4)]
    fresh, reused = BatchedPhotometric(64, 32, n_local), BatchedPhotometric(64, 32, n_local, reuse_outputs=True)
    outs = []
    for k, views in enumerate(batches):
        a = fresh(views, generator=torch.Generator().manual_seed(k))
        b = reused(views, generator=torch.Generator().manual_seed(k))
        assert all(torch.equal(u, v) for u, v in zip(a, b))
        outs.append([v.untyped_storage().data_ptr() for v in b[::2]])  # one view per buffer (global, local)
    assert outs[2] == outs[0] and outs[3] == outs[1]
    assert not set(outs[0]) & set(outs[1])


def test_runs_splits_into_maximal_equal_stretches():
    assert fm._runs([]) == []
    assert fm._runs([1, 1, 2, 1]) == [(0, 2, 1), (2, 3, 2), (3, 4, 1)]


def within_binomial(k, n, p, z=4.5):
    return abs(k - n * p) <= z * math.sqrt(n * p * (1 - p)) + 1e-9


def test_sampled_probabilities_ranges_and_orders():
    photometric = BatchedPhotometric(32, 16, 4)
    g = torch.Generator().manual_seed(3)
    n = 3000
    gp, lp = photometric.sample_for_views(n, generator=g)  # globals: n global1 rows then n global2 rows
    g1, g2 = slice(0, n), slice(n, 2 * n)
    for params, rows, blur_p, sol_p in [(gp, g1, 1.0, 0.0), (gp, g2, 0.1, 0.2), (lp, slice(0, 4 * n), 0.5, 0.0)]:
        m = params.jitter[rows].numel()
        for flag, prob in [(params.jitter, 0.8), (params.gray, 0.2), (params.blur, blur_p), (params.solarize, sol_p)]:
            k = int(flag[rows].sum())
            assert within_binomial(k, m, prob), (k, m, prob)
            for other in {0.0, 0.1, 0.2, 0.5, 0.8, 1.0} - {prob}:  # negative control: other table values fail
                assert not within_binomial(k, m, other)
    f = lp.factors
    for j, (lo, hi) in enumerate([(0.6, 1.4), (0.6, 1.4), (0.8, 1.2), (-0.1, 0.1)]):
        assert f[:, j].min() >= lo and f[:, j].max() <= hi
        assert stats.kstest(((f[:, j] - lo) / (hi - lo)).numpy(), "uniform").pvalue > 1e-3
    r = lp.radius / photometric.blur_radius_scale
    assert r.min() >= 0.1 - 1e-6 and r.max() <= 2.0 + 1e-6
    assert stats.kstest(((r - 0.1) / 1.9).numpy(), "uniform").pvalue > 1e-3
    # The jitter order: all 24 permutations, equally often (chi-square).
    counts = np.zeros(24)
    index = {perm: i for i, perm in enumerate(itertools.permutations(range(4)))}
    for row in lp.order.tolist():
        counts[index[tuple(row)]] += 1
    assert stats.chisquare(counts).pvalue > 1e-3


# ---------------------------------------------------------------- the whole recipe vs the reference


G, L, N_LOCAL, SIDE, N_IMAGES = 32, 16, 2, 48, 300
BLUR_SCALE = 1.0  # the paper's radius even at 32 px: a blur strong enough for the statistics to see
VIEWS = ["global1", "global2", "local"]


def view_kind(v):
    return VIEWS[min(v, 2)]


COLOUR_STATS = ["mean_r", "mean_g", "mean_b", "std_r", "std_g", "std_b", "chroma", "sharpness"]


def colour_stats(t):
    """Normalised view (3, S, S) -> per-channel mean and std, the mean chroma (max - min over the channels)
    and the mean absolute difference of horizontal neighbours, of the uint8 levels: 8 numbers.

    Un-normalised and rounded to levels first, so that grey views have a chroma of exactly 0 in both
    pipelines (not float noise of a different size, which a rank test would tell apart)."""
    x = t.double() * torch.tensor(STD).view(3, 1, 1) + torch.tensor(MEAN).view(3, 1, 1)
    x = (x * 255).round()
    chroma = (x.amax(0) - x.amin(0)).mean()
    sharpness = (x[:, :, 1:] - x[:, :, :-1]).abs().mean()
    return [float(v) for v in x.mean(dim=(1, 2))] + [float(v) for v in x.std(dim=(1, 2))] + [float(chroma),
                                                                                            float(sharpness)]


def reference_sample(images, monkeypatch):
    """Boxes, flips and colour statistics of MultiCropAugmentation's views (recorded from its calls)."""
    events = []
    real_crop, real_flip = TF.resized_crop, TF.hflip

    def crop(img, top, left, height, width, *a, **k):
        events.append(("crop", (height * width / (img.size[0] * img.size[1]), math.log(width / height))))
        return real_crop(img, top, left, height, width, *a, **k)

    def flip(img):
        events.append(("flip", None))
        return real_flip(img)

    monkeypatch.setattr(TF, "resized_crop", crop)
    monkeypatch.setattr(TF, "hflip", flip)
    aug = MultiCropAugmentation(G, L, N_LOCAL, (0.4, 1.0), (0.05, 0.4), blur_radius_scale=BLUR_SCALE)
    rec = {k: {"area": [], "log_ratio": [], "flip": [], "colour": []} for k in VIEWS}
    torch.manual_seed(123)
    for img in images:
        events.clear()
        views = aug(img)
        crops = [i for i, e in enumerate(events) if e[0] == "crop"]
        for v, (i, t) in enumerate(zip(crops, views)):
            r = rec[view_kind(v)]
            r["area"].append(events[i][1][0])
            r["log_ratio"].append(events[i][1][1])
            r["flip"].append(i + 1 < len(events) and events[i + 1][0] == "flip")
            r["colour"].append(colour_stats(t))
    monkeypatch.undo()
    return rec


def fast_sample(images, local_scale=(0.05, 0.4), photometric_edit=None, batch=50):
    geometry = FastMultiCropGeometry(G, L, N_LOCAL, (0.4, 1.0), local_scale)
    photometric = BatchedPhotometric(G, L, N_LOCAL, (0.4, 1.0), local_scale, blur_radius_scale=BLUR_SCALE)
    if photometric_edit:
        photometric_edit(photometric)
    rec = {k: {"area": [], "log_ratio": [], "flip": [], "colour": []} for k in VIEWS}
    g = torch.Generator().manual_seed(321)
    for start in range(0, len(images), batch):
        per_image = []
        for img in images[start:start + batch]:
            views, boxes = geometry.views_and_boxes(img, g)
            per_image.append(views)
            for v, b in enumerate(boxes):
                r = rec[view_kind(v)]
                r["area"].append(b.height * b.width / (SIDE * SIDE))
                r["log_ratio"].append(math.log(b.width / b.height))
                r["flip"].append(b.flip)
        out = photometric([torch.stack(v) for v in zip(*per_image)], generator=g)
        for v, t in enumerate(out):
            rec[view_kind(v)]["colour"].extend(colour_stats(x) for x in t)
    return rec


def compare(ref, fast):
    """{statistic name: p-value} of two-sample tests, per view kind: crop area and aspect (KS), flip rate
    (Fisher's exact test), the colour statistics of the views (KS)."""
    pvalues = {}
    for k in VIEWS:
        a, b = ref[k], fast[k]
        pvalues[f"{k}/area"] = stats.ks_2samp(a["area"], b["area"]).pvalue
        pvalues[f"{k}/log_ratio"] = stats.ks_2samp(a["log_ratio"], b["log_ratio"]).pvalue
        fa, fb = sum(a["flip"]), sum(b["flip"])
        pvalues[f"{k}/flip"] = stats.fisher_exact([[fa, len(a["flip"]) - fa], [fb, len(b["flip"]) - fb]])[1]
        ca, cb = np.array(a["colour"]), np.array(b["colour"])
        for j, name in enumerate(COLOUR_STATS):
            pvalues[f"{k}/{name}"] = stats.ks_2samp(ca[:, j], cb[:, j]).pvalue
    return pvalues


@pytest.fixture(scope="module")
def images():
    ds = SyntheticShapes(N_IMAGES, SIDE, 10, seed=11, split="train")
    return [ds[i][0] for i in range(N_IMAGES)]


@pytest.fixture(scope="module")
def reference(images):
    with pytest.MonkeyPatch.context() as mp:
        return reference_sample(images, mp)


def test_fast_path_matches_reference_distribution(images, reference):
    pvalues = compare(reference, fast_sample(images))
    failed = {k: p for k, p in pvalues.items() if p <= 1e-3}
    assert not failed, failed
    assert len(reference["local"]["area"]) == N_LOCAL * N_IMAGES


def test_negative_control_wrong_local_scale_fails(images, reference):
    pvalues = compare(reference, fast_sample(images, local_scale=(0.4, 1.0)))
    assert pvalues["local/area"] < 1e-3
    assert pvalues["global1/area"] > 1e-3  # the globals were not touched


def _set(**changes):
    def edit(photometric):
        for name, value in changes.items():
            setattr(photometric, name, value)
    return edit


@pytest.mark.parametrize("edit", [
    _set(gray_p=0.5),  # grayscale 0.5 instead of 0.2
    _set(blur_p={"global1": 0.1, "global2": 1.0, "local": 0.5}),  # the two global views' blur swapped
    _set(blur_p={"global1": 0.0, "global2": 0.0, "local": 0.0}),  # no blur
], ids=["gray_0.5", "global_blur_swapped", "no_blur"])
def test_negative_control_wrong_photometry_fails(images, reference, edit):
    pvalues = compare(reference, fast_sample(images, photometric_edit=edit))
    assert min(p for k, p in pvalues.items() if k.split("/")[1] in COLOUR_STATS) < 1e-3
