"""Datasets by name: the embedded synthetic shapes, an ImageFolder tree, CIFAR-10/100 pickles.

``build_dataset(data_cfg, split)`` returns a torch Dataset of ``(PIL RGB image | transform(image), int label)``
with ``.classes`` (list of names) and ``.targets`` (list of int labels, one per item).

Layouts under ``data.root``:

- ``imagefolder``: ``train/<class>/<image>`` and, for the test split, ``test/<class>/<image>`` (or
  ``val/<class>/<image>`` when there is no ``test/``). Class indices come from the sorted train class
  folders and are reused for the test split, so a test folder missing a class keeps the indices right.
  Images of any size and mode are returned as RGB PIL images.
- ``cifar10`` / ``cifar100``: torchvision's python-pickle release, ``cifar-10-batches-py/`` or
  ``cifar-100-python/`` inside ``data.root`` (``data.root`` may also be that folder itself). The pickles
  are read here rather than by ``torchvision.datasets.CIFAR10`` because torchvision insists on the
  official files' MD5 sums, which would refuse a re-packed or partial copy. Unlike torchvision, the
  files go through a restricted unpickler (``cifar_pickle``): a file holding anything but the format's
  dicts, lists, strings, numbers and number arrays is refused (ConfigError naming it) and nothing of it runs.

``data.train_limit = N`` keeps a fixed subset of N train images, drawn with ``SUBSET_SEED`` (not the
trial's seed, so every trial of a grid sees the same images).

Folders are walked following symbolic links, but each real folder and each real file is visited once:
a link loop (``class/again -> .``) neither hangs the walk nor multiplies the images.

Unreadable images: ``check_data`` decodes a sample of each class; a file that fails to decode later,
during training or evaluation, is replaced by the next readable image of the split, with a warning
naming it, and counted. The training loop logs the count per epoch (metric ``unreadable_images``) and
fails the run when more than ``MAX_UNREADABLE_FRACTION`` of the images read in an epoch were unreadable.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import multiprocessing
from pathlib import Path
from typing import Any, Callable, Iterator, Optional, Sequence

import numpy as np
from PIL import Image
from torch.utils.data import Dataset
from torchvision.datasets import ImageFolder

from ..config.loader import ConfigError
from ..config.schema import DataConfig
from .cifar_pickle import RefusedPickle, load_cifar_pickle
from .synthetic import GENERATOR_VERSION, SyntheticShapes

log = logging.getLogger(__name__)

SPLITS = ("train", "test")
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")
TEST_FOLDERS = ("test", "val")  # the first that exists is the imagefolder test split
SUBSET_SEED = 0
# Images opened per class folder by check_data (a sample: opening every file of ImageNet takes minutes).
CHECK_PER_CLASS = 1
# A run fails when more than this fraction of the images read in one epoch cannot be decoded (fewer are
# replaced by the next readable image, named in a warning and counted).
MAX_UNREADABLE_FRACTION = 0.01

CIFAR_LAYOUT = {
    # name: (folder, train files, test files, meta file, meta key, label key)
    "cifar10": ("cifar-10-batches-py", [f"data_batch_{i}" for i in range(1, 6)], ["test_batch"],
                "batches.meta", "label_names", "labels"),
    "cifar100": ("cifar-100-python", ["train"], ["test"], "meta", "fine_label_names", "fine_labels"),
}
_LAYOUT_HINT = {
    "imagefolder": "a folder with train/<class>/<image> and test/<class>/<image> (or val/)",
    "cifar10": "a folder containing cifar-10-batches-py/ (data_batch_1..5, test_batch, batches.meta)",
    "cifar100": "a folder containing cifar-100-python/ (train, test, meta)",
}


def _check_split(split: str) -> None:
    if split not in SPLITS:
        raise ValueError(f"split must be one of {', '.join(SPLITS)}, got {split!r}")


# --------------------------------------------------------------------------------------------- datasets


class ClassFolder(ImageFolder):
    """``torchvision.datasets.ImageFolder`` with a given class list (the train split's), images as RGB PIL.

    The walk follows links but visits each real folder and file once (``_walk``); an unreadable image is
    replaced by the next readable one and counted (see the module docstring and ``take_unreadable``).
    """

    def __init__(self, root: str | os.PathLike, classes: Sequence[str], transform: Optional[Callable] = None) -> None:
        self._given_classes = list(classes)
        super().__init__(str(root), transform=transform, loader=_load_rgb, allow_empty=True,
                         is_valid_file=_is_image)
        # Shared with DataLoader worker processes: images read, unreadable ones, the first unreadable file.
        self.reads = multiprocessing.Value("q", 0)
        self.unreadable = multiprocessing.Value("q", 0)
        self.first_unreadable = multiprocessing.Array("c", 1024)
        self._warned: set[str] = set()

    def find_classes(self, directory: str | os.PathLike) -> tuple[list[str], dict[str, int]]:
        return list(self._given_classes), {c: i for i, c in enumerate(self._given_classes)}

    @staticmethod
    def make_dataset(directory, class_to_idx, extensions=None, is_valid_file=None, allow_empty=False) -> list[tuple[str, int]]:
        """torchvision's order (classes sorted, folders sorted by path, files sorted), through the loop-safe walk."""
        samples = []
        for c in sorted(class_to_idx):
            folder = os.path.join(directory, c)
            if os.path.isdir(folder):
                for dirpath, files in sorted(_walk(folder)):
                    samples += [(os.path.join(dirpath, f), class_to_idx[c]) for f in files]
        return samples

    def __getitem__(self, index: int) -> tuple[Any, Any]:
        for k in range(len(self.samples)):
            path, target = self.samples[(index + k) % len(self.samples)]
            with self.reads.get_lock():
                self.reads.value += 1
            try:
                sample = self.loader(path)
            except Exception as e:  # noqa: BLE001 - PIL raises many types for a damaged file
                self._count_unreadable(path, e)
                continue
            return (self.transform(sample) if self.transform is not None else sample), target
        raise RuntimeError(f"data.root: no image of {self.root} can be read")

    def _count_unreadable(self, path: str, error: Exception) -> None:
        reason = f"{type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}"
        if path not in self._warned:  # once per file and process (every epoch meets it again)
            self._warned.add(path)
            log.warning("unreadable image %s (%s); replaced by the next image", path, reason)
        with self.unreadable.get_lock():
            if self.unreadable.value == 0:
                self.first_unreadable.value = f"{path} ({reason})".encode()[:1000]
            self.unreadable.value += 1


def take_unreadable(dataset: Dataset) -> Optional[tuple[int, int, str]]:
    """(unreadable, read, first unreadable file) since the last call, and reset; None for data sets whose
    items are always readable (synthetic, CIFAR arrays)."""
    while isinstance(dataset, LimitedDataset):
        dataset = dataset.base
    if not isinstance(dataset, ClassFolder):
        return None
    with dataset.unreadable.get_lock(), dataset.reads.get_lock():
        out = (int(dataset.unreadable.value), int(dataset.reads.value), dataset.first_unreadable.value.decode(errors="replace"))
        dataset.unreadable.value = dataset.reads.value = 0
        dataset.first_unreadable.value = b""
    return out


def _is_image(path: str) -> bool:
    name = os.path.basename(path)
    return not name.startswith(".") and name.lower().endswith(IMAGE_EXTENSIONS)


def _load_rgb(path: str) -> Image.Image:
    """Any PIL-readable file (grayscale, palette, RGBA, CMYK, 16-bit) -> RGB PIL image."""
    with open(path, "rb") as f:
        img = Image.open(f)
        if img.mode in ("I", "I;16", "I;16B", "I;16L", "F"):  # high bit depth grayscale: rescale to 8 bit
            arr = np.asarray(img, dtype=np.float64)
            lo, hi = float(arr.min()), float(arr.max())
            arr = (arr - lo) / (hi - lo) * 255 if hi > lo else np.zeros_like(arr)
            img = Image.fromarray(arr.astype(np.uint8), mode="L")
        return img.convert("RGB")


class CifarPickles(Dataset):
    """CIFAR-10/100 from the python-pickle release; ``.data`` (N, 32, 32, 3) uint8, ``.targets``, ``.classes``."""

    def __init__(self, folder: Path, name: str, split: str, transform: Optional[Callable] = None) -> None:
        _check_split(split)
        _, train_files, test_files, meta_file, meta_key, label_key = CIFAR_LAYOUT[name]
        arrays, targets = [], []
        for fname in train_files if split == "train" else test_files:
            entry = _unpickle(folder / fname)
            arrays.append(np.asarray(entry["data"], dtype=np.uint8))
            targets.extend(int(t) for t in entry[label_key])
        # Pickled rows are channel-major: (N, 3*32*32) -> (N, 3, 32, 32) -> (N, 32, 32, 3).
        self.data = np.concatenate(arrays).reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1).copy()
        self.targets: list[int] = targets
        self.classes: list[str] = list(_unpickle(folder / meta_file)[meta_key])
        self.transform = transform

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, i: int) -> tuple[Any, int]:
        img = Image.fromarray(self.data[i], mode="RGB")
        return (self.transform(img) if self.transform is not None else img), self.targets[i]


