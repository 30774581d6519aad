"""build_dataset / check_data / data_fingerprint on tiny ImageFolder and CIFAR trees built in tmp_path."""

import pickle
import shutil
import tarfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from dinolab.config import ConfigError
from dinolab.config.schema import DataConfig
from dinolab.data.datasets import build_dataset, check_data, data_fingerprint, subset_indices

TARBALL = Path("/work/shared/datasets/cifar10-jpeg.tar.gz")


def _save(path: Path, size=(12, 12), mode="RGB", fmt=None, seed=0):
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    w, h = size
    if mode == "L":
        img = Image.fromarray(rng.integers(0, 256, (h, w), dtype=np.uint8), mode="L")
    elif mode == "I;16":
        img = Image.fromarray(rng.integers(0, 65536, (h, w), dtype=np.uint16))
    else:
        img = Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8), mode="RGB")
        if mode == "RGBA":
            img = img.convert("RGBA")
    img.save(path, format=fmt)


def make_imagefolder(root: Path, test_name="test") -> Path:
    """train/{cat,dog,emu} and <test_name>/{cat,emu} (dog missing from test) with mixed formats and sizes."""
    _save(root / "train/cat/a.png", seed=1)
    _save(root / "train/cat/b.jpg", size=(17, 23), seed=2)  # odd size, JPEG
    _save(root / "train/dog/c.png", mode="L", seed=3)  # grayscale
    _save(root / "train/dog/d.JPEG", fmt="JPEG", seed=4)
    _save(root / "train/emu/e.png", mode="RGBA", seed=5)
    _save(root / "train/emu/f.png", mode="I;16", seed=6)  # 16-bit grayscale
    (root / "train/emu/notes.txt").write_text("not an image")
    _save(root / f"{test_name}/cat/g.png", seed=7)
    _save(root / f"{test_name}/emu/h.jpg", size=(40, 30), seed=8)
    return root


def make_cifar10(root: Path, per_batch=3) -> Path:
    """torchvision's cifar-10-batches-py pickle layout with a few images per batch."""
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for k, name in enumerate([f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]):
        data = rng.integers(0, 256, (per_batch, 3 * 32 * 32), dtype=np.uint8)
        labels = [(k + j) % 10 for j in range(per_batch)]
        with open(folder / name, "wb") as f:
            pickle.dump({"batch_label": name, "data": data, "labels": labels, "filenames": []}, f)
    names = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
    with open(folder / "batches.meta", "wb") as f:
        pickle.dump({"label_names": names, "num_cases_per_batch": per_batch}, f)
    return root


def cfg(name, root=None, **kw) -> DataConfig:
    return DataConfig(name=name, root=None if root is None else str(root), **kw)


# ------------------------------------------------------------------------------------------- synthetic


def test_synthetic_sizes_classes_and_limit():
    c = cfg("synthetic", synthetic_train=40, synthetic_test=12, synthetic_size=16, synthetic_classes=4)
    train, test = build_dataset(c, "train"), build_dataset(c, "test")
    assert (len(train), len(test)) == (40, 12) and train.classes == test.classes and len(train.classes) == 4
    assert train[0][0].size == (16, 16)
    limited = build_dataset(c.model_copy(update={"train_limit": 10}), "train")
    assert len(limited) == 10 and len(limited.targets) == 10 and limited.classes == train.classes
    chosen = subset_indices(40, 10)
    for j, i in enumerate(chosen):
        assert limited.targets[j] == train.targets[i]
        assert np.array_equal(np.asarray(limited[j][0]), np.asarray(train[i][0]))
    # the test split is never limited; a limit above the size is a no-op
    assert len(build_dataset(c.model_copy(update={"train_limit": 10}), "test")) == 12
    assert len(build_dataset(c.model_copy(update={"train_limit": 400}), "train")) == 40
    check_data(c)  # nothing to check


def test_subset_is_fixed_random_and_sorted():
    a = subset_indices(1000, 50)
    assert a == subset_indices(1000, 50) and a == sorted(a) and len(set(a)) == 50
    assert a != list(range(50))  # a random choice, not the first N (which would be class-ordered for some sets)


def test_bad_split_raises():
    with pytest.raises(ValueError, match="train, test"):
        build_dataset(cfg("synthetic"), "val")


# ----------------------------------------------------------------------------------------- imagefolder


