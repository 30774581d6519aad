"""MultiCropNetwork: batching by resolution equals running each crop on its own; one backbone pass per group."""

import pytest
import torch

from dinolab.config.schema import ModelConfig
from dinolab.models.head import DINOHead
from dinolab.models.multicrop import MultiCropNetwork, resolution_groups
from dinolab.models.registry import build_backbone

B, K = 3, 16
CONFIGS = {
    "vit": (ModelConfig(arch="vit_small", patch_size=4, embed_dim=32, depths=[2], num_heads=2), "patch_embed"),
    "swin": (
        ModelConfig(arch="swin_tiny", patch_size=2, window_size=4, embed_dim=24, depths=[1, 1, 1], num_heads=[2, 4, 8]),
        "patch_embed",
    ),
}


def make(family: str, dense: bool = True) -> tuple[MultiCropNetwork, torch.nn.Module]:
    torch.manual_seed(0)
    cfg, stem = CONFIGS[family]
    backbone = build_backbone(cfg, image_size=32, drop_path_rate=0.0)
    head = DINOHead(backbone.embed_dim, K, hidden_dim=24, bottleneck_dim=8)
    dense_head = DINOHead(backbone.embed_dim, K, hidden_dim=24, bottleneck_dim=8) if dense else None
    net = MultiCropNetwork(backbone, head, dense_head=dense_head).double().eval()
    return net, getattr(backbone.model, stem)


def crops(sizes):
    return [torch.randn(B, 3, s, s, dtype=torch.float64) for s in sizes]


def test_resolution_groups_are_consecutive_runs():
    shapes = [32, 32, 16, 16, 16, 32, 16]
    assert resolution_groups(crops(shapes)) == [(0, 2), (2, 5), (5, 6), (6, 7)]
    assert resolution_groups(crops([16])) == [(0, 1)]


@pytest.mark.parametrize("family", ["vit", "swin"])
def test_batched_forward_equals_each_crop_alone(family):
    net, _ = make(family)
    views = crops([32, 32, 16, 16, 16])
    out = net(views, with_tokens=True)
    n = len(views)
    assert out.logits.shape == (n * B, K) and out.pooled.shape == (n * B, net.backbone.embed_dim)

    # independent formulation: every crop through backbone and heads on its own, stacked crop-major
    for c, view in enumerate(views):
        pooled, tokens = net.backbone.forward_features(view)
        rows = slice(c * B, (c + 1) * B)
        torch.testing.assert_close(out.pooled[rows], pooled)
        torch.testing.assert_close(out.logits[rows], net.head(pooled))
        torch.testing.assert_close(out.tokens[c], tokens)
        region = torch.stack([net.dense_head(tokens[b]) for b in range(B)])  # head on every token
        torch.testing.assert_close(out.region_logits[c], region)
        assert out.region_logits[c].shape == (B, tokens.shape[1], K)
    assert out.logits.chunk(n)[3].shape == (B, K)


@pytest.mark.parametrize(
    "sizes, expected_batches",
    [([32, 32, 16, 16, 16, 16], [2 * B, 4 * B]), ([32, 16, 32], [B, B, B]), ([16], [B])],
)
def test_one_backbone_pass_per_resolution_group(sizes, expected_batches):
    net, stem = make("vit")
    batches = []
    hook = stem.register_forward_hook(lambda mod, inp, out: batches.append(inp[0].shape[0]))
    head_calls = []
    head_hook = net.head.register_forward_hook(lambda mod, inp, out: head_calls.append(inp[0].shape[0]))
    dense_calls = []
    dense_hook = net.dense_head.register_forward_hook(lambda mod, inp, out: dense_calls.append(inp[0].shape[0]))
    net(crops(sizes), with_tokens=True)
    for h in (hook, head_hook, dense_hook):
        h.remove()
    assert batches == expected_batches
    assert head_calls == [len(sizes) * B]  # the head runs once on everything
    assert len(dense_calls) == 1


def test_without_tokens_or_dense_head():
    net, _ = make("vit", dense=False)
    out = net(crops([32, 16]))
    assert out.tokens is None and out.region_logits is None
    out = net(crops([32, 16]), with_tokens=True)
    assert [t.shape for t in out.tokens] == [(B, 64, 32), (B, 16, 32)] and out.region_logits is None


def test_gradients_reach_backbone_and_heads():
    net, _ = make("vit")
    net.train()
    out = net(crops([32, 32, 16]), with_tokens=True)
    (out.logits.pow(2).mean() + sum(r.pow(2).mean() for r in out.region_logits)).backward()
    for name, module in (("backbone", net.backbone), ("head", net.head.mlp), ("dense", net.dense_head.mlp)):
        assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in module.parameters()), name


def test_invalid_crops():
    net, _ = make("vit", dense=False)
    with pytest.raises(ValueError):
        net([])
    with pytest.raises(ValueError, match="same B"):
        net([torch.randn(2, 3, 32, 32, dtype=torch.float64), torch.randn(3, 3, 16, 16, dtype=torch.float64)])
