"""Self-attention maps of the last block's [CLS] token, and how well they segment the object
(DINO Figures 1, 3 and 4).

For a ViT with patch p on an S x S image, the [CLS] row of the last block's attention,
``A[:, h, 0, 1:]``, is a map over the (S/p) x (S/p) patch grid per head h. The paper's Figure 4
keeps, per head, the smallest set of patches that holds ``mass`` (60%) of that head's attention
(sort descending, cumulative sum), upsamples it to pixels, and reports the Jaccard similarity
|A n M| / |A u M| with the object mask M: for the best head and the mean over heads.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from dinolab.track.contract import ATTN_JACCARD_BEST_HEAD, ATTN_JACCARD_MEAN_HEAD


@torch.no_grad()
def cls_attention(backbone, images: torch.Tensor) -> torch.Tensor:
    """(B, 3, S, S) images -> (B, heads, g, g) [CLS] attention over the g x g patch grid."""
    was_training = backbone.training
    backbone.eval()
    try:
        attn = backbone.get_last_selfattention(images)  # (B, heads, 1 + N, 1 + N)
    finally:
        backbone.train(was_training)
    b, heads, n = attn.shape[0], attn.shape[1], attn.shape[-1] - 1
    grid = int(round(n**0.5))
    return attn[:, :, 0, 1:].reshape(b, heads, grid, grid)


def keep_mass(attn: torch.Tensor, mass: float = 0.6) -> torch.Tensor:
    """Boolean mask of the smallest set of cells holding ``mass`` of each map's total.

    attn: (..., H, W) non-negative. A cell is kept when the cumulative sum of the cells ranked
    above it (in descending order) is still below ``mass`` of the total, so the kept set is the
    minimal prefix whose sum reaches ``mass``.
    """
    shape = attn.shape
    flat = attn.reshape(-1, shape[-2] * shape[-1]).float()
    values, order = flat.sort(dim=-1, descending=True)
    cum = values.cumsum(-1) / values.sum(-1, keepdim=True).clamp_min(1e-12)
    before = cum - values / values.sum(-1, keepdim=True).clamp_min(1e-12)
    keep_sorted = before < mass
    keep = torch.zeros_like(keep_sorted)
    keep.scatter_(-1, order, keep_sorted)
    return keep.reshape(shape)


def jaccard(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Jaccard index over the last two dims of boolean masks -> (...,)."""
    inter = (pred & target).sum((-2, -1)).float()
    union = (pred | target).sum((-2, -1)).float()
    return torch.where(union > 0, inter / union.clamp_min(1), torch.ones_like(inter))


def attention_jaccard(maps: torch.Tensor, masks: torch.Tensor, mass: float = 0.6) -> dict[str, float]:
    """maps (B, heads, g, g), masks (B, S, S) bool -> {"best_head", "mean_head"} in percent.

    Each head's kept set is upsampled (nearest) to the mask's resolution; the Jaccard is averaged
    over images per head; best_head is the head with the highest mean, mean_head the mean over heads.
    """
    kept = keep_mass(maps, mass)  # (B, heads, g, g)
    up = F.interpolate(kept.float(), size=masks.shape[-2:], mode="nearest") > 0.5
    per = jaccard(up, masks[:, None].bool())  # (B, heads)
    per_head = per.mean(0)
    return {"best_head": 100.0 * float(per_head.max()), "mean_head": 100.0 * float(per_head.mean())}


def attention_figure(images: torch.Tensor, maps: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> np.ndarray:
    """A uint8 (rows*S, (1+heads)*S, 3) picture: each row an image followed by its heads' maps."""
    b, heads, g, _ = maps.shape
    s = images.shape[-1]
    pics = images.detach().cpu().float() * torch.tensor(std)[:, None, None] + torch.tensor(mean)[:, None, None]
    pics = (pics.clamp(0, 1) * 255).byte().permute(0, 2, 3, 1)  # (B, S, S, 3)
    m = F.interpolate(maps.float(), size=(s, s), mode="nearest")
    lo = m.amin((-2, -1), keepdim=True)
    hi = m.amax((-2, -1), keepdim=True)
    m = ((m - lo) / (hi - lo).clamp_min(1e-12) * 255).byte()  # (B, heads, S, S)
    rows = []
    for i in range(b):
        cells = [pics[i]] + [m[i, h][..., None].expand(s, s, 3) for h in range(heads)]
        rows.append(torch.cat(cells, dim=1))
    return torch.cat(rows, dim=0).numpy()


def evaluate_attention(backbone, dataset, count: int = 32, mass: float = 0.6):
    """Attention maps (and, where the data set knows object masks, their Jaccard) on ``count``
    fixed held-out images of ``dataset`` (an eval-transformed view with ``.dataset``/``.indices``
    or a plain dataset). Returns (metrics in percent, a uint8 figure of the first 8 images)."""
    from dinolab.data.multicrop import IMAGENET_MEAN, IMAGENET_STD

    base = getattr(dataset, "dataset", dataset)
    indices = list(getattr(dataset, "indices", range(len(dataset))))[:count]
    images = torch.stack([base[i][0] for i in indices])
    device = next(backbone.parameters()).device
    maps = cls_attention(backbone, images.to(device)).cpu()
    metrics: dict[str, float] = {}
    if hasattr(base, "mask"):
        masks = torch.stack([torch.as_tensor(np.asarray(base.mask(i))) for i in indices]).bool()
        if masks.shape[-1] == images.shape[-1]:
            j = attention_jaccard(maps, masks, mass)
            metrics = {ATTN_JACCARD_BEST_HEAD: j["best_head"], ATTN_JACCARD_MEAN_HEAD: j["mean_head"]}
    return metrics, attention_figure(images[:8], maps[:8], IMAGENET_MEAN, IMAGENET_STD)
