"""Self-supervised objectives: DINO cross-entropy with centering, its Table 7 variants, EsViT's region loss."""

from .diagnostics import entropy_and_kl
from .dino import CENTERINGS, DINOLoss, LossOutput, view_pairs
from .region import RegionLoss
from .sinkhorn import sinkhorn_knopp
from .variants import infonce_loss, mse_loss

__all__ = [
    "CENTERINGS", "DINOLoss", "LossOutput", "RegionLoss", "entropy_and_kl", "infonce_loss", "mse_loss",
    "sinkhorn_knopp", "view_pairs",
]