def test_imagefolder_items_rgb_classes_from_train(tmp_path):
    root = make_imagefolder(tmp_path / "data")
    c = cfg("imagefolder", root)
    check_data(c)
    train, test = build_dataset(c, "train"), build_dataset(c, "test")
    assert train.classes == ["cat", "dog", "emu"] == test.classes
    assert len(train) == 6 and train.targets == [0, 0, 1, 1, 2, 2]
    # test/ lacks dog: emu keeps its train index 2
    assert test.targets == [0, 2]
    sizes = set()
    for ds in (train, test):
        for i in range(len(ds)):
            img, label = ds[i]
            assert isinstance(img, Image.Image) and img.mode == "RGB" and label == ds.targets[i]
            sizes.add(img.size)
    assert (17, 23) in sizes and (40, 30) in sizes
    # 16-bit grayscale is rescaled to 8 bits, not clipped to white
    assert np.asarray(train[5][0]).std() > 20


def test_imagefolder_val_folder_and_transform(tmp_path):
    root = make_imagefolder(tmp_path / "data", test_name="val")
    test = build_dataset(cfg("imagefolder", root), "test", transform=lambda im: im.size)
    assert test[1] == ((40, 30), 2)


def test_imagefolder_train_limit(tmp_path):
    root = make_imagefolder(tmp_path / "data")
    limited = build_dataset(cfg("imagefolder", root, train_limit=4), "train")
    full = build_dataset(cfg("imagefolder", root), "train")
    assert len(limited) == 4 and limited.targets == [full.targets[i] for i in subset_indices(6, 4)]


def _assert_config_error(c, *words):
    with pytest.raises(ConfigError) as info:
        check_data(c)
    msg = str(info.value)
    assert "\n" not in msg, msg
    assert "data.root" in msg or "data.name" in msg, msg
    for w in words:
        assert w in msg, msg
    return msg


def test_check_data_root_problems(tmp_path):
    for name in ("imagefolder", "cifar10", "cifar100"):
        _assert_config_error(cfg(name), "data.root is not set")
        _assert_config_error(cfg(name, tmp_path / "nowhere"), "does not exist")
        (tmp_path / "file.txt").write_text("x")
        _assert_config_error(cfg(name, tmp_path / "file.txt"), "not a folder")
        (tmp_path / "empty").mkdir(exist_ok=True)
        _assert_config_error(cfg(name, tmp_path / "empty"), "is empty")
    # build_dataset refuses the same way
    with pytest.raises(ConfigError, match="does not exist"):
        build_dataset(cfg("imagefolder", tmp_path / "nowhere"), "train")


def test_check_data_imagefolder_layout_problems(tmp_path):
    root = tmp_path / "a"
    _save(root / "cat/a.png")  # classes at the top, no train/
    _assert_config_error(cfg("imagefolder", root), "no train/")
    root = tmp_path / "b"
    _save(root / "train/a.png")  # images but no class folders
    _assert_config_error(cfg("imagefolder", root), "no class subfolders")
    root = tmp_path / "c"
    _save(root / "train/cat/a.png")
    _assert_config_error(cfg("imagefolder", root), "no test/ or val/")
    root = make_imagefolder(tmp_path / "d")
    (root / "train/fox").mkdir()
    (root / "train/fox/readme.md").write_text("x")
    _assert_config_error(cfg("imagefolder", root), "train/fox/ holds no images")
    root = tmp_path / "e"
    _save(root / "train/cat/a.png")
    (root / "test/cat").mkdir(parents=True)
    _assert_config_error(cfg("imagefolder", root), "test/ holds no images")
    root = make_imagefolder(tmp_path / "f")
    _save(root / "test/yak/z.png")
    _assert_config_error(cfg("imagefolder", root), "not in train/", "yak")


