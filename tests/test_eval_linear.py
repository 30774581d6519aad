"""Linear probe: SGD math against a closed-form-gradient loop, selection on val only, test read once."""

import math

import pytest
import torch

from dinolab.eval import linear
from dinolab.eval.linear import linear_probe, stratified_split, train_classifier


def clusters(seed, n, classes=4, dim=8, sep=6.0, noise=1.0):
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % classes
    means = torch.zeros(classes, dim)
    means[torch.arange(classes), torch.arange(classes)] = sep
    return means[y] + noise * torch.randn(n, dim, generator=g) + 3.0, y  # offset: standardisation matters


def reference_sgd(x, y, classes, lr0, epochs, seed, batch_size, weight_decay):
    """Softmax regression by hand: closed-form cross-entropy gradient, SGD momentum 0.9 (PyTorch form
    v <- 0.9 v + g, w <- w - lr v), per-epoch cosine lr, features standardised with their own mean/std.
    Yields (epoch, W, b, mean, std) after every epoch. Random draws in the probe's order: init, then one
    permutation per epoch."""
    g = torch.Generator().manual_seed(seed)
    x = x.double()
    mean = x.mean(0)
    std = ((x - mean) ** 2).mean(0).sqrt()
    z = (x - mean) / std
    w = (torch.randn(classes, x.shape[1], generator=g) * 0.01).double()
    b = torch.zeros(classes, dtype=torch.float64)
    vw = vb = None
    for e in range(epochs):
        lr = lr0 * 0.5 * (1 + math.cos(math.pi * e / epochs))
        order = torch.randperm(x.shape[0], generator=g)
        for s in range(0, x.shape[0], batch_size):
            idx = order[s:s + batch_size]
            p = torch.softmax(z[idx] @ w.T + b, dim=1)
            p[torch.arange(len(idx)), y[idx]] -= 1.0
            p /= len(idx)
            gw, gb = p.T @ z[idx] + weight_decay * w, p.sum(0) + weight_decay * b
            vw, vb = (gw, gb) if vw is None else (0.9 * vw + gw, 0.9 * vb + gb)
            w, b = w - lr * vw, b - lr * vb
        yield e + 1, w.clone(), b.clone(), mean, std


def reference_accuracy(w, b, mean, std, x, y):
    pred = (((x.double() - mean) / std) @ w.T + b).argmax(1)
    return 100.0 * float((pred == y).double().mean())


