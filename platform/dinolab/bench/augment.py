"""Images/s of DINO's multi-crop augmentation: the PIL reference against the two-stage fast path.

    reference   MultiCropAugmentation: decode the JPEG with PIL, then torchvision's PIL transforms,
                one image at a time (as a Dataset worker runs it), then collate each batch of float
                views (torch.stack per view, as DataLoader does)
    fast        stage 1 per image (PIL decode -> uint8 tensor -> crops + flips), collate each batch of
                uint8 views (torch.stack per view), stage 2 (BatchedPhotometric) on the batch on the device,
                writing into the buffers of the batch before the previous one (``reuse_outputs``), as the
                training loop runs it

Recipes: paper 2x224 + 10x96 on ~256 px JPEGs (ImageNet-like size), CIFAR 2x32 + 6x16 on 32 px JPEGs.
Images: CIFAR-10 JPEGs from shared/datasets/cifar10-jpeg.tar.gz (upsampled to 256 px and re-encoded in
memory for the paper recipe) when the archive exists, else the synthetic shapes. The two paths are
interleaved batch by batch (ABBA), so load from other processes hits both alike, and timed in CPU seconds
of the (single) thread, so time spent descheduled on a shared machine does not count (stage 2 on a GPU:
wall seconds).

bench/augment_bench.py prints both recipes; ``augment_figure`` is the benchmark's paper-recipe figure.
"""

from __future__ import annotations

import io
import tarfile
import time
from pathlib import Path
from typing import Optional

import torch
from PIL import Image

from dinolab.data.fast_multicrop import BatchedPhotometric, FastMultiCropGeometry
from dinolab.data.multicrop import MultiCropAugmentation
from dinolab.data.synthetic import SyntheticShapes

from .context import BenchContext
from .record import Record, summary

CIFAR_TAR = ("datasets", "cifar10-jpeg.tar.gz")  # in the project's shared folder, when there is one
RECIPES = {
    # name: (global, local, n_local, image side)
    "paper 2x224+10x96": (224, 96, 10, 256),
    "cifar 2x32+6x16": (32, 16, 6, 32),
}
GLOBAL_SCALE, LOCAL_SCALE = (0.4, 1.0), (0.05, 0.4)
PAPER = "paper 2x224+10x96"
TARGET = 3.0  # at least 3x the reference's images/s


def source_images(n: int, archive: Optional[Path] = None) -> tuple[list[Image.Image], str]:
    """n RGB images: CIFAR-10 JPEGs from ``archive`` (the shared .tar.gz) if given, else synthetic shapes."""
    if archive is not None:
        images = []
        with tarfile.open(archive, "r:gz") as tar:
            for member in tar:
                if member.isfile() and member.name.endswith(".jpg") and "/train/" in member.name:
                    images.append(Image.open(io.BytesIO(tar.extractfile(member).read())).convert("RGB"))
                    if len(images) == n:
                        return images, f"CIFAR-10 JPEGs ({archive.name})"
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


def measure_recipe(name: str, images: list[Image.Image], batch: int, repeats: int, device: torch.device) -> dict:
    """Interleaved repeats of both paths on one recipe: per-repeat images/s, speedups, stage times (ms/image)."""
    g, l, n, side = RECIPES[name]
    jpegs = encode(images, side)
    ref = MultiCropAugmentation(g, l, n, GLOBAL_SCALE, LOCAL_SCALE)
    geometry = FastMultiCropGeometry(g, l, n, GLOBAL_SCALE, LOCAL_SCALE)
    photometric = BatchedPhotometric(g, l, n, GLOBAL_SCALE, LOCAL_SCALE, reuse_outputs=True)  # as the training loop builds it
    run_reference(ref, jpegs[:4], batch)  # warm-up
    run_fast(geometry, photometric, jpegs[:batch], batch, device)
    out = {"images": len(jpegs), "side": side, "reference_ips": [], "fast_ips": [], "speedup": [], "stage1_ms": [], "stage2_ms": []}
    for _ in range(repeats):
        # Interleaved batch by batch, in alternating order (ABBA), so a slow spell of a shared machine
        # falls on both paths alike instead of on whichever ran during it.
        t_ref = t1 = t2 = 0.0
        for k, start in enumerate(range(0, len(jpegs), batch)):
            chunk = jpegs[start:start + batch]
            for path in (("ref", "fast") if k % 2 == 0 else ("fast", "ref")):
                if path == "ref":
                    t_ref += run_reference(ref, chunk, batch)
                else:
                    s1, s2 = run_fast(geometry, photometric, chunk, batch, device)
                    t1, t2 = t1 + s1, t2 + s2
        out["reference_ips"].append(len(jpegs) / t_ref)
        out["fast_ips"].append(len(jpegs) / (t1 + t2))
        out["speedup"].append(t_ref / (t1 + t2))
        out["stage1_ms"].append(1e3 * t1 / len(jpegs))
        out["stage2_ms"].append(1e3 * t2 / len(jpegs))
    return out


def augment_figure(ctx: BenchContext) -> Record:
    torch.set_num_threads(1)  # images/s per process: one thread, as one DataLoader worker runs
    torch.manual_seed(0)
    n_images, batch = (32, 16) if ctx.quick else (128, 64)
    repeats = ctx.reps(9, 1)  # 9: per-repeat ratios on this shared host spread by +-20%; the median needs many
    images, source = source_images(n_images, ctx.shared_file(*CIFAR_TAR))
    m = measure_recipe(PAPER, images, batch, repeats, ctx.device)
    g, l, n, side = RECIPES[PAPER]
    fast, ref, ratio = summary(m["fast_ips"]), summary(m["reference_ips"]), summary(m["speedup"])
    return ctx.record(
        name="augment_paper", title=f"multi-crop augmentation, paper recipe 2x{g} + {n}x{l}, images/s per process",
        config={"recipe": f"2x{g} + {n}x{l}", "jpeg_side": side, "images": m["images"], "batch": batch, "threads": 1,
                "stage2_device": str(ctx.device), "images_source": source, "clock": "thread CPU seconds"},
        value=fast["median"], unit="images/s", baseline=ref["median"],
        baseline_desc="the recipe one image at a time with PIL (MultiCropAugmentation, DINO's reference code)",
        ratio=ratio["median"], ratio_desc="fast / reference images/s (median of per-repeat ratios)",
        target=f"ratio >= {TARGET:g}", passed=ratio["median"] >= TARGET, repeats=repeats, spread=fast,
        baseline_spread=ref, peak_memory_mb=None, peak_memory_kind="",
        extra={"speedup": ratio, "stage1_ms_per_image": summary(m["stage1_ms"]), "stage2_ms_per_image": summary(m["stage2_ms"])},
    )
