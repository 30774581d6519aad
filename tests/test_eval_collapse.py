"""Collapse detection: each mode, a healthy run, threshold edges, and histories built from real distributions."""

import math

import pytest
import torch

from dinolab.eval.collapse import detect_collapse

LN16 = math.log(16)


def test_healthy_run_is_not_collapsed():
    history = {"teacher_entropy": [2.6, 2.1, 1.7, 1.5], "kl": [0.9, 0.7, 0.6, 0.55], "knn_top1": [30.0, 52.0, 61.0]}
    assert detect_collapse(history, out_dim=16, num_classes=6) == (False, "")


def test_no_centering_mode():
    history = {"teacher_entropy": [1.2, 0.2, 0.004, 0.001, 0.0], "kl": [0.6, 0.05, 0.002, 0.0003, 0.0001]}
    assert detect_collapse(history, out_dim=16, num_classes=6) == (True, "no centering: entropy 0.00 ~ 0 and KL 0.0001")


def test_uniform_mode():
    history = {"teacher_entropy": [2.0, LN16 - 0.05, LN16 - 0.001, LN16], "kl": [0.4, 0.008, 0.0005, 0.0002]}
    assert detect_collapse(history, out_dim=16, num_classes=6) == (True, "uniform: entropy 2.77 ~ ln(16) = 2.77 and KL 0.0002")


def test_knn_at_chance():
    history = {"teacher_entropy": [2.0, 1.9, 1.8], "kl": [0.5, 0.5, 0.5], "knn_top1": [40.0, 17.0]}
    assert detect_collapse(history, out_dim=16, num_classes=6) == (True, "k-NN 17.0% within 5 pts of chance 16.7%")
    assert detect_collapse(history | {"knn_top1": [2.0]}, 16, 6) == (True, "k-NN 2.0% below chance 16.7%")


def test_modes_are_all_named():
    history = {"teacher_entropy": [0.0] * 3, "kl": [0.0] * 3, "knn_top1": [25.0]}
    collapsed, reason = detect_collapse(history, out_dim=16, num_classes=4)
    assert collapsed and reason.startswith("no centering:") and reason.endswith("; k-NN 25.0% within 5 pts of chance 25.0%")


def test_kl_must_vanish_one_hot_targets_are_not_collapse():
    # tau_t = 0: h = 0 by construction, but the student does not match the target (KL large): not collapsed.
    assert detect_collapse({"teacher_entropy": [0.0] * 5, "kl": [1.5, 1.2, 1.1, 1.0, 0.9]}, 16, 6) == (False, "")
    # Tiny KL with a mid-range entropy is a student that matches its teacher, not a collapse mode.
    assert detect_collapse({"teacher_entropy": [1.4] * 3, "kl": [0.001] * 3}, 16, 6) == (False, "")


@pytest.mark.parametrize(
    "entropy,kl,expected",
    [
        ([0.1, 0.1, 0.1], [0.05, 0.05, 0.05], True),  # exactly at both thresholds (inclusive)
        ([0.1, 0.1, 0.1001], [0.0] * 3, False),  # entropy just above eps in the last epoch
        ([0.0] * 3, [0.0, 0.0501, 0.0], False),  # KL just above eps in one of the last 3 epochs
        ([5.0, 0.5, 0.0, 0.0, 0.0], [3.0, 1.0, 0.0, 0.0, 0.0], True),  # only the last 3 epochs count
        ([0.0, 0.0], [0.0, 0.0], True),  # shorter than last_k: all epochs
        ([0.0, float("nan"), 0.0], [0.0] * 3, False),  # non-finite never matches
        ([LN16 - 0.099] * 3, [0.0] * 3, True),  # ln K - eps (up to float round-off)
        ([LN16 - 0.11] * 3, [0.0] * 3, False),
    ],
)
def test_entropy_and_kl_thresholds(entropy, kl, expected):
    assert detect_collapse({"teacher_entropy": entropy, "kl": kl}, 16, 6)[0] is expected


