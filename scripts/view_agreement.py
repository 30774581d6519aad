"""A diagnostic for "DINO's teacher goes uniform": how much do two views of one image agree at random init?

DINO has no negatives. The student is trained to predict, from one view, the teacher's sharpened output
on another view of the same image; when that output cannot be predicted from the other view, the
student's best answer is the batch average, so its head learns to give every image the same output, and
the momentum teacher follows (centering then turns that constant into the uniform distribution). Whether
DINO gets going therefore depends on how much of the random network's output survives the augmentation.

This script measures it on the network at random init, for the configured data and multi-crop recipe:

    view agreement = mean over images i of cos(a_i - mean(a), b_i - mean(b))

where a_i, b_i are the outputs for the two global views of image i (the teacher's pooled backbone
feature, and its head's logits). 1: the views agree fully; 0: what is left after removing the batch mean
is unrelated between the two views. The same number with b shuffled across images is printed as a
control (it should be near 0). ``--without`` switches off parts of the photometric stage (colour jitter,
grayscale, blur, solarize) to show which of them removes the agreement. k-NN top-1 at random init is
printed beside it.

``--trace`` also trains the configured run with the platform's loop and prints, every step, the
spread of the teacher's centred logits and of the student's logits over the batch (mean per-dimension
std), the teacher's view agreement and its mean entropy: whether the student's head flattens, and
whether the teacher follows.

Usage:
    python scripts/view_agreement.py experiments/demo.yaml --set data.synthetic_objects=[3,4] --without jitter
    python scripts/view_agreement.py experiments/demo.yaml --trace --set train.epochs=2
Not a test and not part of the platform: a diagnostic whose numbers the README quotes.
"""

from __future__ import annotations

import argparse
import sys
import tempfile

import torch
import torch.nn.functional as F

PARTS = ("jitter", "gray", "blur", "solarize")


def view_agreement(a: torch.Tensor, b: torch.Tensor) -> float:
    """a, b (B, D): outputs for two views, row i of each from image i -> mean cosine of the batch-centred rows."""
    return F.cosine_similarity(a - a.mean(0), b - b.mean(0), dim=1).mean().item()


def switch_off(photometric, parts: list[str]) -> None:
    """Sets the probabilities of the named photometric operations to 0 on a BatchedPhotometric."""
    if "jitter" in parts:
        photometric.jitter_p = 0.0
    if "gray" in parts:
        photometric.gray_p = 0.0
    if "blur" in parts:
        photometric.blur_p = {k: 0.0 for k in photometric.blur_p}
    if "solarize" in parts:
        photometric.solarize_p = {k: 0.0 for k in photometric.solarize_p}


def measure_at_init(cfg, parts_off: list[str], batches: int) -> dict:
    from dinolab.train.evaluation import build_eval_sets, evaluate_knn
    from dinolab.train.loop import build_train_loader, seed_everything
    from dinolab.train.setup import build_networks

    seed_everything(cfg.train.seed)
    _, teacher = build_networks(cfg)
    dataset, loader, finish = build_train_loader(cfg, min(cfg.train.batch_size, 64), cfg.train.seed)
    if finish is None:
        raise ValueError(f"data.augment={cfg.data.augment!r}: this diagnostic needs 'fast' (the batched photometric stage)")
    switch_off(finish, parts_off)
    num_classes = len(dataset.classes)
    # k-NN first, as the loop measures it: before any forward pass has touched BatchNorm's running statistics.
    knn0 = evaluate_knn(teacher.backbone, build_eval_sets(cfg), cfg, "cpu", num_classes)[0]
    sums = {"pooled": 0.0, "logits": 0.0, "pooled_shuffled": 0.0}
    n = 0
    teacher.train()  # as the loop runs it (BatchNorm on batch statistics)
    with torch.no_grad():
        for crops, _ in loader:
            crops = finish(crops)
            out = teacher(crops[:2])
            b = crops[0].shape[0]
            pooled, logits = out.pooled.float(), out.logits.float()
            sums["pooled"] += view_agreement(pooled[:b], pooled[b:])
            sums["logits"] += view_agreement(logits[:b], logits[b:])
            sums["pooled_shuffled"] += view_agreement(pooled[:b], pooled[b:][torch.randperm(b)])
            n += 1
            if n == batches:
                break
    result = {k: v / n for k, v in sums.items()}
    result["knn_top1_random_init"] = knn0
    return result


