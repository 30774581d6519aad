"""The embedded synthetic data set: determinism, masks, balance, and that only shape carries the class."""

import math

import numpy as np
import pytest
from PIL import Image
from scipy import ndimage

from dinolab.data.synthetic import AREA_RANGE, BACKGROUNDS, CLASS_NAMES, GREY_BASE, SyntheticShapes

S = 32
# Accuracy above chance (1/6) that counts as a class leak: ~5 binomial standard errors on 600 test images.
LEAK_MARGIN = 0.08


@pytest.fixture(scope="module", params=["vivid", "muted", "grey", "light"])
def six_class(request):
    """600 train / 600 test images of 6 classes, as arrays: (images, masks, labels) per split; every palette."""
    train = SyntheticShapes(600, S, 6, seed=3, split="train", palette=request.param).arrays()
    test = SyntheticShapes(600, S, 6, seed=3, split="test", palette=request.param).arrays()
    return train, test


def knn_accuracy(train_x, train_y, test_x, test_y, k=10):
    """Majority-vote k-NN on standardised features (an independent, plain classifier for the controls)."""
    mu, sd = train_x.mean(0), train_x.std(0) + 1e-8
    a, b = (train_x - mu) / sd, (test_x - mu) / sd
    d = (b ** 2).sum(1)[:, None] - 2 * b @ a.T + (a ** 2).sum(1)[None, :]
    nearest = np.argsort(d, axis=1)[:, :k]
    n_cls = int(train_y.max()) + 1
    pred = np.array([np.bincount(train_y[row], minlength=n_cls).argmax() for row in nearest])
    return float((pred == test_y).mean())


def centroid_accuracy(train_x, train_y, test_x, test_y):
    mu, sd = train_x.mean(0), train_x.std(0) + 1e-8
    a, b = (train_x - mu) / sd, (test_x - mu) / sd
    centres = np.stack([a[train_y == c].mean(0) for c in range(int(train_y.max()) + 1)])
    return float((((b[:, None, :] - centres[None]) ** 2).sum(-1).argmin(1) == test_y).mean())


def mean_colour(images):
    return images.reshape(len(images), -1, 3).mean(1).astype(np.float64)  # (N, 3)


def masked_mean_colour(images, masks, inside=True):
    sel = masks if inside else ~masks
    return np.stack([img[m].mean(0) for img, m in zip(images.astype(np.float64), sel)])  # (N, 3)


def background_texture(images, masks):
    """Histogram of gradient magnitudes over background pixels away from the object: flat/gradient/stripes/... ."""
    g = images.astype(np.float64).mean(-1)  # (N, S, S) luminance
    mag = np.abs(np.diff(g, axis=1))[:, :, :-1] + np.abs(np.diff(g, axis=2))[:, :-1, :]  # (N, S-1, S-1)
    out = []
    for m, k in zip(masks, mag):
        away = ~ndimage.binary_dilation(m, iterations=2)[:-1, :-1]
        out.append(np.histogram(k[away], bins=8, range=(0, 64))[0] / away.sum())
    return np.array(out)  # (N, 8)


