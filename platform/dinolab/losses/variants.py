"""The DINO paper's Table 7 alternatives to the cross-entropy, over the same view pairs as DINO.

Both take the head outputs as embeddings: student (n_crops*B, K) crop-major, teacher (2B, K) for the
two global crops; the teacher is a stop-gradient target. Pairs: teacher view iq in {0, 1}, student
view v != iq (``dino.view_pairs``); each loss is the mean over those pairs.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ._distributed import all_gather_cat, rank
from .dino import split_batch, view_pairs


def mse_loss(student: torch.Tensor, teacher: torch.Tensor, n_crops: int) -> torch.Tensor:
    """BYOL-like regression: mean over pairs and batch of ||s_v/|s_v| - t_iq/|t_iq|||^2 = 2 - 2 cos(s_v, t_iq)."""
    batch = split_batch(student, teacher, n_crops)
    with torch.autocast(device_type=student.device.type, enabled=False):
        s = F.normalize(student.float(), dim=-1).reshape(n_crops, batch, -1)
        t = F.normalize(teacher.detach().float(), dim=-1).reshape(2, batch, -1)
        terms = [(s[v] - t[iq]).pow(2).sum(dim=-1).mean() for iq, v in view_pairs(n_crops)]
        return torch.stack(terms).mean()


def infonce_loss(student: torch.Tensor, teacher: torch.Tensor, n_crops: int, temperature: float = 0.2) -> torch.Tensor:
    """MoCo v3 contrastive loss: for each pair, queries q = s_v / |s_v| and keys k = t_iq / |t_iq|,
    logits = q k^T / temperature, cross-entropy with the positive key of the same image, times 2 * temperature.

    Negatives are the other images' keys of the batch; under torch.distributed the keys of all workers
    are gathered (as MoCo v3's concat_all_gather), so the negatives are those of the total batch and the
    positive of local query b is key rank*B + b. MoCo v3 sums its two pair terms; here they are averaged
    (with 2 crops: half of MoCo v3's value).
    """
    if temperature <= 0:
        raise ValueError(f"infonce temperature must be > 0, got {temperature}")
    batch = split_batch(student, teacher, n_crops)
    with torch.autocast(device_type=student.device.type, enabled=False):
        q = F.normalize(student.float(), dim=-1).reshape(n_crops, batch, -1)
        k_local = F.normalize(teacher.detach().float(), dim=-1).reshape(2, batch, -1)
        keys = [all_gather_cat(k_local[i]) for i in (0, 1)]  # each (world*B, K)
        labels = torch.arange(batch, device=student.device) + rank() * batch
        terms = [F.cross_entropy(q[v] @ keys[iq].T / temperature, labels) for iq, v in view_pairs(n_crops)]
        return torch.stack(terms).mean() * (2 * temperature)