def trace(cfg, parts_off: list[str]) -> None:
    """Trains ``cfg`` with the platform's loop, printing per-step spreads, view agreement and entropy."""
    import dinolab.data.fast_multicrop as fast
    import dinolab.train.step as step_module
    from dinolab.losses.diagnostics import teacher_entropy
    from dinolab.track.reporter import MemoryReporter
    from dinolab.train.loop import train

    build, objective = fast.fast_multicrop, step_module.objective
    if parts_off:  # the loop builds its own photometric stage: switch the parts off on every one it builds

        def fast_multicrop(crops_cfg, **kwargs):
            geometry, photometric = build(crops_cfg, **kwargs)
            switch_off(photometric, parts_off)
            return geometry, photometric

        fast.fast_multicrop = fast_multicrop
    count = [0]

    def traced(cfg_, criterion, region, s_out, t_out, teacher_temp, n_crops):
        result = objective(cfg_, criterion, region, s_out, t_out, teacher_temp, n_crops)
        b = t_out.logits.shape[0] // 2
        t = t_out.logits.detach().float() - criterion.center  # (2B, K) centred teacher logits
        s = s_out.logits.detach().float()[:b]  # (B, K) student, first global view
        count[0] += 1
        row = f"step {count[0]:4d}  teacher spread {t.std(0).mean().item():.4f}  student spread {s.std(0).mean().item():.4f}"
        row += f"  teacher view agreement {view_agreement(t[:b], t[b:]):.3f}"
        if result[1] is not None:
            row += f"  teacher entropy {teacher_entropy(result[1]):.2f}"
        print(row, flush=True)
        return result

    step_module.objective = traced
    try:
        with tempfile.TemporaryDirectory() as workdir:
            result = train(cfg, MemoryReporter(), workdir=workdir, resume=False)
    finally:  # the patches are for this run only
        fast.fast_multicrop, step_module.objective = build, objective
    knn = result.history.get("knn_top1")
    if knn:
        print(f"k-NN top-1: random init {result.final.get('knn_top1_random_init')}, per evaluation {knn}")


def main() -> None:
    from dinolab.config import ConfigError, load_experiment

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("experiment")
    parser.add_argument("--set", dest="sets", action="append", default=[], help="dotted.key=value override")
    parser.add_argument("--without", nargs="+", choices=PARTS, default=[], help="photometric operations to switch off")
    parser.add_argument("--batches", type=int, default=12, help="batches of two views to average over")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--trace", action="store_true", help="also train the run, printing per-step dynamics")
    args = parser.parse_args()
    if args.batches < 1 or args.threads < 1:
        print("view_agreement.py: --batches and --threads must be >= 1", file=sys.stderr)
        sys.exit(2)
    torch.set_num_threads(args.threads)
    try:
        cfg = load_experiment(args.experiment, args.sets + ["train.progress=false", "eval.linear=false",
                                                            f"train.threads={args.threads}"])
    except ConfigError as exc:
        print(f"view_agreement.py: {exc}", file=sys.stderr)
        sys.exit(2)
    if cfg.data.augment != "fast":
        print(f"view_agreement.py: data.augment={cfg.data.augment!r}: this diagnostic needs 'fast'"
              " (the batched photometric stage it switches parts of)", file=sys.stderr)
        sys.exit(2)
    m = measure_at_init(cfg, args.without, args.batches)
    off = ", ".join(args.without) or "nothing"
    print(f"at random init ({args.batches} batches, switched off: {off}):")
    print(f"  view agreement, pooled feature {m['pooled']:.3f}, head logits {m['logits']:.3f};"
          f" shuffled pairs {m['pooled_shuffled']:.3f}")
    print(f"  k-NN top-1 {m['knn_top1_random_init']:.2f}")
    if args.trace:
        trace(cfg, args.without)


if __name__ == "__main__":
    main()
