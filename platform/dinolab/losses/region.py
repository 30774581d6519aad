"""EsViT's region-level matching loss L_R (Li et al. 2022, Eq. 2; reference section 16).

For a teacher global view t and a student view s != t, every student token i is matched to the
teacher token of view t whose backbone feature is most cosine-similar:
    j*(i) = argmax_j cos(z_s[i], z_t[j])                       (backbone tokens, before any head)
    L_R(s, t) = mean_b mean_i sum_k -P_t[j*(i), k] log P_s[i, k]
    P_t[j] = softmax((h'_t(z_t[j]) - c') / tau_t),  P_s[i] = softmax(h'_s(z_s[i]) / tau_s)
with h' the dense (region) head and c' its own EMA center over all teacher tokens. L_R is the mean
over the 2 (n_crops - 1) pairs; EsViT's total objective is L_V + L_R.
"""

from __future__ import annotations

from typing import Sequence, Union

import torch
import torch.nn.functional as F
from torch import nn

from ._distributed import all_reduce_sum, world_size
from .dino import one_hot_argmax, view_pairs


class RegionLoss(nn.Module):
    """L_R with its own center buffer ``center`` (1, K), zeros at start.

    Args:
        out_dim: K of the region head.
        student_temp: tau_s (EsViT: 0.1, as DINO).
        center_momentum: m of the center EMA (0.9, as DINO).
    """

    def __init__(self, out_dim: int, student_temp: float = 0.1, center_momentum: float = 0.9):
        super().__init__()
        if student_temp <= 0:
            raise ValueError(f"student_temp must be > 0, got {student_temp}")
        if not 0.0 <= center_momentum <= 1.0:
            raise ValueError(f"center_momentum must be in [0, 1], got {center_momentum}")
        self.out_dim = out_dim
        self.student_temp = student_temp
        self.center_momentum = center_momentum
        self.register_buffer("center", torch.zeros(1, out_dim))

    @torch.no_grad()
    def teacher_targets(self, teacher_region_logits: torch.Tensor, teacher_temp: float) -> torch.Tensor:
        """(..., K) raw region logits -> (..., K) float32 centered, sharpened targets; tau_t = 0 -> one-hot."""
        if teacher_temp < 0:
            raise ValueError(f"teacher_temp must be >= 0, got {teacher_temp}")
        logits = teacher_region_logits.detach().float() - self.center
        if teacher_temp == 0:
            return one_hot_argmax(logits)
        return F.softmax(logits / teacher_temp, dim=-1)

    def forward(
        self,
        student_tokens: Sequence[torch.Tensor],
        student_region_logits: Sequence[torch.Tensor],
        teacher_tokens: Sequence[torch.Tensor],
        teacher_region_logits: Sequence[torch.Tensor],
        teacher_temp: float,
    ) -> torch.Tensor:
        """Per crop lists (crop order as the DINO loss, crops 0 and 1 global):

        student_tokens [(B, N_v, D)], student_region_logits [(B, N_v, K)] for all n_crops crops;
        teacher_tokens [(B, N_t, D)], teacher_region_logits [(B, N_t, K)] for the 2 global crops.
        Returns the scalar L_R (it carries the student's graph through the region logits only).
        """
        n_crops = len(student_tokens)
        if len(student_region_logits) != n_crops:
            raise ValueError(f"{n_crops} student token tensors but {len(student_region_logits)} student region logits")
        if len(teacher_tokens) != 2 or len(teacher_region_logits) != 2:
            raise ValueError(
                f"the teacher sees the 2 global crops; got {len(teacher_tokens)} token tensors, {len(teacher_region_logits)} region logits"
            )
        for name, tokens, logits in (
            ("student", student_tokens, student_region_logits),
            ("teacher", teacher_tokens, teacher_region_logits),
        ):
            for c, (z, g) in enumerate(zip(tokens, logits)):
                if z.dim() != 3 or g.dim() != 3 or z.shape[:2] != g.shape[:2] or g.shape[-1] != self.out_dim:
                    raise ValueError(
                        f"{name} crop {c}: tokens {tuple(z.shape)} and region logits {tuple(g.shape)} must be "
                        f"(B, N, D) and (B, N, K={self.out_dim}) with the same B and N"
                    )
        view_pairs(n_crops)  # validates n_crops
        with torch.autocast(device_type=student_tokens[0].device.type, enabled=False):
            targets = [self.teacher_targets(g, teacher_temp) for g in teacher_region_logits]  # 2 x (B, N_t, K)
            teacher_dirs = [F.normalize(z.detach().float(), dim=-1) for z in teacher_tokens]  # 2 x (B, N_t, D)
            terms = []
            for s in range(n_crops):
                # matching is an argmax, so it needs no gradient
                student_dirs = F.normalize(student_tokens[s].detach().float(), dim=-1)  # (B, N_s, D)
                log_p = F.log_softmax(student_region_logits[s].float() / self.student_temp, dim=-1)  # (B, N_s, K)
                for t in (0, 1):
                    if t == s:  # a view is never matched with itself
                        continue
                    match = torch.bmm(student_dirs, teacher_dirs[t].transpose(1, 2)).argmax(dim=-1)  # (B, N_s)
                    matched = torch.gather(targets[t], 1, match.unsqueeze(-1).expand(-1, -1, self.out_dim))  # (B, N_s, K)
                    terms.append(-(matched * log_p).sum(dim=-1).mean())
            loss = torch.stack(terms).mean()
        return loss

    @torch.no_grad()
    def update_center(self, teacher_region_logits: Union[torch.Tensor, Sequence[torch.Tensor]]) -> None:
        """c' <- m c' + (1 - m) * mean over every teacher token of every worker of the raw region logits.

        Accepts the per-crop list [(B, N_t, K)] or one tensor (..., K). Workers must hold equal token counts.
        """
        if isinstance(teacher_region_logits, torch.Tensor):
            teacher_region_logits = [teacher_region_logits]
        flat = torch.cat([g.detach().float().reshape(-1, self.out_dim) for g in teacher_region_logits], dim=0)
        batch_center = all_reduce_sum(flat.sum(dim=0, keepdim=True)) / (flat.shape[0] * world_size())
        self.center.mul_(self.center_momentum).add_(batch_center, alpha=1.0 - self.center_momentum)