def _unpickle(path: Path) -> Any:
    """A CIFAR file's content; ConfigError naming the file if it holds more than the format does."""
    try:
        return load_cifar_pickle(path)
    except RefusedPickle as e:
        raise ConfigError(f"data.root: {path} refused: it pickles {e}, which is not part of the CIFAR format; nothing of "
                          "it was run (allowed: dicts, lists, str, bytes, int, arrays of numbers)") from None


class LimitedDataset(Dataset):
    """A fixed subset of a dataset (``indices`` into ``base``) that keeps ``.classes`` and ``.targets``."""

    def __init__(self, base: Dataset, indices: Sequence[int]) -> None:
        self.base = base
        self.indices = [int(i) for i in indices]
        self.classes: list[str] = list(base.classes)
        self.targets: list[int] = [int(base.targets[i]) for i in self.indices]

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int) -> tuple[Any, int]:
        return self.base[self.indices[i]]


def subset_indices(n: int, limit: int, seed: int = SUBSET_SEED) -> list[int]:
    """A fixed random choice of ``min(limit, n)`` of ``range(n)``, sorted."""
    if limit >= n:
        return list(range(n))
    return sorted(np.random.default_rng(seed).permutation(n)[:limit].tolist())


def build_dataset(data_cfg: DataConfig, split: str, transform: Optional[Callable] = None) -> Dataset:
    """The ``split`` ("train" | "test") of the configured data set; items are ``(transform(PIL RGB), int)``.

    ``data_cfg.train_limit`` restricts the train split to a fixed seeded subset. Layout problems raise
    ``ConfigError`` (see ``check_data`` for the full check, which also opens sample images).
    """
    _check_split(split)
    name = data_cfg.name
    if name == "synthetic":
        n = data_cfg.synthetic_train if split == "train" else data_cfg.synthetic_test
        ds: Dataset = SyntheticShapes(n, data_cfg.synthetic_size, data_cfg.synthetic_classes, data_cfg.synthetic_seed,
                                      split, transform=transform, palette=data_cfg.synthetic_palette,
                                      area_range=tuple(data_cfg.synthetic_object_area),
                                      backgrounds=tuple(data_cfg.synthetic_backgrounds),
                                      max_rotation=data_cfg.synthetic_max_rotation,
                                      objects=tuple(data_cfg.synthetic_objects))
    elif name == "imagefolder":
        train_dir, test_dir, classes = _imagefolder_layout(data_cfg)
        ds = ClassFolder(train_dir if split == "train" else test_dir, classes, transform=transform)
    elif name in CIFAR_LAYOUT:
        ds = CifarPickles(_cifar_folder(data_cfg), name, split, transform=transform)
    else:
        raise ValueError(f"data.name must be one of synthetic, imagefolder, {', '.join(CIFAR_LAYOUT)}; got {name!r}")
    if split == "train" and data_cfg.train_limit is not None and data_cfg.train_limit < len(ds):
        ds = LimitedDataset(ds, subset_indices(len(ds), data_cfg.train_limit))
    log.debug("data %s/%s: %d images, %d classes", name, split, len(ds), len(ds.classes))
    return ds


