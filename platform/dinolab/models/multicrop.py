"""The multi-crop forward (dino_reference.md section 4; DINO ``utils.py::MultiCropWrapper``).

Crops arrive as a list ``[global_1, global_2, local_1, ..., local_n]`` of (B, 3, S_i, S_i).
Consecutive crops of the same resolution are concatenated along the batch and go through the
backbone in one pass per such group (2 global crops: one pass; all local crops: one pass), so
batch-dependent layers see all crops of a resolution at once, as in DINO. The head then runs
once on every pooled feature. Outputs are crop-major: rows [c*B, (c+1)*B) belong to crop c, so
``logits.chunk(n_crops)`` gives per-crop blocks.

EsViT's region branch: with ``with_tokens`` the last-stage tokens of every crop are returned,
and a ``dense_head`` (a second DINOHead) is applied to every token of every crop, again in one call.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
from torch import nn


@dataclass
class MultiCropOutput:
    logits: torch.Tensor  # (n_crops * B, K), crop-major
    pooled: torch.Tensor  # (n_crops * B, D), crop-major
    tokens: Optional[list[torch.Tensor]]  # per crop (B, N_c, D), with_tokens only
    region_logits: Optional[list[torch.Tensor]]  # per crop (B, N_c, K), with_tokens and a dense head only


def resolution_groups(crops: list[torch.Tensor]) -> list[tuple[int, int]]:
    """[start, end) index ranges of consecutive crops with the same (H, W)."""
    groups: list[tuple[int, int]] = []
    start = 0
    for i in range(1, len(crops) + 1):
        if i == len(crops) or crops[i].shape[-2:] != crops[start].shape[-2:]:
            groups.append((start, i))
            start = i
    return groups


class MultiCropNetwork(nn.Module):
    """backbone + head (+ optional dense head) over a list of crops; see the module docstring."""

    def __init__(self, backbone: nn.Module, head: nn.Module, dense_head: Optional[nn.Module] = None) -> None:
        super().__init__()
        self.backbone = backbone
        self.head = head
        self.dense_head = dense_head

    def forward(self, crops: list[torch.Tensor], with_tokens: bool = False) -> MultiCropOutput:
        if isinstance(crops, torch.Tensor):
            crops = [crops]
        if len(crops) == 0:
            raise ValueError("crops must hold at least one (B, 3, S, S) tensor")
        batch = crops[0].shape[0]
        if any(c.ndim != 4 or c.shape[0] != batch for c in crops):
            raise ValueError(f"every crop must be (B, 3, S, S) with the same B; got {[tuple(c.shape) for c in crops]}")

        pooled_parts: list[torch.Tensor] = []
        tokens: list[torch.Tensor] = []
        for start, end in resolution_groups(crops):
            pooled, group_tokens = self.backbone.forward_features(torch.cat(crops[start:end]))  # one pass per group
            pooled_parts.append(pooled)
            if with_tokens:
                tokens.extend(group_tokens.split(batch))  # (B, N_c, D) per crop, crop-major
        pooled = torch.cat(pooled_parts)  # (n_crops * B, D)
        logits = self.head(pooled)

        region_logits = None
        if with_tokens and self.dense_head is not None:
            flat = torch.cat([t.reshape(-1, t.shape[-1]) for t in tokens])  # (sum_c B * N_c, D)
            region = self.dense_head(flat).split([t.shape[0] * t.shape[1] for t in tokens])
            region_logits = [r.reshape(t.shape[0], t.shape[1], -1) for r, t in zip(region, tokens)]
        return MultiCropOutput(logits=logits, pooled=pooled, tokens=tokens if with_tokens else None, region_logits=region_logits)
