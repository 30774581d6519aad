"""The DINO self-distillation loss with teacher centering (Caron et al. 2021, Eq. 1-4, Algorithm 1).

Student view v, teacher (global) view iq:
    P_s(x_v)  = softmax(g_s(x_v) / tau_s)
    P_t(x_iq) = softmax((g_t(x_iq) - c) / tau_t)                    (centering "ema", Eq. 4 below)
    L = 1 / (2 (n_crops - 1)) * sum_{iq in {0,1}} sum_{v != iq} mean_b sum_k -P_t[k] log P_s[k]   (Eq. 3)
    c <- m c + (1 - m) * mean over the batch (all workers) of the raw teacher logits     (Eq. 4)

Logits are crop-major: rows [i*B:(i+1)*B] are crop i; crops 0 and 1 are the two global crops, the
only ones the teacher sees (local-to-global correspondence, paper Sec. 3.1).
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from ._distributed import all_reduce_sum, world_size
from .sinkhorn import sinkhorn_knopp

CENTERINGS = ("ema", "sinkhorn", "none")


class LossOutput(NamedTuple):
    loss: torch.Tensor  # scalar, carries the student's graph
    teacher_probs: torch.Tensor  # the targets, detached: (2B, K) for DINO


def view_pairs(n_crops: int) -> list[tuple[int, int]]:
    """The (teacher view iq, student view v) pairs of Eq. 3: iq in {0, 1}, v in 0..n_crops-1, v != iq."""
    if n_crops < 2:
        raise ValueError(f"n_crops must be >= 2 (the two global crops), got {n_crops}")
    return [(iq, v) for iq in (0, 1) for v in range(n_crops) if v != iq]


def split_batch(student: torch.Tensor, teacher: torch.Tensor, n_crops: int) -> int:
    """Check crop-major shapes (n_crops*B, K) and (2B, K); return B."""
    if student.dim() != 2 or teacher.dim() != 2:
        raise ValueError(f"logits must be 2-D, got student {tuple(student.shape)}, teacher {tuple(teacher.shape)}")
    if teacher.shape[0] % 2:
        raise ValueError(f"teacher logits must hold the 2 global crops (2B rows), got {teacher.shape[0]} rows")
    batch = teacher.shape[0] // 2
    if student.shape[0] != n_crops * batch or student.shape[1] != teacher.shape[1]:
        raise ValueError(
            f"student logits {tuple(student.shape)} do not match n_crops={n_crops} x B={batch} crops of K={teacher.shape[1]}"
        )
    return batch


def pair_weights(n_crops: int, device: torch.device | str | None = None) -> torch.Tensor:
    """(2, n_crops) weights of Eq. 3's mean over view pairs: 1 / (2 (n_crops - 1)) at (iq, v != iq), 0 at (iq, iq)."""
    weights = torch.full((2, n_crops), 1.0 / (2 * (n_crops - 1)), device=device)
    weights[0, 0] = weights[1, 1] = 0.0
    return weights


def _log_softmax_rows(x: torch.Tensor) -> torch.Tensor:
    """log_softmax over the last dim, in x's own memory on CPU (the CPU kernel reads each row before writing
    it: bit-identical to the out-of-place op, checked by the tests); a new tensor elsewhere, where the
    aliasing of the device's kernels is not checked here and fresh memory is cheap (caching allocator)."""
    if x.device.type == "cpu":
        return torch.ops.aten._log_softmax.out(x, -1, False, out=x)
    return torch.log_softmax(x, dim=-1)


def _softmax_rows(x: torch.Tensor) -> torch.Tensor:
    """softmax over the last dim; in place on CPU, as ``_log_softmax_rows``."""
    if x.device.type == "cpu":
        return torch.ops.aten._softmax.out(x, -1, False, out=x)
    return torch.softmax(x, dim=-1)