# ----------------------------------------------------------------------------------------------- checks


def _root(data_cfg: DataConfig) -> Path:
    """data.root as an existing, non-empty folder, else a one-line ConfigError."""
    hint = _LAYOUT_HINT[data_cfg.name]
    if not data_cfg.root:
        raise ConfigError(f"data.root is not set; data.name = {data_cfg.name} needs {hint}")
    root = Path(data_cfg.root).expanduser()
    if not root.exists():
        raise ConfigError(f"data.root = {str(root)!r} does not exist; data.name = {data_cfg.name} expects {hint}")
    if not root.is_dir():
        raise ConfigError(f"data.root = {str(root)!r} is not a folder; data.name = {data_cfg.name} expects {hint}")
    if not any(True for p in root.iterdir() if not p.name.startswith(".")):
        raise ConfigError(f"data.root = {str(root)!r} is empty; data.name = {data_cfg.name} expects {hint}")
    return root


def _class_dirs(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))


def _walk(top: str | os.PathLike) -> Iterator[tuple[str, list[str]]]:
    """(folder, sorted image file names) for ``top`` and every folder below it, depth first in sorted order
    (``os.walk``'s top-down order), following symbolic links but entering each real folder once and listing
    each real file once: a link loop or a link fanning out to its own folder adds nothing."""
    seen_dirs: set[tuple[int, int]] = set()
    seen_files: set[tuple[int, int]] = set()
    stack = [os.fspath(top)]
    while stack:
        folder = stack.pop()
        try:
            st = os.stat(folder)
            entries = sorted(os.scandir(folder), key=lambda e: e.name)
        except OSError:
            continue
        if (st.st_dev, st.st_ino) in seen_dirs:
            continue
        seen_dirs.add((st.st_dev, st.st_ino))
        files, subdirs = [], []
        for entry in entries:
            try:
                if entry.is_dir():
                    subdirs.append(entry.path)
                    continue
                if not _is_image(entry.name) or not entry.is_file():
                    continue
                if entry.is_symlink():
                    target = os.stat(entry.path)
                    key = (target.st_dev, target.st_ino)
                else:
                    key = (st.st_dev, entry.inode())
            except OSError:  # a dangling link, a file removed meanwhile
                continue
            if key not in seen_files:
                seen_files.add(key)
                files.append(entry.name)
        yield folder, files
        stack.extend(reversed(subdirs))


