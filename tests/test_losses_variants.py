"""Table 7 variants (BYOL-like MSE, MoCo v3 InfoNCE) against explicit loops over pairs and samples."""

import math

import pytest
import torch

from dinolab.losses import infonce_loss, mse_loss


def _unit(v):
    n = math.sqrt(sum(x * x for x in v))
    return [x / n for x in v]


def _pairs(n_crops):
    return [(iq, v) for iq in (0, 1) for v in range(n_crops) if v != iq]


def _inputs(n_crops, batch, k, seed):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n_crops * batch, k, generator=g), torch.randn(2 * batch, k, generator=g)


@pytest.mark.parametrize("n_crops", [2, 4])
def test_mse_matches_loops_and_cosine_form(n_crops):
    batch, k = 3, 7
    student, teacher = _inputs(n_crops, batch, k, seed=0)
    s, t = student.tolist(), teacher.tolist()
    sq, cos_form = [], []
    for iq, v in _pairs(n_crops):
        for b in range(batch):
            a, c = _unit(s[v * batch + b]), _unit(t[iq * batch + b])
            sq.append(sum((x - y) ** 2 for x, y in zip(a, c)))
            cos_form.append(2 - 2 * sum(x * y for x, y in zip(a, c)))
    got = mse_loss(student, teacher, n_crops).item()
    assert got == pytest.approx(sum(sq) / len(sq), rel=1e-5)
    assert got == pytest.approx(sum(cos_form) / len(cos_form), rel=1e-5)


def test_mse_zero_when_views_agree_and_teacher_is_stop_gradient():
    batch, k = 4, 5
    teacher = torch.randn(2 * batch, k)
    # 2 crops: the pairs are (t0, s1) and (t1, s0); a student whose crop 1 is a positive multiple of teacher
    # crop 0 and vice versa matches perfectly
    student = torch.cat([3.0 * teacher[batch:], 0.5 * teacher[:batch]]).requires_grad_(True)
    teacher.requires_grad_(True)
    loss = mse_loss(student, teacher, 2)
    assert loss.item() == pytest.approx(0.0, abs=1e-6)
    mse_loss(student, teacher * -1, 2).backward()
    assert teacher.grad is None and student.grad.abs().sum() > 0


@pytest.mark.parametrize("n_crops,temperature", [(2, 0.2), (3, 1.0)])
def test_infonce_matches_loops(n_crops, temperature):
    batch, k = 4, 6
    student, teacher = _inputs(n_crops, batch, k, seed=1)
    s, t = student.tolist(), teacher.tolist()
    terms = []
    for iq, v in _pairs(n_crops):
        ce = 0.0
        for b in range(batch):
            q = _unit(s[v * batch + b])
            logits = [sum(x * y for x, y in zip(q, _unit(t[iq * batch + j]))) / temperature for j in range(batch)]
            lse = math.log(sum(math.exp(z) for z in logits))
            ce += lse - logits[b]  # positive: the same image's key
        terms.append(ce / batch * 2 * temperature)
    got = infonce_loss(student, teacher, n_crops, temperature).item()
    assert got == pytest.approx(sum(terms) / len(terms), rel=1e-5)


def test_infonce_scale_invariance_and_hand_case():
    """Two images with orthogonal unit keys, queries equal to the matching key: per query
    CE = log(1 + e^(-1/tau)) (positive logit 1/tau, negative 0), times 2 tau."""
    tau = 0.5
    keys = torch.eye(2)  # (B=2, K=2): image b has key e_b in both global crops
    teacher = torch.cat([keys, keys])
    student = torch.cat([keys * 7.0, keys * 0.1])  # norms must not matter
    got = infonce_loss(student, teacher, 2, tau).item()
    assert got == pytest.approx(2 * tau * math.log(1 + math.exp(-1 / tau)), rel=1e-6)
    with pytest.raises(ValueError):
        infonce_loss(student, teacher, 2, 0.0)


def test_shape_errors():
    with pytest.raises(ValueError):
        mse_loss(torch.zeros(6, 4), torch.zeros(4, 4), 2)
    with pytest.raises(ValueError):
        infonce_loss(torch.zeros(4, 4), torch.zeros(4, 3), 2)