class StudentCrossEntropy(torch.autograd.Function):
    """Eq. 3 from raw student logits: L = -(1/B) sum_{iq, v} w[iq, v] sum_b sum_k q[iq, b, k] log p[v, b, k].

    p[v] = softmax(s[v] / tau_s); q (2B, K) are the teacher's targets (no gradient); w = ``pair_weights``.
    The same value as ``log_softmax`` + the pair reduction through autograd, with at most one
    (n_crops B, K) buffer instead of five (at out_dim 65536 and 8 crops of 64 each is 134 MB, and each
    fresh one costs ~33k page faults): the log-probabilities are computed in place in the one copy of
    s / tau_s, and the backward turns that buffer into the gradient, in closed form:

        dL/ds[v, b, k] = (1 / (B tau_s)) (alpha[v, b] p[v, b, k] - sum_iq w[iq, v] q[iq, b, k]),
        alpha[v, b] = sum_iq w[iq, v] sum_k q[iq, b, k]     (= 1 for every local view when rows sum to 1).

    Once differentiable, and its backward may run once (it consumes the saved buffer).
    """

    @staticmethod
    def forward(ctx, student_logits: torch.Tensor, targets: torch.Tensor, n_crops: int, student_temp: float) -> torch.Tensor:
        if targets.requires_grad:
            raise ValueError("the teacher's targets must not require a gradient (compute them under no_grad)")
        batch = targets.shape[0] // 2
        # (n_crops B, K): the function's one big buffer, row-major so the views below see crop-major rows
        log_probs = student_logits.div(student_temp).contiguous()
        log_probs = _log_softmax_rows(log_probs)
        weights = pair_weights(n_crops, student_logits.device).to(log_probs.dtype)
        cross = targets.reshape(2, -1) @ log_probs.reshape(n_crops, -1).T  # (2, n_crops): sum_b sum_k q[iq] log p[v]
        ctx.save_for_backward(log_probs, targets, weights)
        ctx.student_temp, ctx.batch, ctx.consumed = student_temp, batch, False
        return -(cross * weights).sum() / batch

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_loss: torch.Tensor):
        if ctx.consumed:
            raise RuntimeError("StudentCrossEntropy's backward ran twice; its saved buffer became the first gradient")
        ctx.consumed = True
        log_probs, targets, weights = ctx.saved_tensors
        n_crops, batch = weights.shape[1], ctx.batch
        scale = grad_loss / (batch * ctx.student_temp)  # 0-dim tensor
        row_sums = targets.reshape(2, batch, -1).sum(dim=-1)  # (2, B)
        alpha = (weights.T @ row_sums) * scale  # (n_crops, B)
        grad = log_probs.exp_()  # p, in place
        grad.view(n_crops * batch, -1).mul_(alpha.reshape(-1, 1))  # alpha[v, b] p[v, b, :]
        # - sum_iq w[iq, v] q[iq] scale, with scale folded into the (n_crops, 2) coefficients: no .item(),
        # so no device sync in the middle of the backward on a GPU
        grad.view(n_crops, -1).addmm_(weights.T * -scale, targets.reshape(2, -1))
        return grad, None, None, None


def one_hot_argmax(logits: torch.Tensor) -> torch.Tensor:
    """(N, K) -> (N, K) float32 one-hot at the argmax: the tau_t -> 0 limit of softmax (Appendix D)."""
    return F.one_hot(logits.argmax(dim=-1), logits.shape[-1]).float()