def colour_histogram(images, bins=4):
    q = (images // (256 // bins)).reshape(len(images), -1, 3).astype(np.int64)
    codes = q[..., 0] * bins * bins + q[..., 1] * bins + q[..., 2]
    return np.stack([np.bincount(c, minlength=bins ** 3) for c in codes]).astype(np.float64)  # (N, bins^3)


def shape_descriptor(masks):
    """Rotation/scale-invariant: histogram of pixel distances to the centroid / sqrt(area), plus elongation."""
    yy, xx = np.mgrid[0:masks.shape[1], 0:masks.shape[2]] + 0.5
    out = []
    for m in masks:
        area = m.sum()
        cy, cx = yy[m].mean(), xx[m].mean()
        r = np.hypot(yy[m] - cy, xx[m] - cx) / math.sqrt(area)
        hist = np.histogram(r, bins=8, range=(0, 1.6))[0] / area
        eig = np.linalg.eigvalsh(np.cov(np.stack([yy[m], xx[m]])))
        out.append(np.r_[hist, eig[0] / eig[1]])
    return np.array(out)  # (N, 9)


def test_items_are_rgb_pil_with_int_labels():
    ds = SyntheticShapes(12, S, 4, seed=0, split="train")
    img, label = ds[5]
    assert isinstance(img, Image.Image) and img.mode == "RGB" and img.size == (S, S)
    assert isinstance(label, int) and label == ds.targets[5]
    assert ds.classes == CLASS_NAMES[:4] and len(ds) == 12
    assert ds.mask(5).shape == (S, S) and ds.mask(5).dtype == bool
    with pytest.raises(IndexError):
        ds[12]


def test_transform_is_applied():
    ds = SyntheticShapes(4, S, 2, seed=0, split="train", transform=lambda im: np.asarray(im).shape)
    assert ds[0][0] == (S, S, 3)


def test_invalid_arguments_raise():
    with pytest.raises(ValueError, match="train, test"):
        SyntheticShapes(10, S, 2, seed=0, split="val")
    with pytest.raises(ValueError, match="num_classes"):
        SyntheticShapes(10, S, 11, seed=0, split="train")


def test_backgrounds_and_rotation_options():
    flat = SyntheticShapes(30, S, 4, seed=0, split="train", backgrounds=("flat", "stripes"), max_rotation=10.0)
    kinds = {flat.describe(i)["background"] for i in range(30)}
    assert kinds == {"flat", "stripes"}
    angles = np.degrees([flat.describe(i)["angle"] for i in range(30)])
    assert np.abs(angles).max() <= 10.0 and angles.std() > 2.0  # drawn in [-10, 10] degrees, not constant
    anywhere = SyntheticShapes(30, S, 4, seed=0, split="train")
    assert {anywhere.describe(i)["background"] for i in range(30)} == set(BACKGROUNDS)
    assert np.degrees([anywhere.describe(i)["angle"] for i in range(30)]).max() > 90.0
    with pytest.raises(ValueError, match="backgrounds"):
        SyntheticShapes(10, S, 2, seed=0, split="train", backgrounds=("plaid",))
    with pytest.raises(ValueError, match="max_rotation"):
        SyntheticShapes(10, S, 2, seed=0, split="train", max_rotation=200.0)


def test_deterministic_from_seed_split_index():
    a = SyntheticShapes(20, S, 5, seed=7, split="train")
    b = SyntheticShapes(40, S, 5, seed=7, split="train")  # another size, fresh cache, reversed access order
    for i in reversed(range(20)):
        assert np.array_equal(np.asarray(b[i][0]), np.asarray(a[i][0]))
        assert np.array_equal(b.mask(i), a.mask(i))
    other_seed = SyntheticShapes(20, S, 5, seed=8, split="train")
    other_split = SyntheticShapes(20, S, 5, seed=7, split="test")
    for other in (other_seed, other_split):
        same = [np.array_equal(np.asarray(other[i][0]), np.asarray(a[i][0])) for i in range(20)]
        assert not any(same)


def test_labels_balanced_and_every_class_drawn():
    ds = SyntheticShapes(103, S, 10, seed=0, split="train")
    counts = np.bincount(ds.targets, minlength=10)
    assert counts.max() - counts.min() <= 1
    assert [ds.describe(i)["shape"] for i in range(10)] == CLASS_NAMES


def test_masks_nonempty_flat_and_distinct_from_surroundings(six_class):
    (images, masks, labels), _ = six_class
    img = images.astype(np.float64)
    areas = masks.sum((1, 2))
    assert areas.min() > 0.5 * AREA_RANGE[0] * S * S
    for i in range(0, len(images), 7):
        inner = ndimage.binary_erosion(masks[i], structure=np.ones((3, 3)))  # 8-connected interior: no anti-aliased rim
        around = ndimage.binary_dilation(masks[i], iterations=3) & ~ndimage.binary_dilation(masks[i], iterations=1)
        assert inner.sum() > 0 and around.sum() > 0, i
        obj = img[i][inner]  # (n, 3)
        colour = obj.mean(0)
        # The object is one colour (plus pixel noise, sigma ~5 levels) ...
        assert np.percentile(np.abs(obj - colour), 99) < 20, i
        # ... that the background just outside it does not have.
        dist = np.linalg.norm(img[i][around] - colour, axis=1)
        assert np.median(dist) > 0.25 * 255, i


def test_mask_of_a_disk_is_the_drawn_disk():
    """Independent rasterisation: pixel centres well inside the circle are in the mask, well outside are not."""
    ds = SyntheticShapes(60, S, 6, seed=1, split="test")
    yy, xx = np.mgrid[0:S, 0:S] + 0.5
    checked = 0
    for i in range(len(ds)):
        p = ds.describe(i)
        if p["shape"] != "disk":
            continue
        r = np.hypot(xx - p["centre"][0], yy - p["centre"][1])
        m = ds.mask(i)
        assert m[r < p["radius"] - 0.75].all() and not m[r > p["radius"] + 0.75].any()
        assert abs(m.sum() - math.pi * p["radius"] ** 2) < 2 * math.pi * p["radius"]
        checked += 1
    assert checked == 10


def test_object_area_follows_the_drawn_fraction_for_every_shape():
    ds = SyntheticShapes(100, S, 10, seed=2, split="train")
    for i in range(len(ds)):
        p = ds.describe(i)
        expected = p["area_fraction"] * S * S
        assert abs(ds.mask(i).sum() - expected) < 0.15 * expected + 6, (p["shape"], ds.mask(i).sum(), expected)


def test_colour_and_size_do_not_carry_the_class_but_shape_does(six_class, request):
    (tr_img, tr_mask, tr_y), (te_img, te_mask, te_y) = six_class
    chance = 1 / 6
    # Negative controls: what a network would see without learning shape.
    assert knn_accuracy(mean_colour(tr_img), tr_y, mean_colour(te_img), te_y) < chance + LEAK_MARGIN
    assert centroid_accuracy(mean_colour(tr_img), tr_y, mean_colour(te_img), te_y) < chance + LEAK_MARGIN
    assert knn_accuracy(colour_histogram(tr_img), tr_y, colour_histogram(te_img), te_y) < chance + LEAK_MARGIN
    # The object's own colour and the background's (the whole-image mean dilutes the object's colour).
    for inside in (True, False):
        col_tr, col_te = masked_mean_colour(tr_img, tr_mask, inside), masked_mean_colour(te_img, te_mask, inside)
        assert knn_accuracy(col_tr, tr_y, col_te, te_y) < chance + LEAK_MARGIN
        assert centroid_accuracy(col_tr, tr_y, col_te, te_y) < chance + LEAK_MARGIN
    tex_tr, tex_te = background_texture(tr_img, tr_mask), background_texture(te_img, te_mask)
    assert knn_accuracy(tex_tr, tr_y, tex_te, te_y) < chance + LEAK_MARGIN
    area_tr, area_te = tr_mask.sum((1, 2))[:, None].astype(float), te_mask.sum((1, 2))[:, None].astype(float)
    assert knn_accuracy(area_tr, tr_y, area_te, te_y) < chance + LEAK_MARGIN
    raw_tr, raw_te = tr_img.reshape(len(tr_img), -1).astype(float), te_img.reshape(len(te_img), -1).astype(float)
    if request.node.callspec.params["six_class"] != "light":
        # With "light" nothing but the object varies, so raw pixels carry its shape itself (k-NN ~0.29 here):
        # not a leak of another cue. The networks' k-NN at random init is measured in tests/test_learning.py.
        assert knn_accuracy(raw_tr, tr_y, raw_te, te_y) < chance + LEAK_MARGIN
    # Positive control: the same classifiers on shape descriptors of the masks separate the classes,
    # so the classifiers above were able to succeed had the features carried the class.
    shape_tr, shape_te = shape_descriptor(tr_mask), shape_descriptor(te_mask)
    assert knn_accuracy(shape_tr, tr_y, shape_te, te_y) > 0.8
    assert centroid_accuracy(shape_tr, tr_y, shape_te, te_y) > 0.8
    # And the classifier is not fooled into "near chance" by a bug: colour does carry a planted class signal.
    planted = mean_colour(tr_img) + 100.0 * tr_y[:, None]
    planted_te = mean_colour(te_img) + 100.0 * te_y[:, None]
    assert knn_accuracy(planted, tr_y, planted_te, te_y) > 0.6


def test_several_objects_of_the_class_shape_each_drawn_where_described():
    """objects=(2, 3): every image holds 2-3 disks (class 0), each with its own colour and place; the mask is
    their union, checked against an independent rasterisation of the described circles."""
    ds = SyntheticShapes(24, S, 2, seed=4, split="train", palette="vivid", objects=(2, 3), area_range=(0.03, 0.06))
    yy, xx = np.mgrid[0:S, 0:S] + 0.5
    counts = set()
    for i in range(0, len(ds), 2):  # the disks (label 0)
        p = ds.describe(i)
        assert p["shape"] == "disk" and p["centre"] == p["objects"][0]["centre"]
        objects = p["objects"]
        counts.add(len(objects))
        dist = np.stack([np.hypot(xx - o["centre"][0], yy - o["centre"][1]) - o["radius"] for o in objects])  # (n, S, S)
        m = ds.mask(i)
        assert m[dist.min(0) < -0.75].all() and not m[dist.min(0) > 0.75].any(), i
        colours = np.array([o["colour"] for o in objects])
        assert min(np.linalg.norm(a - b) for k, a in enumerate(colours) for b in colours[k + 1:]) > 0.0
    assert counts == {2, 3}


def test_grey_palette_has_one_background_level_and_objects_of_either_polarity():
    """palette="grey": every flat background is GREY_BASE in all three channels (so an image's grey level tells
    nothing about it), and each object is 0.3-0.4 lighter or darker than it, the side drawn per object."""
    ds = SyntheticShapes(40, S, 4, seed=2, split="train", palette="grey", objects=(3, 4), area_range=(0.04, 0.07),
                         backgrounds=("flat",))
    mixed = 0
    for i in range(len(ds)):
        p = ds.describe(i)
        assert p["background_colours"] == ((GREY_BASE,) * 3, (GREY_BASE,) * 3)
        offsets = np.array([np.mean(o["colour"]) - GREY_BASE for o in p["objects"]])
        assert np.all((np.abs(offsets) > 0.3 - 0.1) & (np.abs(offsets) < 0.4 + 0.1)), offsets
        mixed += bool((offsets > 0).any() and (offsets < 0).any())
        img, m = np.asarray(ds[i][0], dtype=float) / 255.0, ds.mask(i)
        far = ~ndimage.binary_dilation(m, iterations=2)
        assert abs(img[far].mean() - GREY_BASE) < 0.02  # the drawn background (pixel noise averages out)
    assert mixed > len(ds) // 3  # polarity is per object, not per image


def test_light_palette_has_one_background_level_and_one_polarity():
    """palette="light": the flat background is GREY_BASE in all three channels, and every object is a pure grey
    0.3-0.4 lighter than it, so neither an image's grey level nor its polarity tells it apart."""
    ds = SyntheticShapes(40, S, 4, seed=2, split="train", palette="light", area_range=(0.12, 0.2), backgrounds=("flat",))
    for i in range(len(ds)):
        p = ds.describe(i)
        assert p["background_colours"] == ((GREY_BASE,) * 3, (GREY_BASE,) * 3)
        r, g, b = p["colour"]
        assert r == g == b and 0.3 <= r - GREY_BASE <= 0.4, p["colour"]
        img, m = np.asarray(ds[i][0], dtype=float) / 255.0, ds.mask(i)
        far = ~ndimage.binary_dilation(m, iterations=2)
        assert abs(img[far].mean() - GREY_BASE) < 0.02
        core = ndimage.binary_erosion(m, iterations=1)
        assert core.any() and abs(img[core].mean() - r) < 0.03  # the object is drawn in its grey


def test_one_object_draws_the_images_of_the_default():
    a = SyntheticShapes(12, S, 4, seed=5, split="test")
    b = SyntheticShapes(12, S, 4, seed=5, split="test", objects=(1, 1))
    for i in range(12):
        assert np.array_equal(np.asarray(a[i][0]), np.asarray(b[i][0])) and len(b.describe(i)["objects"]) == 1
    with pytest.raises(ValueError, match="objects"):
        SyntheticShapes(10, S, 2, seed=0, split="train", objects=(3, 2))
