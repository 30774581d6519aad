"""Images/s of DINO's multi-crop augmentation: the PIL reference against the two-stage fast path.

The measuring code is in dinolab.bench.augment (also the `augment_paper` figure of `dinolab bench`); this
script prints both recipes (paper 2x224 + 10x96 on ~256 px JPEGs, CIFAR 2x32 + 6x16 on 32 px JPEGs): the
median images/s per process and the min-max spread over interleaved repeats, in CPU seconds of one thread.

    python bench/augment_bench.py                         # one thread, CPU, 5 repeats
    python bench/augment_bench.py --device cuda --repeats 3
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "platform"))

from dinolab.bench.augment import RECIPES, measure_recipe, source_images  # noqa: E402


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
        m = measure_recipe(name, images, args.batch, args.repeats, device)
        print(f"{name:<20} {spread(m['reference_ips']):>24} {spread(m['fast_ips']):>24} {statistics.median(m['speedup']):7.1f}x   "
              f"{statistics.median(m['stage1_ms']):19.2f} {statistics.median(m['stage2_ms']):13.2f}")
    print("img/s per CPU-second of one thread: median [min-max] over repeats; speedup: median of per-repeat "
          "ratios (interleaved runs).")


if __name__ == "__main__":
    main()