def _images_in(folder: Path) -> list[Path]:
    """Image files under ``folder`` (recursive, each real file once), sorted."""
    return [Path(dirpath) / f for dirpath, files in _walk(folder) for f in files]


def _imagefolder_layout(data_cfg: DataConfig) -> tuple[Path, Path, list[str]]:
    """(train folder, test folder, train class names), or a ConfigError naming what is missing."""
    root = _root(data_cfg)
    where = f"data.root = {str(root)!r}"
    train = root / "train"
    if not train.is_dir():
        raise ConfigError(f"{where} has no train/ subfolder; data.name = imagefolder expects {_LAYOUT_HINT['imagefolder']}")
    classes = _class_dirs(train)
    if not classes:
        raise ConfigError(f"{where}: train/ has no class subfolders; expected train/<class>/<image>")
    test = next((root / t for t in TEST_FOLDERS if (root / t).is_dir()), None)
    if test is None:
        raise ConfigError(f"{where} has no test/ or val/ subfolder; data.name = imagefolder expects {_LAYOUT_HINT['imagefolder']}")
    extra = sorted(set(_class_dirs(test)) - set(classes))
    if extra:
        raise ConfigError(f"{where}: {test.name}/ has classes not in train/: {', '.join(extra[:5])}; "
                          "the test classes must be train class names")
    return train, test, classes


