"""Teacher policies: how the teacher network is built from the student (DINO Figure 6).

- ``ema``: momentum encoder, theta_t <- m theta_t + (1 - m) theta_s after every optimizer step,
  m from a cosine schedule 0.996 -> 1 (the paper's default).
- ``student_copy``: the teacher is the current student (m = 0 after every step).
- ``prev_iter``: the teacher is the student of the previous iteration (a snapshot taken just
  before the optimizer step is copied into the teacher after it).
- ``prev_epoch``: the teacher is the student at the end of the previous epoch, frozen in between.

Parameters are matched by name, so student-only modules (the predictor) are skipped; the teacher
never receives gradients.
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import nn

POLICIES = ("ema", "student_copy", "prev_iter", "prev_epoch")


def shared_parameters(student: nn.Module, teacher: nn.Module) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """(student param, teacher param) pairs with the same name; buffers (BN statistics) included."""
    t_params = dict(teacher.named_parameters())
    t_params.update(dict(teacher.named_buffers()))
    pairs = []
    for name, p in list(student.named_parameters()) + list(student.named_buffers()):
        if name in t_params and t_params[name].shape == p.shape:
            pairs.append((p, t_params[name]))
    return pairs


@torch.no_grad()
def copy_student_to_teacher(student: nn.Module, teacher: nn.Module) -> None:
    for s, t in shared_parameters(student, teacher):
        t.copy_(s)


class TeacherPolicy:
    """Updates the teacher around each optimizer step and at each epoch's end."""

    def __init__(self, kind: str) -> None:
        if kind not in POLICIES:
            raise ValueError(f"dino.teacher={kind!r}: expected one of {POLICIES}")
        self.kind = kind
        self._snapshot: Optional[list[torch.Tensor]] = None

    @torch.no_grad()
    def before_step(self, student: nn.Module, teacher: nn.Module) -> None:
        if self.kind == "prev_iter":
            self._snapshot = [s.detach().clone() for s, _ in shared_parameters(student, teacher)]

    @torch.no_grad()
    def after_step(self, student: nn.Module, teacher: nn.Module, momentum: float) -> None:
        pairs = shared_parameters(student, teacher)
        if self.kind == "ema":
            for s, t in pairs:
                if t.dtype.is_floating_point:
                    t.mul_(momentum).add_(s.detach(), alpha=1.0 - momentum)
                else:
                    t.copy_(s)
        elif self.kind == "student_copy":
            for s, t in pairs:
                t.copy_(s)
        elif self.kind == "prev_iter":
            assert self._snapshot is not None, "before_step must run before after_step"
            for snap, (_, t) in zip(self._snapshot, pairs):
                t.copy_(snap)
            self._snapshot = None

    @torch.no_grad()
    def on_epoch_end(self, student: nn.Module, teacher: nn.Module) -> None:
        if self.kind == "prev_epoch":
            copy_student_to_teacher(student, teacher)
