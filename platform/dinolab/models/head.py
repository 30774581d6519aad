"""The DINO projection head (dino_reference.md section 3; paper section 3.1 and Appendix C).

    z = MLP(x)                        (B, in_dim) -> (B, bottleneck_dim)
    z = P(z)                          optional predictor (Table 7, BYOL-like), student only
    u = z / ||z||_2                   the l2 bottleneck
    y = W u,  W_k = g_k v_k / ||v_k||  weight-normalised prototypes, no bias: (B, out_dim)

MLP with ``nlayers`` Linear layers: Linear(in, hidden) -> GELU -> [Linear(hidden, hidden) -> GELU]
x (nlayers - 2) -> Linear(hidden, bottleneck); one layer is Linear(in, bottleneck). No BatchNorm by
default (the paper's system is BN-free); ``use_bn`` puts a BatchNorm1d after each hidden Linear,
before its GELU (the reference code's ``use_bn_in_head``, Appendix C's "heads w/ BN" row). Linear
weights trunc-normal(0.02), biases 0. The gains g start at 1 and are frozen when ``norm_last_layer``
(then every prototype row has unit norm); the directions v keep PyTorch's default Linear init.

The predictor is built only for the student (``predictor=True``); the teacher's head is built
with ``predictor=False``, so the student has extra ``head.predictor.*`` parameters that the
teacher's EMA must skip.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


def _mlp(in_dim: int, hidden_dim: int, out_dim: int, nlayers: int, use_bn: bool = False) -> nn.Sequential:
    if nlayers == 1:
        return nn.Sequential(nn.Linear(in_dim, out_dim))

    def hidden(width_in: int) -> list[nn.Module]:
        # Linear -> [BatchNorm1d over the batch of all crops] -> GELU
        return [nn.Linear(width_in, hidden_dim)] + ([nn.BatchNorm1d(hidden_dim)] if use_bn else []) + [nn.GELU()]

    layers: list[nn.Module] = hidden(in_dim)
    for _ in range(nlayers - 2):
        layers += hidden(hidden_dim)
    layers.append(nn.Linear(hidden_dim, out_dim))
    return nn.Sequential(*layers)


class WeightNormLinear(nn.Module):
    """y = x W^T without bias, W = g * v / ||v|| row-wise (Salimans & Kingma weight norm, dim 0).

    Parameters ``weight_g`` (out, 1) and ``weight_v`` (out, in), as torch's ``weight_norm`` names them.
    """

    def __init__(self, in_dim: int, out_dim: int) -> None:
        super().__init__()
        self.weight_v = nn.Parameter(torch.empty(out_dim, in_dim))
        self.weight_g = nn.Parameter(torch.ones(out_dim, 1))
        nn.init.kaiming_uniform_(self.weight_v, a=math.sqrt(5))  # nn.Linear's default init of the direction

    @property
    def weight(self) -> torch.Tensor:
        """The effective (out, in) matrix, g * v / ||v|| per row: torch's fused weight-norm kernel (the op
        behind ``nn.utils.weight_norm``), whose backward is one pass instead of autograd through div and mul."""
        return torch._weight_norm(self.weight_v, self.weight_g, 0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight)

    def extra_repr(self) -> str:
        return f"in_features={self.weight_v.shape[1]}, out_features={self.weight_v.shape[0]}, bias=False"


class DINOHead(nn.Module):
    """(B, in_dim) -> (B, out_dim) logits; see the module docstring for the equations."""

    def __init__(
        self,
        in_dim: int,
        out_dim: int,
        hidden_dim: int = 2048,
        bottleneck_dim: int = 256,
        nlayers: int = 3,
        norm_last_layer: bool = True,
        predictor: bool = False,
        use_bn: bool = False,
    ) -> None:
        super().__init__()
        if nlayers < 1:
            raise ValueError(f"nlayers must be >= 1 (dino.head_layers), got {nlayers}")
        for name, value in (("in_dim", in_dim), ("out_dim", out_dim), ("hidden_dim", hidden_dim), ("bottleneck_dim", bottleneck_dim)):
            if value < 1:
                raise ValueError(f"{name} must be >= 1, got {value}")
        self.mlp = _mlp(in_dim, hidden_dim, bottleneck_dim, nlayers, use_bn)
        self.predictor = _mlp(bottleneck_dim, hidden_dim, bottleneck_dim, 2, use_bn) if predictor else None
        self.apply(self._init_linear)
        self.last_layer = WeightNormLinear(bottleneck_dim, out_dim)
        self.last_layer.weight_g.requires_grad_(not norm_last_layer)

    @staticmethod
    def _init_linear(module: nn.Module) -> None:
        if isinstance(module, nn.Linear):
            nn.init.trunc_normal_(module.weight, std=0.02, a=-2.0, b=2.0)
            nn.init.zeros_(module.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = self.mlp(x)  # (B, bottleneck)
        if self.predictor is not None:
            z = self.predictor(z)
        z = F.normalize(z, dim=-1, p=2)  # unit rows; eps 1e-12 as DINO
        return self.last_layer(z)  # (B, out_dim)