def _cifar_folder(data_cfg: DataConfig) -> Path:
    """The folder holding the CIFAR pickles, with every file present, else a ConfigError."""
    root = _root(data_cfg)
    folder_name, train_files, test_files, meta_file, _, _ = CIFAR_LAYOUT[data_cfg.name]
    folder = root if root.name == folder_name else root / folder_name
    if not folder.is_dir():
        raise ConfigError(f"data.root = {str(root)!r} has no {folder_name}/; data.name = {data_cfg.name} expects "
                          f"{_LAYOUT_HINT[data_cfg.name]}")
    missing = [f for f in train_files + test_files + [meta_file] if not (folder / f).is_file()]
    if missing:
        raise ConfigError(f"data.root = {str(root)!r}: {folder_name}/ lacks {', '.join(missing)}; data.name = "
                          f"{data_cfg.name} expects {_LAYOUT_HINT[data_cfg.name]}")
    return folder


def _verify_image(path: Path) -> Optional[str]:
    """None if PIL can read the file fully, else the reason."""
    try:
        with Image.open(path) as img:
            img.verify()  # container checks (PNG CRCs, truncation of some formats)
        with Image.open(path) as img:
            img.load()  # full decode: verify() does not decode JPEG data
    except Exception as e:  # PIL raises many types (OSError, SyntaxError, ValueError, ...)
        return f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}".strip()
    return None


def check_training_data(cfg) -> None:
    """``check_data``, then that the training set (after data.train_limit) holds one batch per worker."""
    from dinolab.config.checks import check_batch_fits

    n = check_data(cfg.data)
    if n is not None:
        check_batch_fits(min(n, cfg.data.train_limit or n), cfg, f"data.root = {cfg.data.root!r}")


def check_data(data_cfg: DataConfig) -> Optional[int]:
    """Raise ``ConfigError`` (one line, naming data.root or data.name) if the data set cannot be used; return
    the number of training images where the check counted them (imagefolder), else None.

    Checks: data.root set, existing, a folder, not empty; the layout of data.name (imagefolder: train/
    with class folders holding images and a test/ or val/ folder; cifar: every pickle present and
    loadable); and, for imagefolder, that the first ``CHECK_PER_CLASS`` image(s) of each class folder open
    and decode with PIL. The synthetic data set needs nothing.
    """
    name = data_cfg.name
    if name == "synthetic":
        return None
    if name == "imagefolder":
        train, test, classes = _imagefolder_layout(data_cfg)
        counts = {}
        for split_dir in (train, test):
            n_images = 0
            for c in _class_dirs(split_dir):
                files = _images_in(split_dir / c)
                if not files and split_dir == train:
                    raise ConfigError(f"data.root = {data_cfg.root!r}: train/{c}/ holds no images "
                                      f"(expected files ending in {', '.join(IMAGE_EXTENSIONS)})")
                n_images += len(files)
                for path in files[:CHECK_PER_CLASS]:
                    reason = _verify_image(path)
                    if reason is not None:
                        raise ConfigError(f"data.root = {data_cfg.root!r}: unreadable image "
                                          f"{path.relative_to(split_dir.parent).as_posix()} ({reason})")
            if n_images == 0:
                raise ConfigError(f"data.root = {data_cfg.root!r}: {split_dir.name}/ holds no images "
                                  f"(expected {split_dir.name}/<class>/<file> ending in {', '.join(IMAGE_EXTENSIONS)})")
            counts[split_dir] = n_images
        return counts[train]
    if name in CIFAR_LAYOUT:
        folder = _cifar_folder(data_cfg)
        _, train_files, test_files, meta_file, meta_key, label_key = CIFAR_LAYOUT[name]
        for fname in train_files + test_files + [meta_file]:
            keys = (meta_key,) if fname == meta_file else ("data", label_key)
            try:
                entry = _unpickle(folder / fname)
                why = None if isinstance(entry, dict) and all(k in entry for k in keys) else f"no {' / '.join(keys)} entries"
            except ConfigError:  # refused by the restricted unpickler: its own message names the file
                raise
            except Exception as e:  # unpickling garbage raises many types
                why = type(e).__name__
            if why is not None:
                raise ConfigError(f"data.root = {data_cfg.root!r}: {folder.name}/{fname} is not a CIFAR pickle ({why}); "
                                  f"data.name = {name} expects {_LAYOUT_HINT[name]}")
        return
    raise ConfigError(f"data.name = {name!r} is not supported; expected one of synthetic, imagefolder, "
                      f"{', '.join(CIFAR_LAYOUT)}")


