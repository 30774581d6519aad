"""Frozen-backbone feature extraction for the k-NN and linear evaluations.

DINO evaluates the backbone output (the final-norm [CLS] token for a ViT; the pooled feature of
other families) of the *teacher* with no augmentation: the dataset applies the eval transform
(resize, centre crop, normalise) and yields ``(image (3, S, S), label)``.
"""

from __future__ import annotations

import contextlib
import logging

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

log = logging.getLogger(__name__)


def _module_device(module: nn.Module) -> torch.device | None:
    for tensor in list(module.parameters()) + list(module.buffers()):
        return tensor.device
    return None


def _same_device(a: torch.device, b: torch.device) -> bool:
    # "cuda" and "cuda:0" name the same card when the current device is 0.
    if a.type != b.type:
        return False
    if a.type != "cuda":
        return True
    current = torch.cuda.current_device()
    return (a.index if a.index is not None else current) == (b.index if b.index is not None else current)


@torch.no_grad()
def extract_features(
    backbone: nn.Module,
    dataset: Dataset,
    batch_size: int = 256,
    device: str | torch.device = "cpu",
    num_workers: int = 0,
    autocast: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Run ``backbone`` over ``dataset`` in eval mode and return its pooled features.

    Args:
        backbone: maps images (B, 3, S, S) to features (B, D); must already live on ``device``.
        dataset: yields ``(image tensor (3, S, S), int label)`` in a fixed order.
        batch_size: images per forward pass.
        device: where the forward runs ("cpu", "cuda", "cuda:N").
        num_workers: DataLoader worker processes.
        autocast: run the forward under bf16 autocast (CUDA only; ignored on CPU).

    Returns:
        ``(feats (N, D) float32 on CPU, labels (N,) int64 on CPU)`` in dataset order.

    The backbone's train/eval mode is restored afterwards. ``torch.no_grad`` is used rather than
    ``inference_mode`` so that the returned tensors can feed the linear probe's autograd.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if len(dataset) == 0:  # type: ignore[arg-type]
        raise ValueError("extract_features: the dataset is empty")
    device = torch.device(device)
    model_device = _module_device(backbone)
    if model_device is not None and not _same_device(model_device, device):
        raise ValueError(f"extract_features: the backbone is on {model_device} but device={device}; move it first")
    use_autocast = autocast and device.type == "cuda"
    loader = DataLoader(
        dataset, batch_size=batch_size, shuffle=False, drop_last=False, num_workers=num_workers,
        pin_memory=device.type == "cuda",
    )

    was_training = backbone.training
    backbone.eval()
    feats, labels = [], []
    try:
        for images, targets in loader:
            images = images.to(device, non_blocking=True)
            amp = torch.autocast("cuda", dtype=torch.bfloat16) if use_autocast else contextlib.nullcontext()
            with amp:
                out = backbone(images)  # (B, D)
            if out.dim() != 2:
                raise ValueError(f"extract_features: the backbone must return (B, D) features, got shape {tuple(out.shape)}")
            feats.append(out.float().cpu())
            labels.append(torch.as_tensor(targets, dtype=torch.long).reshape(-1).cpu())
    finally:
        backbone.train(was_training)
    feats_t, labels_t = torch.cat(feats), torch.cat(labels)
    log.debug("extracted %d features of dim %d", feats_t.shape[0], feats_t.shape[1])
    return feats_t, labels_t
