"""Images/s of DINO's multi-crop augmentation: the PIL reference against the two-stage fast path.

    reference   MultiCropAugmentation: decode the JPEG with PIL, then torchvision's PIL transforms,
                one image at a time (as a Dataset worker runs it), then collate each batch of float
                views (torch.stack per view, as DataLoader does)
    fast        stage 1 per image (PIL decode -> uint8 tensor -> crops + flips), collate each batch of
                uint8 views (torch.stack per view), stage 2 (BatchedPhotometric) on the batch on --device

Recipes: paper 2x224 + 10x96 on ~256 px JPEGs (ImageNet-like size), CIFAR 2x32 + 6x16 on 32 px JPEGs.
Images: CIFAR-10 JPEGs from shared/datasets/cifar10-jpeg.tar.gz (upsampled to 256 px and re-encoded in
memory for the paper recipe) when the archive exists, else the synthetic shapes. Repeats of the two paths
are interleaved, so load from other processes hits both alike, and timed in CPU seconds of the (single)
thread, so time spent descheduled on a shared machine does not count; the table gives the median
images/s per process and the min-max spread over the repeats.

    python bench/augment_bench.py                         # one thread, CPU, 5 repeats
    python bench/augment_bench.py --device cuda --repeats 3
"""

from __future__ import annotations

import argparse
import io
import statistics
import sys
import tarfile
import time
from pathlib import Path

import torch
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "platform"))

from dinolab.data.fast_multicrop import BatchedPhotometric, FastMultiCropGeometry  # noqa: E402
from dinolab.data.multicrop import MultiCropAugmentation  # noqa: E402
from dinolab.data.synthetic import SyntheticShapes  # noqa: E402

CIFAR_TAR = ROOT.parent / "shared" / "datasets" / "cifar10-jpeg.tar.gz"
RECIPES = {
    # name: (global, local, n_local, image side)
    "paper 2x224+10x96": (224, 96, 10, 256),
    "cifar 2x32+6x16": (32, 16, 6, 32),
}
GLOBAL_SCALE, LOCAL_SCALE = (0.4, 1.0), (0.05, 0.4)


def source_images(n: int) -> tuple[list[Image.Image], str]:
    """n RGB images: CIFAR-10 JPEGs from the shared archive if present, else synthetic shapes."""
    if CIFAR_TAR.is_file():
        images = []
        with tarfile.open(CIFAR_TAR, "r:gz") as tar:
            for member in tar:
                if member.isfile() and member.name.endswith(".jpg") and "/train/" in member.name:
                    images.append(Image.open(io.BytesIO(tar.extractfile(member).read())).convert("RGB"))
                    if len(images) == n:
                        return images, f"CIFAR-10 JPEGs ({CIFAR_TAR.name})"
    ds = SyntheticShapes(n, 64, 10, seed=0, split="train")
    return [ds[i][0] for i in range(n)], "synthetic shapes (64 px)"


def encode(images: list[Image.Image], side: int) -> list[bytes]:
    """Resize (bicubic) to side x side and JPEG-encode in memory (quality 90)."""
    out = []
    for img in images:
        if img.size != (side, side):
            img = img.resize((side, side), Image.BICUBIC)
        buf = io.BytesIO()
        img.save(buf, format="JPEG", quality=90)
        out.append(buf.getvalue())
    return out


def decode(data: bytes) -> Image.Image:
    return Image.open(io.BytesIO(data)).convert("RGB")


def clock() -> float:
    """This thread's CPU seconds: on a shared machine, time spent descheduled does not count."""
    return time.thread_time()


def run_reference(aug: MultiCropAugmentation, jpegs: list[bytes], batch: int) -> float:
    """CPU seconds to augment every image, one at a time, and collate batches of ``batch`` (as DataLoader does)."""
    t = clock()
    for start in range(0, len(jpegs), batch):
        per_image = [aug(decode(data)) for data in jpegs[start:start + batch]]
        views = [torch.stack(v) for v in zip(*per_image)]
        del views
    return clock() - t


def run_fast(geometry: FastMultiCropGeometry, photometric: BatchedPhotometric, jpegs: list[bytes], batch: int,
             device: torch.device) -> tuple[float, float]:
    """(stage-1 + collate seconds, stage-2 seconds) over every image, in batches of ``batch``.

    CPU seconds of this thread, except stage 2 on a GPU: wall seconds (with a synchronize).
    """
    t1 = t2 = 0.0
    stage2_clock = time.perf_counter if device.type == "cuda" else clock
    for start in range(0, len(jpegs), batch):
        t = clock()
        per_image = [geometry(decode(data)) for data in jpegs[start:start + batch]]
        views = [torch.stack(v) for v in zip(*per_image)]  # what DataLoader's default collate does
        t1 += clock() - t
        t = stage2_clock()
        views = [v.to(device, non_blocking=True) for v in views]
        out = photometric(views)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        t2 += stage2_clock() - t
        del out
    return t1, t2


def spread(values: list[float]) -> str:
    return f"{statistics.median(values):8.1f} [{min(values):.1f}-{max(values):.1f}]"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=128, help="images per repeat (a multiple of --batch)")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1, help="torch.set_num_threads")
    parser.add_argument("--device", default="cpu", help="stage 2's device: cpu | cuda")
    parser.add_argument("--recipes", nargs="*", default=list(RECIPES), choices=list(RECIPES))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    device = torch.device(args.device)
    images, source = source_images(args.images)
    print(f"torch {torch.__version__}, {args.threads} thread(s), stage 2 on {device}, "
          f"{args.images} images x {args.repeats} repeats, batch {args.batch}; images: {source}")
    header = (f"{'recipe':<20} {'reference img/s':>24} {'fast img/s':>24} {'speedup':>8}   "
              f"{'fast: stage1 ms/img':>19} {'stage2 ms/img':>13}")
    print(header)
    print("-" * len(header))
    for name in args.recipes:
        g, l, n, side = RECIPES[name]
        jpegs = encode(images, side)
        ref = MultiCropAugmentation(g, l, n, GLOBAL_SCALE, LOCAL_SCALE)
        geometry = FastMultiCropGeometry(g, l, n, GLOBAL_SCALE, LOCAL_SCALE)
        photometric = BatchedPhotometric(g, l, n, GLOBAL_SCALE, LOCAL_SCALE)
        run_reference(ref, jpegs[:4], args.batch)  # warm-up
        run_fast(geometry, photometric, jpegs[:args.batch], args.batch, device)
        ref_ips, fast_ips, speedups, s1, s2 = [], [], [], [], []
        for _ in range(args.repeats):
            t_ref = run_reference(ref, jpegs, args.batch)
            t1, t2 = run_fast(geometry, photometric, jpegs, args.batch, device)
            ref_ips.append(len(jpegs) / t_ref)
            fast_ips.append(len(jpegs) / (t1 + t2))
            speedups.append(t_ref / (t1 + t2))
            s1.append(1e3 * t1 / len(jpegs))
            s2.append(1e3 * t2 / len(jpegs))
        print(f"{name:<20} {spread(ref_ips):>24} {spread(fast_ips):>24} {statistics.median(speedups):7.1f}x   "
              f"{statistics.median(s1):19.2f} {statistics.median(s2):13.2f}")
    print("img/s per CPU-second of one thread: median [min-max] over repeats; speedup: median of per-repeat "
          "ratios (interleaved runs).")


if __name__ == "__main__":
    main()
