"""Collapse diagnostics of the DINO paper's Fig. 7: H(P_t, P_s) = h(P_t) + KL(P_t || P_s).

Without centering h -> 0 (one dimension dominates); without sharpening h -> ln K (uniform); in both
cases KL -> 0 (the student copies a constant teacher).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .dino import split_batch, view_pairs


@torch.no_grad()
def entropy_and_kl(
    teacher_probs: torch.Tensor, student_logits: torch.Tensor, student_temp: float, n_crops: int
) -> tuple[float, float]:
    """Mean teacher entropy and mean teacher-to-student KL, in nats, over the loss's view pairs.

    Args:
        teacher_probs: (2B, K) the targets the loss used (``LossOutput.teacher_probs``).
        student_logits: (n_crops*B, K) crop-major raw student logits.
        student_temp: tau_s used by the loss.
    Returns:
        (h, kl): h = mean over the 2B teacher rows of -sum_k q log q (each global view enters the
        pairs equally often, so this is also its mean over pairs); kl = mean over pairs (iq, v != iq)
        of mean_b sum_k q (log q - log p_v). h + kl equals the DINO cross-entropy.
    """
    batch = split_batch(student_logits, teacher_probs, n_crops)
    q = teacher_probs.detach().float().reshape(2, batch, -1)
    q_log_q = torch.xlogy(q, q)  # 0 log 0 = 0 (one-hot targets)
    log_p = F.log_softmax(student_logits.detach().float() / student_temp, dim=-1).reshape(n_crops, batch, -1)
    h = -q_log_q.sum(dim=-1).mean()
    kls = [(q_log_q[iq] - q[iq] * log_p[v]).sum(dim=-1).mean() for iq, v in view_pairs(n_crops)]
    return float(h), float(torch.stack(kls).mean())


@torch.no_grad()
def teacher_entropy(teacher_probs: torch.Tensor) -> float:
    """h(P_t): mean over the (2B, K) target rows of -sum_k q log q, in nats (0 log 0 = 0)."""
    q = teacher_probs.detach().float()
    return float(-torch.xlogy(q, q).sum(dim=-1).mean())


def kl_from_cross_entropy(cross_entropy: float, entropy: float) -> float:
    """KL(P_t || P_s) averaged over the loss's view pairs, from the DINO loss value and h(P_t).

    The loss is the mean over pairs (iq, v) of H(P_t(iq), P_s(v)) = h(P_t(iq)) + KL(P_t(iq) || P_s(v)),
    and each teacher view enters n_crops - 1 pairs, so the pairs' mean h is the rows' mean h and
    KL = loss - h: no second pass over the student's (n_crops B, K) log-probabilities (``entropy_and_kl``
    computes both terms explicitly; the tests check that they agree).
    """
    return float(cross_entropy) - float(entropy)
