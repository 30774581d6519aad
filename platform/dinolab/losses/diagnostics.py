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