class DINOLoss(nn.Module):
    """Cross-entropy between the sharpened, centered teacher and the student over all view pairs.

    Args:
        out_dim: K, the head's output dimension.
        n_crops: 2 global + local crops seen by the student.
        student_temp: tau_s (paper 0.1).
        center_momentum: m of the center EMA (paper 0.9).
        centering: "ema" (DINO: subtract the EMA center c), "sinkhorn" (SwAV Sinkhorn-Knopp
            assignment of exp(t / tau_t) over all 2B teacher rows of all workers, no center),
            "none" (plain sharpened softmax; collapses).
        sinkhorn_iterations: iterations of Sinkhorn-Knopp (SwAV: 3).
    Buffer ``center`` (1, K), zeros at start; only "ema" centering updates it.
    """

    def __init__(
        self,
        out_dim: int,
        n_crops: int,
        student_temp: float = 0.1,
        center_momentum: float = 0.9,
        centering: str = "ema",
        sinkhorn_iterations: int = 3,
    ):
        super().__init__()
        if centering not in CENTERINGS:
            raise ValueError(f"centering must be one of {', '.join(CENTERINGS)}; got {centering!r}")
        if student_temp <= 0:
            raise ValueError(f"student_temp must be > 0, got {student_temp}")
        if not 0.0 <= center_momentum <= 1.0:
            raise ValueError(f"center_momentum must be in [0, 1], got {center_momentum}")
        if sinkhorn_iterations < 1:
            raise ValueError(f"sinkhorn_iterations must be >= 1, got {sinkhorn_iterations}")
        view_pairs(n_crops)  # validates n_crops
        self.out_dim = out_dim
        self.n_crops = n_crops
        self.student_temp = student_temp
        self.center_momentum = center_momentum
        self.centering = centering
        self.sinkhorn_iterations = sinkhorn_iterations
        self.register_buffer("center", torch.zeros(1, out_dim))

    @torch.no_grad()
    def teacher_targets(self, teacher_logits: torch.Tensor, teacher_temp: float) -> torch.Tensor:
        """(2B, K) raw teacher logits -> (2B, K) float32 target distributions (detached)."""
        if teacher_temp < 0:
            raise ValueError(f"teacher_temp must be >= 0, got {teacher_temp}")
        logits = teacher_logits.detach().float()
        if self.centering == "sinkhorn":
            if teacher_temp == 0:
                raise ValueError("teacher_temp=0 (one-hot targets) needs centering 'ema' or 'none'; sinkhorn needs teacher_temp > 0")
            return sinkhorn_knopp(logits / teacher_temp, self.sinkhorn_iterations)
        centered = self.centering == "ema"
        if centered:
            logits = logits - self.center  # a fresh (2B, K) buffer
        if teacher_temp == 0:
            return one_hot_argmax(logits)
        # Sharpened in one fresh buffer (never the caller's: its raw logits feed the centre's update) and
        # softmax in place there: bit-identical to F.softmax(logits / tau_t), without two more (2B, K) buffers.
        probs = logits.div_(teacher_temp) if centered else logits.div(teacher_temp)
        return _softmax_rows(probs)

    def forward(self, student_logits: torch.Tensor, teacher_logits: torch.Tensor, teacher_temp: float) -> LossOutput:
        """student_logits (n_crops*B, K) crop-major, teacher_logits (2B, K) -> LossOutput(scalar loss, (2B, K) targets)."""
        split_batch(student_logits, teacher_logits, self.n_crops)
        if student_logits.shape[1] != self.out_dim:
            raise ValueError(f"logits have K={student_logits.shape[1]}, the loss was built for out_dim={self.out_dim}")
        # float32 outside autocast: the pair reduction is a matmul, which autocast would run in bf16/fp16
        with torch.autocast(device_type=student_logits.device.type, enabled=False):
            targets = self.teacher_targets(teacher_logits, teacher_temp)
            loss = StudentCrossEntropy.apply(student_logits.float(), targets, self.n_crops, self.student_temp)
        return LossOutput(loss, targets)

    @torch.no_grad()
    def update_center(self, teacher_logits: torch.Tensor) -> None:
        """c <- m c + (1 - m) * mean of the raw (2B, K) teacher logits over all workers (Eq. 4).

        Called after the loss, so each step is centered with the previous steps' statistics.
        No-op unless centering == "ema".
        """
        if self.centering != "ema":
            return
        batch_center = all_reduce_sum(teacher_logits.detach().float().sum(dim=0, keepdim=True))
        batch_center = batch_center / (teacher_logits.shape[0] * world_size())
        self.center.mul_(self.center_momentum).add_(batch_center, alpha=1.0 - self.center_momentum)