def test_knn_threshold_edges_and_missing():
    chance = 100 / 6
    base = {"teacher_entropy": [1.5] * 3, "kl": [0.5] * 3}
    assert detect_collapse(base | {"knn_top1": [chance + 5.0]}, 16, 6)[0]
    assert not detect_collapse(base | {"knn_top1": [chance + 5.01]}, 16, 6)[0]
    assert not detect_collapse(base | {"knn_top1": []}, 16, 6)[0]
    assert not detect_collapse(base, 16, 6)[0]
    assert not detect_collapse({}, 16, 6)[0]
    assert detect_collapse(base | {"knn_top1": [15.0, 50.0]}, 16, 6) == (False, "")  # the final value counts
    assert not detect_collapse(base | {"knn_top1": [30.0]}, 16, 6, knn_margin=10.0)[0]
    assert detect_collapse(base | {"knn_top1": [30.0]}, 16, 6, knn_margin=15.0)[0]


def test_keyword_thresholds():
    history = {"teacher_entropy": [0.3] * 4, "kl": [0.08] * 4}
    assert not detect_collapse(history, 16, 6)[0]
    assert detect_collapse(history, 16, 6, entropy_eps=0.3, kl_eps=0.1)[0]
    history = {"teacher_entropy": [2.0, 0.0, 0.0], "kl": [1.0, 0.0, 0.0]}
    assert detect_collapse(history, 16, 6, last_k=2)[0] and not detect_collapse(history, 16, 6, last_k=3)[0]


@pytest.mark.parametrize(
    "kwargs",
    [dict(out_dim=1), dict(num_classes=1), dict(last_k=0), dict(entropy_eps=LN16 / 2), dict(kl_eps=-1.0),
     dict(knn_margin=-1.0)],
)
def test_invalid_arguments(kwargs):
    args = dict(out_dim=16, num_classes=6) | kwargs
    with pytest.raises(ValueError):
        detect_collapse({"teacher_entropy": [1.0], "kl": [1.0]}, **args)


def entropy_kl(teacher_logits, center, teacher_temp, student_logits, student_temp=0.1):
    """h(Pt) and KL(Pt || Ps), batch means, from the paper's definitions (H = h + KL)."""
    pt = torch.softmax((teacher_logits - center) / teacher_temp, dim=1)
    log_ps = torch.log_softmax(student_logits / student_temp, dim=1)
    h = -(pt * pt.clamp_min(1e-30).log()).sum(1)
    cross = -(pt * log_ps).sum(1)
    return float(h.mean()), float((cross - h).mean())


def test_histories_from_actual_collapsed_distributions():
    k, b = 16, 8
    g = torch.Generator().manual_seed(0)
    # No centering: every image's output is dominated by dimension 3 (gap 2, tau_t 0.04, tau_s 0.1).
    dominated = torch.randn(b, k, generator=g) * 0.05
    dominated[:, 3] += 2.0
    h, kl = entropy_kl(dominated, 0.0, 0.04, dominated)
    assert detect_collapse({"teacher_entropy": [h] * 3, "kl": [kl] * 3}, k, 6)[1].startswith("no centering")
    # No sharpening: a constant output minus its (EMA) center is 0 -> uniform teacher and student.
    constant = torch.randn(1, k, generator=g).expand(b, k)
    h, kl = entropy_kl(constant, constant[:1], 0.04, constant - constant[:1])
    assert h == pytest.approx(math.log(k))
    assert detect_collapse({"teacher_entropy": [h] * 3, "kl": [kl] * 3}, k, 6)[1].startswith("uniform")
    # Healthy: per-image teacher targets the student does not (yet) match exactly.
    teacher, student = torch.randn(b, k, generator=g), torch.randn(b, k, generator=g)
    h, kl = entropy_kl(teacher, teacher.mean(0, keepdim=True), 0.04, student)
    assert detect_collapse({"teacher_entropy": [h] * 3, "kl": [kl] * 3}, k, 6) == (False, "")
