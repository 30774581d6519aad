"""Weighted k-nearest-neighbour classifier on frozen features (DINO §3.2, Appendix F.1, ``eval_knn.py``).

For a test feature x and L2-normalised train features f_j with labels y_j:

    s_j = <x / |x|, f_j / |f_j|>                      cosine similarity
    N_k(x) = indices of the k largest s_j
    score_c(x) = sum_{j in N_k(x)} [y_j = c] exp(s_j / T)
    prediction = argmax_c score_c(x)

with k = 20 and T = 0.07 in the paper.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def _check_bank(feats: torch.Tensor, labels: torch.Tensor, name: str) -> None:
    if feats.dim() != 2:
        raise ValueError(f"{name}_feats must be (N, D), got shape {tuple(feats.shape)}")
    if labels.dim() != 1 or labels.shape[0] != feats.shape[0]:
        raise ValueError(f"{name}_labels must be (N,) with N = {feats.shape[0]}, got shape {tuple(labels.shape)}")
    if feats.shape[0] == 0:
        raise ValueError(f"{name}_feats is empty")


def knn_scores(
    train_feats: torch.Tensor,
    train_labels: torch.Tensor,
    test_feats: torch.Tensor,
    k: int,
    temperature: float,
    num_classes: int,
) -> torch.Tensor:
    """Class scores of the weighted k-NN vote for one chunk of test features.

    Args:
        train_feats: (N, D) train bank, already L2-normalised.
        train_labels: (N,) int64 in [0, num_classes).
        test_feats: (B, D) test chunk, already L2-normalised.
        k: neighbours (clipped to N by the caller).
        temperature: T of the vote weight exp(s / T).
        num_classes: C.

    Returns:
        (B, C) scores proportional to sum over the top-k neighbours of exp(s_j / T) per class. Each row
        is scaled by exp(-s_max / T) (the nearest neighbour weighs 1) so that small T cannot overflow;
        a positive per-row factor changes neither the argmax nor the ranking of classes.
    """
    sim = test_feats @ train_feats.T  # (B, N)
    top_sim, top_idx = sim.topk(k, dim=1, largest=True, sorted=True)  # (B, k) each
    weights = ((top_sim - top_sim[:, :1]) / temperature).exp()  # (B, k), first column = 1
    neighbour_labels = train_labels[top_idx]  # (B, k)
    scores = torch.zeros(test_feats.shape[0], num_classes, dtype=weights.dtype, device=weights.device)
    return scores.scatter_add_(1, neighbour_labels, weights)


@torch.no_grad()
def weighted_knn(
    train_feats: torch.Tensor,
    train_labels: torch.Tensor,
    test_feats: torch.Tensor,
    test_labels: torch.Tensor,
    k: int = 20,
    temperature: float = 0.07,
    num_classes: int | None = None,
    chunk_size: int = 1024,
) -> float:
    """Top-1 accuracy (percent) of DINO's weighted k-NN classifier.

    Args:
        train_feats: (N, D) features of the train bank (any norm; normalised here).
        train_labels: (N,) integer labels.
        test_feats: (M, D) features to classify.
        test_labels: (M,) integer labels.
        k: neighbours; clipped to N when the bank is smaller. Paper: 20.
        temperature: T in exp(s / T). Paper: 0.07.
        num_classes: C; None = 1 + the largest label seen in train or test.
        chunk_size: test images per similarity block (memory O(chunk_size * N)).

    Returns:
        100 * (correct predictions) / M as a python float.

    Runs on ``train_feats``'s device; features are compared in float32.
    """
    _check_bank(train_feats, train_labels, "train")
    _check_bank(test_feats, test_labels, "test")
    if train_feats.shape[1] != test_feats.shape[1]:
        raise ValueError(f"feature dims differ: train {train_feats.shape[1]} vs test {test_feats.shape[1]}")
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    device = train_feats.device
    train_labels = train_labels.to(device=device, dtype=torch.long)
    test_labels = test_labels.to(device=device, dtype=torch.long)
    if min(int(train_labels.min()), int(test_labels.min())) < 0:
        raise ValueError("labels must be >= 0")
    seen = 1 + max(int(train_labels.max()), int(test_labels.max()))
    if num_classes is None:
        num_classes = seen
    elif num_classes < seen:
        raise ValueError(f"num_classes={num_classes} but labels go up to {seen - 1}")
    k = min(k, train_feats.shape[0])

    bank = F.normalize(train_feats.float(), dim=1)  # (N, D)
    correct = 0
    for start in range(0, test_feats.shape[0], chunk_size):
        chunk = F.normalize(test_feats[start:start + chunk_size].to(device).float(), dim=1)  # (B, D)
        pred = knn_scores(bank, train_labels, chunk, k, temperature, num_classes).argmax(dim=1)  # (B,)
        correct += int((pred == test_labels[start:start + chunk_size]).sum())
    return 100.0 * correct / test_feats.shape[0]