# ------------------------------------------------------------------------------------------ fingerprint


def _hash(payload: Any) -> str:
    return hashlib.sha256(json.dumps(payload, sort_keys=True, separators=(",", ":")).encode()).hexdigest()[:16]


def data_fingerprint(data_cfg: DataConfig) -> str:
    """A 16-hex-digit identity of the data's content that does not depend on where data.root lies.

    synthetic: the generator version and the synthetic_* parameters. imagefolder: the relative POSIX
    paths (``train/<class>/<file>``, ``test/...``) and byte sizes of every image file of both splits.
    cifar: the names and sizes of the pickle files. ``train_limit`` is not part of it (it selects from
    the data; it is an identity field of the config itself).
    """
    name = data_cfg.name
    if name == "synthetic":
        # "objects" enters only when set, so the default's fingerprint (and every trial id over it) is unchanged.
        return _hash({"name": name, "generator": GENERATOR_VERSION, "train": data_cfg.synthetic_train,
                      "test": data_cfg.synthetic_test, "size": data_cfg.synthetic_size,
                      "classes": data_cfg.synthetic_classes, "seed": data_cfg.synthetic_seed,
                      "palette": data_cfg.synthetic_palette, "area": list(data_cfg.synthetic_object_area),
                      "backgrounds": list(data_cfg.synthetic_backgrounds), "max_rotation": data_cfg.synthetic_max_rotation,
                      **({} if tuple(data_cfg.synthetic_objects) == (1, 1) else {"objects": list(data_cfg.synthetic_objects)})})
    if name == "imagefolder":
        train, test, classes = _imagefolder_layout(data_cfg)
        files = []
        # Only what ImageFolder reads (image files inside class folders); the test folder is recorded as
        # "test" whether it is test/ or val/.
        for split, folder in (("train", train), ("test", test)):
            for c in classes:
                if (folder / c).is_dir():
                    files += [(f"{split}/{p.relative_to(folder).as_posix()}", p.stat().st_size) for p in _images_in(folder / c)]
        log.debug("fingerprinting %d files under %s", len(files), train.parent)
        return _hash({"name": name, "files": files})
    if name in CIFAR_LAYOUT:
        folder = _cifar_folder(data_cfg)
        _, train_files, test_files, meta_file, _, _ = CIFAR_LAYOUT[name]
        files = [(f, (folder / f).stat().st_size) for f in train_files + test_files + [meta_file]]
        return _hash({"name": name, "files": files})
    raise ConfigError(f"data.name = {name!r} is not supported; expected one of synthetic, imagefolder, "
                      f"{', '.join(CIFAR_LAYOUT)}")