def test_check_data_unreadable_images(tmp_path):
    root = make_imagefolder(tmp_path / "garbage")
    (root / "train/cat/0_bad.jpg").write_bytes(b"this is not a jpeg")  # sorts first in its class
    _assert_config_error(cfg("imagefolder", root), "unreadable image", "train/cat/0_bad.jpg")
    # A truncated JPEG: PIL's verify() accepts it, a full decode does not.
    root = make_imagefolder(tmp_path / "truncated")
    good = root / "test/emu/h.jpg"
    _save(root / "test/emu/0_cut.jpg", size=(64, 64), seed=9)
    data = (root / "test/emu/0_cut.jpg").read_bytes()
    (root / "test/emu/0_cut.jpg").write_bytes(data[: len(data) // 2])
    assert good.exists()
    _assert_config_error(cfg("imagefolder", root), "unreadable image", "test/emu/0_cut.jpg")


# ----------------------------------------------------------------------------------------------- cifar


def test_cifar10_pickles(tmp_path):
    root = make_cifar10(tmp_path / "c10")
    c = cfg("cifar10", root)
    check_data(c)
    train, test = build_dataset(c, "train"), build_dataset(c, "test")
    assert len(train) == 15 and len(test) == 3 and len(train.classes) == 10 and train.classes[0] == "airplane"
    img, label = train[4]
    assert img.mode == "RGB" and img.size == (32, 32) and label == train.targets[4] == (1 + 1) % 10
    # channel-major rows: pixel (y=2, x=5) red/green/blue are at 2*32+5, +1024, +2048
    with open(root / "cifar-10-batches-py/data_batch_2", "rb") as f:
        row = pickle.load(f)["data"][1]
    assert tuple(np.asarray(img)[2, 5]) == (row[69], row[1024 + 69], row[2048 + 69])
    # data.root may also be the batches folder itself
    assert len(build_dataset(cfg("cifar10", root / "cifar-10-batches-py"), "test")) == 3
    assert len(build_dataset(cfg("cifar10", root, train_limit=5), "train")) == 5


def test_cifar_problems(tmp_path):
    root = tmp_path / "wrong"
    (root / "something").mkdir(parents=True)
    _assert_config_error(cfg("cifar10", root), "no cifar-10-batches-py/")
    _assert_config_error(cfg("cifar100", root), "no cifar-100-python/")
    root = make_cifar10(tmp_path / "missing")
    (root / "cifar-10-batches-py/data_batch_3").unlink()
    _assert_config_error(cfg("cifar10", root), "lacks data_batch_3")
    root = make_cifar10(tmp_path / "garbage")
    (root / "cifar-10-batches-py/test_batch").write_bytes(b"\x00not a pickle")
    _assert_config_error(cfg("cifar10", root), "test_batch is not a CIFAR pickle")


# ----------------------------------------------------------------------------------------- fingerprint


def test_fingerprint_independent_of_location_and_sensitive_to_content(tmp_path):
    root = make_imagefolder(tmp_path / "one")
    fp = data_fingerprint(cfg("imagefolder", root))
    assert len(fp) == 16 and int(fp, 16) >= 0
    moved = tmp_path / "elsewhere" / "two"
    moved.parent.mkdir()
    shutil.move(str(root), str(moved))
    assert data_fingerprint(cfg("imagefolder", moved)) == fp
    (moved / "train/emu/notes.txt").write_text("not an image, changed")  # ignored: not read by the dataset
    assert data_fingerprint(cfg("imagefolder", moved)) == fp
    _save(moved / "train/cat/new.png", seed=11)
    fp_added = data_fingerprint(cfg("imagefolder", moved))
    assert fp_added != fp
    (moved / "train/cat/new.png").rename(moved / "train/dog/new.png")  # same bytes, another class
    assert data_fingerprint(cfg("imagefolder", moved)) not in (fp, fp_added)


def test_fingerprint_cifar_and_synthetic(tmp_path):
    a = data_fingerprint(cfg("cifar10", make_cifar10(tmp_path / "a")))
    assert data_fingerprint(cfg("cifar10", make_cifar10(tmp_path / "b"))) == a
    assert data_fingerprint(cfg("cifar10", make_cifar10(tmp_path / "c", per_batch=4))) != a
    s = data_fingerprint(cfg("synthetic"))
    assert s == data_fingerprint(cfg("synthetic")) and s != a
    assert data_fingerprint(cfg("synthetic", synthetic_seed=1)) != s
    assert data_fingerprint(cfg("synthetic", synthetic_classes=4)) != s
    assert data_fingerprint(cfg("synthetic", num_workers=3)) == s  # runtime fields do not count


@pytest.mark.slow
def test_real_cifar10_jpeg_subset(tmp_path):
    """Three real CIFAR-10 JPEGs per split of two classes from the shared tarball, read as an ImageFolder."""
    if not TARBALL.is_file():
        pytest.skip(f"{TARBALL} not present")
    classes, per_key = ("airplane", "automobile"), 3
    counts = {}
    with tarfile.open(TARBALL) as tar:
        for member in tar:  # streamed; stop once every (split, class) has its files
            parts = Path(member.name).parts  # cifar10/<split>/<class>/<file>
            if member.isfile() and len(parts) == 4 and parts[2] in classes:
                key = parts[1:3]
                if counts.get(key, 0) < per_key:
                    counts[key] = counts.get(key, 0) + 1
                    tar.extract(member, tmp_path, filter="data")
            if len(counts) == 4 and min(counts.values()) == per_key:
                break
    c = cfg("imagefolder", tmp_path / "cifar10")
    check_data(c)
    train, test = build_dataset(c, "train"), build_dataset(c, "test")
    assert train.classes == list(classes) and len(train) == 6 and len(test) == 6
    assert train[0][0].size == (32, 32) and train[0][0].mode == "RGB"
    assert sorted(set(test.targets)) == [0, 1]
    assert len(data_fingerprint(c)) == 16
