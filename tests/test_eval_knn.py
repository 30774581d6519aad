"""Weighted k-NN (DINO eval_knn) against an explicit python loop and a hand-computed 2-D case."""

import math

import pytest
import torch

from dinolab.eval.knn import knn_scores, weighted_knn


def loop_knn_scores(train, train_labels, test, k, temperature, num_classes):
    """The paper's vote written out: cosine similarity, k most similar, exp(s/T) summed per class."""
    train, test = train.tolist(), test.tolist()
    labels = train_labels.tolist()

    def cosine(a, b):
        dot = sum(x * y for x, y in zip(a, b))
        return dot / (math.sqrt(sum(x * x for x in a)) * math.sqrt(sum(y * y for y in b)))

    rows = []
    for x in test:
        sims = [(cosine(x, f), j) for j, f in enumerate(train)]
        sims.sort(key=lambda t: -t[0])
        scores = [0.0] * num_classes
        for s, j in sims[:k]:
            scores[labels[j]] += math.exp(s / temperature)
        rows.append(scores)
    return rows


def loop_top1(train, train_labels, test, test_labels, k, temperature, num_classes):
    rows = loop_knn_scores(train, train_labels, test, k, temperature, num_classes)
    correct = sum(max(range(num_classes), key=lambda c: r[c]) == y for r, y in zip(rows, test_labels.tolist()))
    return 100.0 * correct / len(rows)


def random_problem(seed, n_train=40, n_test=25, dim=6, classes=4):
    g = torch.Generator().manual_seed(seed)
    means = 1.5 * torch.randn(classes, dim, generator=g)
    ytr = torch.randint(0, classes, (n_train,), generator=g)
    yte = torch.randint(0, classes, (n_test,), generator=g)
    xtr = means[ytr] + torch.randn(n_train, dim, generator=g)
    xte = means[yte] + torch.randn(n_test, dim, generator=g)
    return xtr.double(), ytr, xte.double(), yte


@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("k,temperature", [(1, 0.07), (5, 0.07), (20, 0.07), (7, 0.5)])
def test_matches_explicit_loop(seed, k, temperature):
    xtr, ytr, xte, yte = random_problem(seed)
    expected = loop_top1(xtr, ytr, xte, yte, k, temperature, 4)
    for chunk in (1, 7, 1024):
        got = weighted_knn(xtr, ytr, xte, yte, k=k, temperature=temperature, num_classes=4, chunk_size=chunk)
        assert got == pytest.approx(expected)


def test_scores_proportional_to_loop_scores():
    xtr, ytr, xte, yte = random_problem(3)
    k, t = 9, 0.1
    ref = torch.tensor(loop_knn_scores(xtr, ytr, xte, k, t, 4), dtype=torch.float64)
    got = knn_scores(xtr / xtr.norm(dim=1, keepdim=True), ytr, xte / xte.norm(dim=1, keepdim=True), k, t, 4)
    # Each row is rescaled (nearest neighbour weighs 1); normalise both rows to compare.
    torch.testing.assert_close(got / got.sum(1, keepdim=True), ref / ref.sum(1, keepdim=True))


def test_hand_computed_weighted_differs_from_majority():
    # Test point (1, 0) of class 0. Neighbours by cosine: A (sim 0.99875, class 0), B and C (sim 0.6, class 1), D (-1).
    train = torch.tensor([[1.0, 0.05], [0.6, 0.8], [0.6, -0.8], [-1.0, 0.0]])
    train_labels = torch.tensor([0, 1, 1, 0])
    test, test_labels = torch.tensor([[2.0, 0.0]]), torch.tensor([0])
    s_a = 1.0 / math.sqrt(1.0 + 0.05**2)
    # k = 3, T = 0.07: class 0 gets exp(s_a / T) = 1.57e6, class 1 gets 2 exp(0.6 / T) = 1.05e4 -> class 0.
    assert math.exp(s_a / 0.07) > 2 * math.exp(0.6 / 0.07)
    assert weighted_knn(train, train_labels, test, test_labels, k=3, temperature=0.07) == 100.0
    # Nearly equal weights (T large) make it a 2-vs-1 majority vote -> class 1, wrong.
    assert weighted_knn(train, train_labels, test, test_labels, k=3, temperature=1000.0) == 0.0
    scores = knn_scores(train / train.norm(dim=1, keepdim=True), train_labels, test / 2, 3, 0.07, 2)
    assert float(scores[0, 0] / scores[0, 1]) == pytest.approx(math.exp((s_a - 0.6) / 0.07) / 2, rel=1e-4)


def test_k_clipped_to_bank_and_scale_invariant():
    xtr, ytr, xte, yte = random_problem(4, n_train=6)
    full = weighted_knn(xtr, ytr, xte, yte, k=6, num_classes=4)
    assert weighted_knn(xtr, ytr, xte, yte, k=100, num_classes=4) == full
    assert weighted_knn(5.0 * xtr, ytr, 0.1 * xte, yte, k=6, num_classes=4) == full
    assert weighted_knn(xtr.float(), ytr, xte.float(), yte, k=6) == full  # num_classes inferred


def test_small_temperature_does_not_overflow():
    xtr, ytr, xte, yte = random_problem(5)
    # exp(1 / 0.001) overflows even float64; the per-row rescaling keeps the same decision as k = 1.
    assert weighted_knn(xtr, ytr, xte, yte, k=10, temperature=1e-3) == weighted_knn(xtr, ytr, xte, yte, k=1)


@pytest.mark.parametrize(
    "kwargs", [dict(k=0), dict(temperature=0.0), dict(chunk_size=0), dict(num_classes=2)]
)
def test_invalid_arguments(kwargs):
    xtr, ytr, xte, yte = random_problem(6)
    with pytest.raises(ValueError):
        weighted_knn(xtr, ytr, xte, yte, **kwargs)


def test_shape_mismatch_raises():
    xtr, ytr, xte, yte = random_problem(7)
    with pytest.raises(ValueError, match="dims"):
        weighted_knn(xtr, ytr, xte[:, :3], yte)
    with pytest.raises(ValueError, match="train_labels"):
        weighted_knn(xtr, ytr[:-1], xte, yte)
