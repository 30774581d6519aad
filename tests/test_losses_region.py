"""EsViT region loss L_R (Eq. 2) against explicit loops over view pairs, samples and tokens."""

import math

import pytest
import torch

from dinolab.losses import RegionLoss


def _softmax(xs):
    m = max(xs)
    e = [math.exp(x - m) for x in xs]
    return [x / sum(e) for x in e]


def _log_softmax(xs):
    m = max(xs)
    lse = m + math.log(sum(math.exp(x - m) for x in xs))
    return [x - lse for x in xs]


def _cos(a, b):
    dot = sum(x * y for x, y in zip(a, b))
    return dot / math.sqrt(sum(x * x for x in a) * sum(y * y for y in b))


def _reference(s_tok, s_log, t_tok, t_log, center, tau_s, tau_t):
    """Nested lists: s_tok[c][b][i][d], s_log[c][b][i][k], t_tok[t][b][j][d], t_log[t][b][j][k]."""
    terms = []
    for t in (0, 1):
        for s in range(len(s_tok)):
            if s == t:
                continue
            per_sample = []
            for b in range(len(s_tok[s])):
                per_token = []
                for i in range(len(s_tok[s][b])):
                    sims = [_cos(s_tok[s][b][i], t_tok[t][b][j]) for j in range(len(t_tok[t][b]))]
                    j_star = max(range(len(sims)), key=lambda j: sims[j])
                    if tau_t == 0:
                        centered = [x - c for x, c in zip(t_log[t][b][j_star], center)]
                        q = [1.0 if k == max(range(len(centered)), key=lambda k: centered[k]) else 0.0 for k in range(len(centered))]
                    else:
                        q = _softmax([(x - c) / tau_t for x, c in zip(t_log[t][b][j_star], center)])
                    logp = _log_softmax([x / tau_s for x in s_log[s][b][i]])
                    per_token.append(-sum(qk * lk for qk, lk in zip(q, logp)))
                per_sample.append(sum(per_token) / len(per_token))
            terms.append(sum(per_sample) / len(per_sample))
    return sum(terms) / len(terms)


def _inputs(n_crops=4, batch=2, n_global=4, n_local=2, dim=5, k=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    sizes = [n_global, n_global] + [n_local] * (n_crops - 2)
    s_tok = [torch.randn(batch, n, dim, generator=g) for n in sizes]
    s_log = [torch.randn(batch, n, k, generator=g) for n in sizes]
    t_tok = [torch.randn(batch, n_global, dim, generator=g) for _ in range(2)]
    t_log = [torch.randn(batch, n_global, k, generator=g) for _ in range(2)]
    return s_tok, s_log, t_tok, t_log


def _lists(ts):
    return [t.tolist() for t in ts]


@pytest.mark.parametrize("tau_t", [0.07, 0.0])
def test_region_loss_matches_explicit_loops(tau_t):
    s_tok, s_log, t_tok, t_log = _inputs()
    crit = RegionLoss(6, student_temp=0.1)
    center = torch.linspace(-0.5, 0.5, 6)
    crit.center.copy_(center[None])
    got = crit(s_tok, s_log, t_tok, t_log, tau_t).item()
    expected = _reference(_lists(s_tok), _lists(s_log), _lists(t_tok), _lists(t_log), center.tolist(), 0.1, tau_t)
    assert got == pytest.approx(expected, rel=1e-5)


def test_matching_uses_backbone_tokens_hand_case():
    """One sample, 2 global crops, 1 student token per view equal to teacher token 1 of the other view
    (up to scale): the target is teacher token 1's distribution, whatever the region logits say."""
    k, dim = 3, 2
    t_tok = [torch.tensor([[[1.0, 0.0], [0.0, 1.0]]])] * 2  # (1, 2, 2): token 0 = e_0, token 1 = e_1
    t_log = [torch.tensor([[[9.0, 0.0, 0.0], [0.0, 0.0, 9.0]]])] * 2  # token 0 -> class 0, token 1 -> class 2
    s_tok = [torch.tensor([[[0.1, 5.0]]])] * 2  # closest to e_1
    s_log = [torch.tensor([[[9.0, 0.0, 0.0]]])] * 2  # the student's logits resemble teacher token 0
    crit = RegionLoss(k, student_temp=1.0)
    got = crit(s_tok, s_log, t_tok, t_log, teacher_temp=0.0).item()  # one-hot target: class 2
    log_p2 = 0.0 - math.log(math.exp(9.0) + 2.0)
    assert got == pytest.approx(-log_p2, rel=1e-6)


def test_gradient_flows_through_student_region_logits_only():
    s_tok, s_log, t_tok, t_log = _inputs(n_crops=3, seed=1)
    for x in s_tok + s_log + t_tok + t_log:
        x.requires_grad_(True)
    RegionLoss(6)(s_tok, s_log, t_tok, t_log, 0.04).backward()
    assert all(x.grad is not None for x in s_log)
    assert all(x.grad is None for x in s_tok + t_tok + t_log)


def test_region_center_is_mean_over_all_teacher_tokens():
    _, _, _, t_log = _inputs(seed=2)
    crit = RegionLoss(6, center_momentum=0.8)
    crit.center.fill_(1.0)
    crit.update_center(t_log)
    rows = [tok for crop in _lists(t_log) for sample in crop for tok in sample]
    mean = [sum(r[c] for r in rows) / len(rows) for c in range(6)]
    expected = [0.8 * 1.0 + 0.2 * m for m in mean]
    assert torch.allclose(crit.center[0], torch.tensor(expected), atol=1e-6)
    # the loop passes the two crops concatenated along the token axis: same center
    other = RegionLoss(6, center_momentum=0.8)
    other.center.fill_(1.0)
    other.update_center(torch.cat(t_log, dim=1))
    assert torch.allclose(other.center, crit.center, atol=1e-6)


def test_region_shape_errors():
    s_tok, s_log, t_tok, t_log = _inputs()
    with pytest.raises(ValueError):
        RegionLoss(6)(s_tok, s_log[:-1], t_tok, t_log, 0.04)
    with pytest.raises(ValueError):
        RegionLoss(6)(s_tok, s_log, t_tok[:1], t_log[:1], 0.04)
    with pytest.raises(ValueError):
        RegionLoss(7)(s_tok, s_log, t_tok, t_log, 0.04)
