"""Linear probe on cached frozen features (DINO Appendix F.2, ``eval_linear.py``, made leak-free).

The classifier is one ``nn.Linear`` (weight ~ N(0, 0.01), bias 0) trained with cross-entropy by SGD
(momentum 0.9, weight decay 0 by default) with a per-epoch cosine learning rate

    lr(e) = lr0 * (1 + cos(pi * e / E)) / 2,   e = 0 .. E-1,

as in DINO (CosineAnnealingLR(T_max=E, eta_min=0)). DINO reports the best *test* accuracy over epochs
and the paper sweeps the lr on the test set; here instead:

1. a stratified, seeded validation split is carved from the TRAINING features;
2. for every lr, a classifier is trained on the rest for E epochs and scored on the validation split
   after each epoch; the (lr, epoch) pair with the best validation top-1 is chosen;
3. a fresh classifier is trained on ALL training features with the chosen lr and the same schedule,
   stopped after the chosen number of epochs;
4. the test split is evaluated exactly once, with that classifier.

Features are standardised per dimension with the mean and std of the rows the classifier is trained
on (the fit part in step 2, all training rows in step 3). DINO does not standardise; it is done here
so that one small lr grid suits backbones whose features have very different scales.
"""

from __future__ import annotations

import logging
import math
from typing import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

log = logging.getLogger(__name__)

Stats = tuple[torch.Tensor, torch.Tensor]  # (mean (1, D), std (1, D))


