"""Teacher policies (DINO Figure 6) against explicit bookkeeping of the student's trajectory."""

import pytest
import torch
from torch import nn

from dinolab.train.teacher import TeacherPolicy, copy_student_to_teacher


class Student(nn.Module):
    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(torch.zeros(3))
        self.predictor = nn.Parameter(torch.zeros(2))  # student-only: must be skipped


class Teacher(nn.Module):
    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(torch.zeros(3), requires_grad=False)


def trajectory(kind, momenta, steps_per_epoch=2):
    """Drive the policy with a student whose weight after step i is (i+1) * [1, 2, 3]."""
    s, t = Student(), Teacher()
    copy_student_to_teacher(s, t)
    policy = TeacherPolicy(kind)
    seen = []
    for i, m in enumerate(momenta):
        policy.before_step(s, t)
        with torch.no_grad():
            s.w.copy_(torch.tensor([1.0, 2.0, 3.0]) * (i + 1))  # the "optimizer step"
        policy.after_step(s, t, m)
        if (i + 1) % steps_per_epoch == 0:
            policy.on_epoch_end(s, t)
        seen.append(t.w.detach().clone())
    return seen


def test_ema_matches_closed_form():
    momenta = [0.9, 0.5, 0.99, 0.0]
    seen = trajectory("ema", momenta)
    # theta_t(i) = m_i theta_t(i-1) + (1 - m_i) theta_s(i), theta_t(-1) = 0, theta_s(i) = (i+1) v
    v = torch.tensor([1.0, 2.0, 3.0])
    expected = torch.zeros(3)
    for i, m in enumerate(momenta):
        expected = m * expected + (1 - m) * (i + 1) * v
        assert torch.allclose(seen[i], expected)


def test_student_copy_is_current_student():
    seen = trajectory("student_copy", [0.996] * 3)
    for i, t in enumerate(seen):
        assert torch.equal(t, torch.tensor([1.0, 2.0, 3.0]) * (i + 1))


def test_prev_iter_is_student_before_the_step():
    seen = trajectory("prev_iter", [0.996] * 4)
    for i, t in enumerate(seen):
        assert torch.equal(t, torch.tensor([1.0, 2.0, 3.0]) * i)  # student of iteration i-1 (0 at init)


def test_prev_epoch_changes_only_at_epoch_end():
    seen = trajectory("prev_epoch", [0.996] * 6, steps_per_epoch=2)
    v = torch.tensor([1.0, 2.0, 3.0])
    expected = [0 * v, 2 * v, 2 * v, 4 * v, 4 * v, 6 * v]
    for t, e in zip(seen, expected):
        assert torch.equal(t, e)


def test_unknown_policy_names_valid_ones():
    with pytest.raises(ValueError, match="prev_epoch"):
        TeacherPolicy("swa")
