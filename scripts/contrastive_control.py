"""A control for "DINO does not learn here": plain SimCLR on the training loop's own parts.

Same networks (``build_networks``: backbone + the DINO head's MLP up to its bottleneck), same data and
multi-crop augmentation (``build_train_loader``, its two global views only), same k-NN evaluation
(``evaluate_knn`` on the backbone's pooled features), but the simplest objective that cannot collapse:
the symmetric InfoNCE of SimCLR between the two views' l2-normalised bottlenecks (temperature 0.2,
the other images of the batch as negatives), no teacher, AdamW at a constant lr. If this learns and
DINO does not, DINO's dynamics are the obstacle; if this does not learn either, the data (what two
views share) or the network is.

Two switches bisect towards the platform's InfoNCE row (``dino.loss=infonce``):
``--teacher-momentum m`` takes the keys from an EMA copy of the network (constant momentum m, as
MoCo v3; k-NN then reads the student), and ``--embedding logits`` reads the head's full ``out_dim``
output (after its weight-normalised last layer) instead of its l2 bottleneck.

Usage (prints k-NN top-1 at random init and after every epoch, the mean loss every 25 steps):
    python scripts/contrastive_control.py experiments/demo.yaml --epochs 15 --threads 2 \
        --set data.synthetic_backgrounds=[flat] --set data.synthetic_objects=[3,4]
Not a test and not part of the platform: a diagnostic whose numbers the README quotes.
"""

from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F


def info_nce(q: torch.Tensor, k: torch.Tensor, temperature: float) -> torch.Tensor:
    """q, k (B, D) l2-normalised; row i of q matches row i of k, the other rows of k are its negatives."""
    logits = q @ k.T / temperature  # (B, B): positives on the diagonal
    return F.cross_entropy(logits, torch.arange(q.shape[0], device=q.device))


def simclr_loss(a: torch.Tensor, b: torch.Tensor, temperature: float) -> torch.Tensor:
    """Symmetric InfoNCE: a, b (B, D) l2-normalised embeddings of two views; row i of a matches row i of b."""
    return 0.5 * (info_nce(a, b, temperature) + info_nce(b, a, temperature))


def embed(network, crops: list, embedding: str) -> torch.Tensor:
    """(2B, D) l2-normalised embeddings of the two global views: the head's bottleneck MLP or its full output."""
    pooled, _ = network.backbone.forward_features(torch.cat(crops[:2]))  # (2B, backbone dim)
    z = network.head.mlp(pooled) if embedding == "bottleneck" else network.head(pooled)
    return F.normalize(z, dim=-1)


def main() -> None:
    from dinolab.config import ConfigError, load_experiment
    from dinolab.train.evaluation import build_eval_sets, evaluate_knn
    from dinolab.train.loop import build_train_loader, seed_everything
    from dinolab.train.setup import build_networks
    from dinolab.train.teacher import TeacherPolicy

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("experiment")
    parser.add_argument("--set", dest="sets", action="append", default=[], help="dotted.key=value override")
    parser.add_argument("--epochs", type=int, default=15)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--temperature", type=float, default=0.2)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--teacher-momentum", type=float, default=None, help="keys from an EMA copy (default: none)")
    parser.add_argument("--embedding", choices=("bottleneck", "logits"), default="bottleneck")
    args = parser.parse_args()
    if args.epochs < 1 or args.threads < 1 or args.lr <= 0 or args.temperature <= 0:
        parser.error("--epochs and --threads must be >= 1, --lr and --temperature > 0")
    if args.teacher_momentum is not None and not 0.0 <= args.teacher_momentum < 1.0:
        parser.error(f"--teacher-momentum must be in [0, 1), got {args.teacher_momentum}")

    torch.set_num_threads(args.threads)
    try:
        cfg = load_experiment(args.experiment, args.sets)
    except ConfigError as e:
        parser.exit(2, f"contrastive_control: error: {e}\n")
    seed_everything(cfg.train.seed)
    student, teacher = build_networks(cfg)  # teacher: a copy of the student without gradients
    eval_sets = build_eval_sets(cfg)
    classes = len(eval_sets[0].dataset.classes)
    print(f"epoch -1 (random init) knn_top1 {evaluate_knn(student.backbone, eval_sets, cfg, 'cpu', classes)[0]:.2f}", flush=True)
    _, loader, finish_views = build_train_loader(cfg, cfg.train.batch_size, cfg.train.seed)

    ema = TeacherPolicy("ema")
    optimizer = torch.optim.AdamW(student.parameters(), lr=args.lr, weight_decay=cfg.train.weight_decay)
    step, losses, start = 0, [], time.time()
    for epoch in range(args.epochs):
        student.train()
        for crops, _ in loader:
            if finish_views is not None:
                crops = finish_views(crops)
            q = embed(student, crops, args.embedding)  # (2B, D)
            if args.teacher_momentum is None:
                loss = simclr_loss(*q.chunk(2), args.temperature)
            else:  # MoCo v3: each view's query against the other view's key from the EMA network
                with torch.no_grad():
                    k = embed(teacher, crops, args.embedding)
                q0, q1 = q.chunk(2)
                k0, k1 = k.chunk(2)
                loss = 0.5 * (info_nce(q0, k1, args.temperature) + info_nce(q1, k0, args.temperature))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            if args.teacher_momentum is not None:  # the platform's EMA update (parameters matched by name)
                ema.after_step(student, teacher, args.teacher_momentum)
            step += 1
            losses.append(loss.item())
            if step % 25 == 0:
                print(f"step {step} loss {sum(losses) / len(losses):.3f} ({time.time() - start:.0f} s)", flush=True)
                losses = []
        student.eval()
        print(f"epoch {epoch} knn_top1 {evaluate_knn(student.backbone, eval_sets, cfg, 'cpu', classes)[0]:.2f}", flush=True)


if __name__ == "__main__":
    main()