def stratified_split(labels: torch.Tensor, val_fraction: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Seeded per-class split of row indices into (fit, val).

    Each class with n >= 2 rows gives round(val_fraction * n) rows to val, at least 1 and at most n - 1;
    a class with a single row stays in fit. Returns sorted int64 index tensors (fit (N - V,), val (V,)).
    """
    if not 0.0 < val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in (0, 1), got {val_fraction}")
    gen = torch.Generator().manual_seed(seed)
    labels = labels.cpu()
    fit, val = [], []
    for c in torch.unique(labels).tolist():
        idx = torch.nonzero(labels == c).flatten()
        idx = idx[torch.randperm(idx.numel(), generator=gen)]
        n_val = min(max(round(val_fraction * idx.numel()), 1), idx.numel() - 1)
        val.append(idx[:n_val])
        fit.append(idx[n_val:])
    fit_idx, val_idx = torch.cat(fit).sort().values, torch.cat(val).sort().values
    if val_idx.numel() == 0:
        raise ValueError("linear probe: the validation split is empty (every class has a single training row)")
    return fit_idx, val_idx


def feature_stats(feats: torch.Tensor) -> Stats:
    """Per-dimension mean and std (1, D) of (N, D) features; a constant dimension gets std 1."""
    mean = feats.mean(dim=0, keepdim=True)
    std = feats.std(dim=0, unbiased=False, keepdim=True)
    return mean, torch.where(std > 1e-8, std, torch.ones_like(std))


def cosine_lr(base_lr: float, epoch: int, epochs: int) -> float:
    """lr of 0-based ``epoch`` in an ``epochs``-long cosine to 0 (stepped per epoch)."""
    return base_lr * 0.5 * (1.0 + math.cos(math.pi * epoch / epochs))


@torch.no_grad()
def evaluate(classifier: nn.Linear, stats: Stats, feats: torch.Tensor, labels: torch.Tensor) -> float:
    """Top-1 (percent) of ``classifier`` on raw (N, D) features standardised with ``stats``."""
    mean, std = stats
    pred = classifier((feats.float() - mean) / std).argmax(dim=1)
    return 100.0 * int((pred == labels).sum()) / labels.numel()


def train_classifier(
    feats: torch.Tensor,
    labels: torch.Tensor,
    num_classes: int,
    lr: float,
    epochs: int,
    seed: int,
    batch_size: int,
    weight_decay: float,
    stop_after: int | None = None,
    on_epoch: Callable[[int, nn.Linear, Stats], None] | None = None,
) -> tuple[nn.Linear, Stats]:
    """Train a linear classifier on raw (N, D) features; return it and the standardisation it expects.

    The cosine schedule spans ``epochs``; training stops after ``stop_after`` epochs (default: all).
    ``on_epoch(epoch, classifier, stats)`` runs after each epoch, ``epoch`` counted from 1.
    Initialisation and batch order come from ``seed`` only, so every lr sees the same start and order.
    """
    stop_after = epochs if stop_after is None else stop_after
    gen = torch.Generator().manual_seed(seed)
    stats = feature_stats(feats.float())
    x = (feats.float() - stats[0]) / stats[1]  # (N, D) standardised
    classifier = nn.Linear(x.shape[1], num_classes).to(x.device)
    with torch.no_grad():
        classifier.weight.copy_(torch.randn(classifier.weight.shape, generator=gen) * 0.01)
        classifier.bias.zero_()
    opt = torch.optim.SGD(classifier.parameters(), lr=lr, momentum=0.9, weight_decay=weight_decay)
    for epoch in range(stop_after):
        for group in opt.param_groups:
            group["lr"] = cosine_lr(lr, epoch, epochs)
        order = torch.randperm(x.shape[0], generator=gen).to(x.device)
        for start in range(0, x.shape[0], batch_size):
            batch = order[start:start + batch_size]
            loss = F.cross_entropy(classifier(x[batch]), labels[batch])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        if on_epoch is not None:
            on_epoch(epoch + 1, classifier, stats)
    return classifier, stats


def linear_probe(
    train_feats: torch.Tensor,
    train_labels: torch.Tensor,
    test_feats: torch.Tensor,
    test_labels: torch.Tensor,
    num_classes: int,
    lrs: Sequence[float] = (0.1, 0.03, 0.01),
    epochs: int = 100,
    val_fraction: float = 0.1,
    seed: int = 0,
    batch_size: int = 256,
    weight_decay: float = 0.0,
) -> dict:
    """Linear-probe top-1 on frozen features, lr and epoch chosen on a split of the training set.

    Args:
        train_feats: (N, D) cached training features.
        train_labels: (N,) labels in [0, num_classes).
        test_feats: (M, D) cached test features; evaluated exactly once, at the end.
        test_labels: (M,) labels.
        num_classes: C, the classifier's outputs.
        lrs: candidate base learning rates (schema: eval.linear_lrs).
        epochs: E, the length of the cosine schedule and the largest epoch count tried (eval.linear_epochs).
        val_fraction: share of each class held out for selection (eval.val_fraction).
        seed: seeds the split, the initialisation and the batch order; same seed, same result.
        batch_size: mini-batch size.
        weight_decay: SGD weight decay. DINO: 0.

    Returns:
        ``{"top1": test top-1 %, "val_top1": best validation top-1 %, "lr": chosen lr, "epoch": chosen
        number of epochs (1..E)}``. Ties go to the first lr in ``lrs`` order, then to the earliest epoch.
    """
    if not lrs or any(not lr > 0 for lr in lrs):
        raise ValueError(f"lrs must be a non-empty list of positive learning rates, got {list(lrs)}")
    if epochs < 1 or batch_size < 1:
        raise ValueError(f"epochs and batch_size must be >= 1, got {epochs} and {batch_size}")
    if num_classes < 2:
        raise ValueError(f"num_classes must be >= 2, got {num_classes}")
    for name, f, y in (("train", train_feats, train_labels), ("test", test_feats, test_labels)):
        if f.dim() != 2 or y.dim() != 1 or f.shape[0] != y.shape[0] or f.shape[0] == 0:
            raise ValueError(f"{name}: need features (N, D) and labels (N,) with N > 0, got {tuple(f.shape)} and {tuple(y.shape)}")
        if int(y.min()) < 0 or int(y.max()) >= num_classes:
            raise ValueError(f"{name} labels must lie in [0, {num_classes}), got [{int(y.min())}, {int(y.max())}]")
    if train_feats.shape[1] != test_feats.shape[1]:
        raise ValueError(f"feature dims differ: train {train_feats.shape[1]} vs test {test_feats.shape[1]}")
    train_labels = train_labels.to(train_feats.device, torch.long)
    common = dict(num_classes=num_classes, epochs=epochs, seed=seed, batch_size=batch_size, weight_decay=weight_decay)

    # Selection: only training rows are read here.
    fit_idx, val_idx = (i.to(train_feats.device) for i in stratified_split(train_labels, val_fraction, seed))
    val_feats, val_labels = train_feats[val_idx], train_labels[val_idx]
    best = {"val_top1": -1.0, "lr": None, "epoch": None}
    for lr in lrs:
        def score(epoch: int, classifier: nn.Linear, stats: Stats, lr: float = lr) -> None:
            acc = evaluate(classifier, stats, val_feats, val_labels)
            if acc > best["val_top1"]:
                best.update(val_top1=acc, lr=lr, epoch=epoch)

        train_classifier(train_feats[fit_idx], train_labels[fit_idx], lr=lr, on_epoch=score, **common)
    log.info("linear probe: chose lr %g, %d/%d epochs (val top-1 %.2f%%)", best["lr"], best["epoch"], epochs, best["val_top1"])

    # Refit on every training row with the chosen lr and epoch count, then read the test split once.
    classifier, stats = train_classifier(train_feats, train_labels, lr=best["lr"], stop_after=best["epoch"], **common)
    top1 = evaluate(classifier, stats, test_feats.to(train_feats.device), test_labels.to(train_feats.device, torch.long))
    return {"top1": top1, "val_top1": best["val_top1"], "lr": float(best["lr"]), "epoch": int(best["epoch"])}