def test_train_classifier_matches_hand_written_sgd():
    x, y = clusters(0, 50, sep=1.0)
    clf, (mean, std) = train_classifier(x, y, 4, lr=0.3, epochs=4, seed=3, batch_size=16, weight_decay=0.01)
    *_, (_, w, b, rmean, rstd) = reference_sgd(x, y, 4, 0.3, 4, 3, 16, 0.01)
    torch.testing.assert_close(clf.weight.detach().double(), w, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(clf.bias.detach().double(), b, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(mean.flatten().double(), rmean, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(std.flatten().double(), rstd, rtol=1e-5, atol=1e-5)


def test_early_stop_follows_the_full_schedule():
    x, y = clusters(1, 40, sep=1.0)
    short, _ = train_classifier(x, y, 4, lr=0.1, epochs=6, seed=0, batch_size=8, weight_decay=0.0, stop_after=2)
    ref = [w for e, w, *_ in reference_sgd(x, y, 4, 0.1, 6, 0, 8, 0.0)]
    torch.testing.assert_close(short.weight.detach().double(), ref[1], rtol=1e-4, atol=1e-5)


def test_selection_and_refit_match_reference_protocol():
    x, y = clusters(2, 120, sep=1.2, noise=1.0)  # overlapping: val accuracy varies with lr and epoch
    xt, yt = clusters(5, 80, sep=1.2, noise=1.0)
    lrs, epochs, seed = (0.5, 0.01), 6, 1
    out = linear_probe(x, y, xt, yt, 4, lrs=lrs, epochs=epochs, val_fraction=0.25, seed=seed, batch_size=16)

    fit, val = stratified_split(y, 0.25, seed)
    table = []  # (val top-1, lr, epoch) in lr order, then epoch order
    for lr in lrs:
        for e, w, b, m, s in reference_sgd(x[fit], y[fit], 4, lr, epochs, seed, 16, 0.0):
            table.append((reference_accuracy(w, b, m, s, x[val], y[val]), lr, e))
    best = max(table, key=lambda t: t[0])  # max keeps the first of equal values
    assert (out["val_top1"], out["lr"], out["epoch"]) == pytest.approx(best)
    assert len({t[0] for t in table}) > 1  # the selection had something to choose

    refit = [reference_accuracy(w, b, m, s, xt, yt) for _, w, b, m, s in reference_sgd(x, y, 4, best[1], epochs, seed, 16, 0.0)]
    assert out["top1"] == pytest.approx(refit[best[2] - 1])
    assert best[2] < epochs and refit[best[2] - 1] != refit[-1]  # the refit's stopping epoch is visible on test


def test_refit_uses_all_training_rows_with_chosen_lr_and_epoch(monkeypatch):
    x, y = clusters(2, 120, sep=1.2)
    xt, yt = clusters(5, 80, sep=1.2)
    calls = []
    real = linear.train_classifier

    def spy(feats, labels, **kw):
        calls.append((feats.shape[0], kw["lr"], kw.get("stop_after")))
        return real(feats, labels, **kw)

    monkeypatch.setattr(linear, "train_classifier", spy)
    out = linear_probe(x, y, xt, yt, 4, lrs=(0.5, 0.01), epochs=6, val_fraction=0.25, seed=1, batch_size=16)
    assert calls[:2] == [(88, 0.5, None), (88, 0.01, None)]  # selection: 120 - 4 * round(0.25 * 30) = 88 rows
    assert calls[2:] == [(120, out["lr"], out["epoch"])]


def test_separable_clusters_reach_100():
    x, y = clusters(4, 200)
    xt, yt = clusters(5, 100)
    out = linear_probe(x, y, xt, yt, 4, lrs=(0.1, 0.01), epochs=10, batch_size=32)
    assert out["top1"] >= 99.0 and out["val_top1"] >= 99.0
    assert out["lr"] in (0.1, 0.01) and 1 <= out["epoch"] <= 10


def test_random_labels_give_chance():
    g = torch.Generator().manual_seed(6)
    x, y = torch.randn(300, 8, generator=g), torch.randint(0, 4, (300,), generator=g)
    xt, yt = torch.randn(400, 8, generator=g), torch.randint(0, 4, (400,), generator=g)
    out = linear_probe(x, y, xt, yt, 4, lrs=(0.1, 0.01), epochs=10, batch_size=32)
    assert abs(out["top1"] - 25.0) < 8.0  # chance 25%, std of 400 draws ~2.2 points


def test_test_split_is_evaluated_exactly_once_and_last(monkeypatch):
    x, y = clusters(7, 60)
    xt, yt = clusters(8, 20)
    calls = []
    real = linear.evaluate

    def spy(classifier, stats, feats, labels):
        calls.append(feats is xt)
        return real(classifier, stats, feats, labels)

    monkeypatch.setattr(linear, "evaluate", spy)
    linear_probe(x, y, xt, yt, 4, lrs=(0.1, 0.03), epochs=3, val_fraction=0.2, batch_size=16)
    assert len(calls) == 2 * 3 + 1  # one val evaluation per (lr, epoch), one test evaluation
    assert calls.count(True) == 1 and calls[-1] is True


def test_selection_does_not_depend_on_test_split():
    x, y = clusters(9, 100, sep=1.2)
    xt, yt = clusters(10, 60, sep=1.2)
    kw = dict(lrs=(0.3, 0.01), epochs=5, batch_size=16, seed=2)
    a = linear_probe(x, y, xt, yt, 4, **kw)
    g = torch.Generator().manual_seed(0)
    b = linear_probe(x, y, 100 * torch.randn(xt.shape, generator=g), yt[torch.randperm(60, generator=g)], 4, **kw)
    assert (a["lr"], a["epoch"], a["val_top1"]) == (b["lr"], b["epoch"], b["val_top1"])
    assert a["top1"] != b["top1"]
    assert linear_probe(x, y, xt, yt, 4, **kw) == a  # deterministic for a seed


def test_stratified_split():
    y = torch.tensor([0] * 20 + [1] * 10 + [2] * 3 + [3])
    fit, val = stratified_split(y, 0.2, seed=0)
    assert sorted(fit.tolist() + val.tolist()) == list(range(len(y)))
    assert [int((y[val] == c).sum()) for c in range(4)] == [4, 2, 1, 0]  # round(0.2 n), >= 1, single row stays
    assert torch.equal(stratified_split(y, 0.2, seed=0)[1], val)
    assert not torch.equal(stratified_split(y, 0.2, seed=1)[1], val)


@pytest.mark.parametrize(
    "kwargs,match",
    [(dict(lrs=()), "lrs"), (dict(lrs=(0.1, -1.0)), "lrs"), (dict(epochs=0), "epochs"),
     (dict(val_fraction=1.0), "val_fraction"), (dict(num_classes=3), "labels")],
)
def test_invalid_arguments(kwargs, match):
    x, y = clusters(11, 20)
    args = dict(num_classes=4) | kwargs
    with pytest.raises(ValueError, match=match):
        linear_probe(x, y, x, y, **args)
