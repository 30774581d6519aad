"""DINO's Vision Transformers (ViT-T/S/B, DeiT-S) on timm's ``VisionTransformer``.

Structure (dino_reference.md section 2): conv patch embedding (kernel = stride = patch), a
learnable [CLS] token, learnable position embeddings for the build-time grid, pre-norm blocks
(LN -> MHSA -> residual, LN -> MLP(GELU, ratio 4) -> residual) with qkv bias, LayerNorm eps 1e-6,
a final LayerNorm; the pooled feature is the normalised [CLS] token. Block i drops its residual
branches with rate linspace(0, drop_path_rate, depth)[i] (timm's rule, the same as DINO's).

Differences handled here rather than in timm:

- Position embeddings for another grid (local crops) are resized exactly as DINO's
  ``interpolate_pos_encoding``: bicubic, no anti-aliasing, scale factor ``(h + 0.1) / h0``
  (timm's own resize uses anti-aliasing and an exact size, which differs for down-sampling).
- DINO initialises the [CLS] token with trunc-normal(0.02); timm uses normal(1e-6). Everything
  else in timm's default init already matches DINO (trunc-normal(0.02) Linear weights, zero
  biases, LayerNorm 1/0, trunc-normal(0.02) pos_embed, PyTorch's default patch-conv init).
- ``get_last_selfattention`` computes softmax(q k^T * d^-1/2) explicitly from the last block's
  qkv projection; training keeps timm's fused attention kernel.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import timm
import torch
import torch.nn.functional as F
from torch import nn

from .base import Backbone, check_side, reject_unused
from .registry import register_backbone


@dataclass(frozen=True)
class ViTSpec:
    timm_name: str
    embed_dim: int
    depth: int
    num_heads: int
    patch_size: int = 16


def _structure(arch: str, spec: ViTSpec, model_cfg: Any) -> dict:
    """The timm keyword arguments for ``arch`` after ``model_cfg``'s overrides (ValueError if invalid).

    The only place a ViT's defaults (the spec's patch size, width, depth, heads) fill unset knobs.
    """
    reject_unused(ViTBackbone, arch, model_cfg, "a ViT has global attention and a patch stem")
    depths = model_cfg.depths
    if depths is not None and (len(depths) != 1 or int(depths[0]) < 1):
        raise ValueError(f"model.depths={depths!r}: a ViT takes one positive depth, e.g. [12] (model.arch={arch})")
    num_heads = model_cfg.num_heads
    if isinstance(num_heads, list):
        raise ValueError(f"model.num_heads={num_heads!r}: a ViT takes one int (model.arch={arch})")
    patch_size = spec.patch_size if model_cfg.patch_size is None else model_cfg.patch_size
    embed_dim = spec.embed_dim if model_cfg.embed_dim is None else model_cfg.embed_dim
    heads = spec.num_heads if num_heads is None else num_heads
    if heads < 1 or embed_dim % heads:
        raise ValueError(
            f"model.num_heads={heads} must be >= 1 and divide model.embed_dim={embed_dim} (model.arch={arch}; "
            f"heads that fit: {[h for h in range(1, embed_dim + 1) if embed_dim % h == 0 and h <= 64]})"
        )
    return dict(
        patch_size=int(patch_size),
        embed_dim=int(embed_dim),
        depth=int(depths[0]) if depths is not None else spec.depth,
        num_heads=int(heads),
    )


@register_backbone("vit")
class ViTBackbone(Backbone):
    """A timm VisionTransformer behind the backbone contract; ``self.model`` is the timm module."""

    supports_attention = True
    archs = {
        "vit_tiny": ViTSpec("vit_tiny_patch16_224", embed_dim=192, depth=12, num_heads=3),
        "vit_small": ViTSpec("vit_small_patch16_224", embed_dim=384, depth=12, num_heads=6),
        "vit_base": ViTSpec("vit_base_patch16_224", embed_dim=768, depth=12, num_heads=12),
        # DINO's ViT-S is DeiT-S: the same network as vit_small.
        "deit_small": ViTSpec("vit_small_patch16_224", embed_dim=384, depth=12, num_heads=6),
    }

    def __init__(self, model: nn.Module) -> None:
        super().__init__(model.embed_dim)
        self.model = model
        self.patch_size = int(model.patch_embed.patch_size[0])
        self.num_heads = int(model.blocks[-1].attn.num_heads)

    knobs = ("patch_size", "embed_dim", "depths", "num_heads")

    @classmethod
    def resolve(cls, arch: str, model_cfg: Any) -> dict:
        # Every ViT alias is timm's VisionTransformer with the same block recipe: these four values are the network.
        return _structure(arch, cls.archs[arch], model_cfg)

    @classmethod
    def multiple(cls, structure: dict) -> int:
        return structure["patch_size"]

    @classmethod
    def create(cls, arch: str, structure: dict, image_size: int, drop_path_rate: float) -> "ViTBackbone":
        model = timm.create_model(
            cls.archs[arch].timm_name,
            pretrained=False,
            num_classes=0,
            img_size=image_size,  # position embeddings for the global-crop grid
            dynamic_img_size=True,  # any crop whose sides are patch multiples
            global_pool="token",
            class_token=True,
            qkv_bias=True,
            drop_path_rate=drop_path_rate,
            **structure,
        )
        nn.init.trunc_normal_(model.cls_token, std=0.02, a=-2.0, b=2.0)  # DINO's [CLS] init
        return cls(model)

    # --- forward ------------------------------------------------------------------------------

    def interpolate_pos_encoding(self, grid_h: int, grid_w: int) -> torch.Tensor:
        """Position embeddings for a (grid_h, grid_w) patch grid: (1, 1 + grid_h * grid_w, D).

        DINO: the [CLS] entry is kept, the patch entries are resized from the build grid
        (h0, w0) with bicubic interpolation at scale ((grid_h + 0.1) / h0, (grid_w + 0.1) / w0);
        the 0.1 keeps floor(h0 * scale) == grid_h despite rounding (DINO issue #8).
        """
        pos = self.model.pos_embed  # (1, 1 + h0*w0, D)
        h0, w0 = self.model.patch_embed.grid_size
        if (grid_h, grid_w) == (h0, w0):
            return pos
        dim = pos.shape[-1]
        patch_pos = pos[:, 1:].reshape(1, h0, w0, dim).permute(0, 3, 1, 2)  # (1, D, h0, w0)
        patch_pos = F.interpolate(
            patch_pos.float(),
            scale_factor=((grid_h + 0.1) / h0, (grid_w + 0.1) / w0),
            mode="bicubic",
            align_corners=False,
        ).to(pos.dtype)
        if patch_pos.shape[-2:] != (grid_h, grid_w):  # cannot happen for integer grids; guards the 0.1 trick
            raise RuntimeError(f"position embedding resized to {tuple(patch_pos.shape[-2:])}, wanted {(grid_h, grid_w)}")
        patch_pos = patch_pos.permute(0, 2, 3, 1).reshape(1, grid_h * grid_w, dim)
        return torch.cat([pos[:, :1], patch_pos], dim=1)

    def prepare_tokens(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) -> [CLS] + patch tokens with position embeddings, (B, 1 + N, D), N = HW / p^2."""
        m = self.model
        batch, _, height, width = x.shape
        for side in (height, width):
            check_side(self.family, side, self.patch_size, "an input side (whole patches: the patch size)")
        x = m.patch_embed(x)  # (B, h, w, D): dynamic_img_size keeps the grid
        grid_h, grid_w = x.shape[1], x.shape[2]
        x = torch.cat([m.cls_token.expand(batch, -1, -1), x.flatten(1, 2)], dim=1)
        x = m.pos_drop(x + self.interpolate_pos_encoding(grid_h, grid_w))
        return m.norm_pre(m.patch_drop(x))

    def forward_features(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, 3, H, W) -> (normalised [CLS] (B, D), normalised patch tokens (B, N, D))."""
        x = self.model.norm(self.model.blocks(self.prepare_tokens(x)))
        return x[:, 0], x[:, 1:]

    def get_intermediate_layers(self, x: torch.Tensor, n: int = 1) -> list[torch.Tensor]:
        """The outputs of the last ``n`` blocks, each through the final LayerNorm: n x (B, 1 + N, D)."""
        depth = len(self.model.blocks)
        if not 1 <= n <= depth:
            raise ValueError(f"n must be in 1..{depth} (the number of blocks), got {n}")
        x = self.prepare_tokens(x)
        outputs = []
        for i, block in enumerate(self.model.blocks):
            x = block(x)
            if i >= depth - n:
                outputs.append(self.model.norm(x))
        return outputs

    def get_last_selfattention(self, x: torch.Tensor) -> torch.Tensor:
        """Attention weights of the last block, softmax(q k^T / sqrt(d_head)): (B, heads, 1 + N, 1 + N).

        Computed explicitly from the block's LayerNorm and qkv projection (the fused kernel used
        in training never materialises the weights); rows sum to 1, row 0 is the [CLS] query.
        """
        x = self.prepare_tokens(x)
        for block in self.model.blocks[:-1]:
            x = block(x)
        last = self.model.blocks[-1]
        attn = last.attn
        h = last.norm1(x)
        batch, n_tokens, _ = h.shape
        qkv = attn.qkv(h).reshape(batch, n_tokens, 3, attn.num_heads, attn.head_dim).permute(2, 0, 3, 1, 4)
        q, k = attn.q_norm(qkv[0]), attn.k_norm(qkv[1])  # (B, heads, 1 + N, d_head); norms are Identity here
        logits = (q * attn.scale) @ k.transpose(-2, -1)
        return logits.softmax(dim=-1)

