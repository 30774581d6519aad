"""Backbone registry and families: shapes on mixed crop sizes, input multiples, and the ViT math
(attention maps, a block, intermediate layers, position-embedding resizing) recomputed by hand."""

import math

import pytest
import torch
import torch.nn.functional as F

from dinolab.config.schema import ModelConfig
from dinolab.models.registry import build_backbone, family_of, input_multiple, list_backbones, resolve_arch

B = 2

# Tiny overrides per family (every alias of a family gets the same tiny structure).
TINY = {
    "vit": dict(patch_size=4, embed_dim=32, depths=[2], num_heads=2),
    "swin": dict(patch_size=2, window_size=4, embed_dim=48, depths=[2, 2, 2], num_heads=[3, 6, 12]),
    "resnet": dict(small_stem=True),
}
# Expected pooled width and tokens per side (global 32 px / local 16 px), computed from the structure.
EXPECTED_DIM = {"vit": 32, "swin": 48 * 2**2, "resnet18": 512, "resnet50": 2048}
TOKEN_STRIDE = {"vit": 4, "swin": 2 * 2**2, "resnet": 8}  # small stem: three stride-2 stages


def tiny_cfg(arch: str, **extra) -> ModelConfig:
    return ModelConfig(arch=arch, **{**TINY[family_of(arch)], **extra})


def ln(x, module):
    """LayerNorm by hand: (x - mean) / sqrt(biased var + eps) * w + b."""
    mean = x.mean(-1, keepdim=True)
    var = ((x - mean) ** 2).mean(-1, keepdim=True)
    return (x - mean) / torch.sqrt(var + module.eps) * module.weight + module.bias


def gelu(x):
    return 0.5 * x * (1.0 + torch.erf(x / math.sqrt(2.0)))


@pytest.fixture(scope="module")
def tiny_vit():
    torch.manual_seed(0)
    return build_backbone(tiny_cfg("vit_small"), image_size=32, drop_path_rate=0.0).double().eval()


# ----------------------------------------------------------------------------- registry


def test_aliases_and_families():
    names = list_backbones()
    for alias in ("vit_tiny", "vit_small", "vit_base", "deit_small", "resnet18", "resnet50", "swin_tiny", "swin_small", "swin_base"):
        assert alias in names
    assert family_of("vit_small") == "vit" and family_of("deit_small") == "vit"
    assert family_of("swin_base") == "swin" and family_of("resnet50") == "resnet"
    assert family_of("convnext_atto") == "timm"
    assert resolve_arch("vit_small") == "vit_small_patch16_224" == resolve_arch("deit_small")
    assert resolve_arch("convnext_atto") == "convnext_atto"


def test_unknown_arch_lists_aliases_and_timm():
    with pytest.raises(ValueError) as e:
        resolve_arch("vit_smol")
    msg = str(e.value)
    assert "vit_small" in msg and "swin_tiny" in msg and "resnet50" in msg and "timm" in msg
    with pytest.raises(ValueError):
        input_multiple(ModelConfig(arch="vit_smol"))


@pytest.mark.parametrize(
    "arch, width, depth, heads",
    [("vit_tiny", 192, 12, 3), ("vit_small", 384, 12, 6), ("vit_base", 768, 12, 12), ("deit_small", 384, 12, 6)],
)
def test_vit_alias_structures(arch, width, depth, heads):
    from dinolab.models.vit import ViTBackbone

    spec = ViTBackbone.archs[arch]
    assert (spec.embed_dim, spec.depth, spec.num_heads, spec.patch_size) == (width, depth, heads, 16)


def test_input_multiples():
    assert input_multiple(ModelConfig(arch="vit_small", patch_size=16)) == 16
    assert input_multiple(ModelConfig(arch="vit_small", patch_size=8)) == 8
    assert input_multiple(ModelConfig(arch="vit_small", patch_size=5)) == 5
    assert input_multiple(tiny_cfg("swin_tiny")) == 2 * 2**2
    assert input_multiple(ModelConfig(arch="swin_tiny", patch_size=4)) == 4 * 2**3  # EsViT: 224 and 96 both fit
    assert input_multiple(ModelConfig(arch="swin_base", patch_size=4, window_size=14)) == 32
    assert input_multiple(ModelConfig(arch="resnet50")) == 1
    assert input_multiple(ModelConfig(arch="vit_tiny_patch16_224")) == 16  # generic timm: its own patch
    assert input_multiple(ModelConfig(arch="convnext_atto")) == 1


@pytest.mark.parametrize(
    "cfg",
    [
        dict(arch="vit_small", window_size=7),
        dict(arch="vit_small", depths=[2, 2]),
        dict(arch="vit_small", num_heads=[2, 4]),
        dict(arch="vit_small", embed_dim=30, num_heads=4),
        dict(arch="swin_tiny", num_heads=3),
        dict(arch="swin_tiny", depths=[2, 2], num_heads=[3, 6, 12]),
        dict(arch="swin_tiny", small_stem=True),
        dict(arch="resnet18", num_heads=4),
        dict(arch="resnet18", depths=[2, 2]),
        dict(arch="resnet18", depths=[2, 2, 0, 2]),
        dict(arch="convnext_atto", small_stem=True),
    ],
)
def test_overrides_that_do_not_apply_are_rejected(cfg):
    with pytest.raises(ValueError, match="model\\."):
        input_multiple(ModelConfig(**cfg))


def test_build_rejects_image_size_off_the_multiple():
    with pytest.raises(ValueError, match="multiple of 4"):
        build_backbone(tiny_cfg("vit_small"), image_size=30, drop_path_rate=0.0)
    with pytest.raises(ValueError, match="multiple of 8"):
        build_backbone(tiny_cfg("swin_tiny"), image_size=36, drop_path_rate=0.0)


def test_nothing_is_downloaded(monkeypatch):
    import timm.models._builder as builder

    def refuse(*args, **kwargs):
        raise AssertionError("pretrained weights requested")

    monkeypatch.setattr(builder, "load_pretrained", refuse)
    monkeypatch.setattr(builder, "load_custom_pretrained", refuse)
    build_backbone(tiny_cfg("vit_small"), 32, 0.0)
    build_backbone(tiny_cfg("swin_tiny"), 32, 0.0)


# ----------------------------------------------------------------------------- every alias, mixed crops


@pytest.mark.parametrize("arch", list_backbones())
def test_every_backbone_handles_global_and_local_crops(arch):
    torch.manual_seed(0)
    family = family_of(arch)
    backbone = build_backbone(tiny_cfg(arch), image_size=32, drop_path_rate=0.1)
    dim = EXPECTED_DIM.get(arch, EXPECTED_DIM.get(family))
    assert backbone.embed_dim == dim and backbone.family == family
    assert backbone.supports_attention == (family == "vit")
    backbone.train()
    for size in (32, 16):
        x = torch.randn(B, 3, size, size)
        pooled, tokens = backbone.forward_features(x)
        side = size // TOKEN_STRIDE[family]
        assert pooled.shape == (B, dim)
        assert tokens.shape == (B, side * side, dim)
        assert torch.isfinite(pooled).all() and torch.isfinite(tokens).all()
    assert backbone.eval()(x).shape == (B, dim)
    pooled.sum().backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in backbone.parameters())


@pytest.mark.parametrize("arch", ["swin_tiny", "resnet18"])
def test_multistage_pooled_is_timm_average_of_last_stage(arch):
    """Pooled = timm's own average pooling head on the final-normed last stage (EsViT / ResNet GAP)."""
    torch.manual_seed(0)
    backbone = build_backbone(tiny_cfg(arch), 32, 0.0).eval()
    x = torch.randn(B, 3, 16, 16)
    pooled, tokens = backbone.forward_features(x)
    reference = backbone.model.forward_head(backbone.model.forward_features(x), pre_logits=True)
    torch.testing.assert_close(pooled, reference)
    torch.testing.assert_close(pooled, tokens.mean(1))


def test_non_vit_has_no_attention_maps():
    backbone = build_backbone(tiny_cfg("swin_tiny"), 32, 0.0)
    with pytest.raises(NotImplementedError):
        backbone.get_last_selfattention(torch.randn(1, 3, 32, 32))


def test_student_and_teacher_have_the_same_state_keys():
    for arch in ("vit_small", "swin_tiny"):
        student = build_backbone(tiny_cfg(arch), 32, 0.1)
        teacher = build_backbone(tiny_cfg(arch), 32, 0.0)
        assert list(student.state_dict()) == list(teacher.state_dict())


def test_resnet_small_stem_and_torchvision_init():
    torch.manual_seed(0)
    backbone = build_backbone(ModelConfig(arch="resnet18", small_stem=True), 32, 0.0)
    conv1 = backbone.model.conv1
    assert conv1.kernel_size == (3, 3) and conv1.stride == (1, 1)
    assert isinstance(backbone.model.maxpool, torch.nn.Identity)
    # torchvision / DINO: the last BN of each residual block starts at 1 (timm would zero it)
    assert torch.all(backbone.model.layer1[0].bn2.weight == 1)
    plain = build_backbone(ModelConfig(arch="resnet18"), 32, 0.0).eval()
    assert plain.model.conv1.kernel_size == (7, 7)
    assert plain.forward_features(torch.randn(1, 3, 32, 32))[1].shape == (1, 1, 512)  # stride 32


def test_swin_input_multiple_is_what_patch_merging_needs():
    """Empirical (timm 1.0.31, strict_img_size=False): a side runs without any padded patch merging
    exactly when it is a multiple of input_multiple = patch * 2**(stages-1)."""
    from timm.models.swin_transformer import PatchMerging

    cfg = tiny_cfg("swin_tiny")
    multiple = input_multiple(cfg)
    backbone = build_backbone(cfg, 32, 0.0).eval()
    seen = []
    hooks = [m.register_forward_pre_hook(lambda mod, inp: seen.append(tuple(inp[0].shape[1:3])))
             for m in backbone.model.modules() if isinstance(m, PatchMerging)]
    with torch.no_grad():
        for size in range(2, 50, 2):  # every multiple of the patch size
            seen.clear()
            backbone.model.forward_features(torch.randn(1, 3, size, size))
            padded = any(h % 2 or w % 2 for h, w in seen)
            assert padded == (size % multiple != 0), size
    for h in hooks:
        h.remove()
    with pytest.raises(ValueError, match="multiple of 8"):
        backbone.forward_features(torch.randn(1, 3, 12, 12))


def test_generic_timm_models():
    torch.manual_seed(0)
    vit = build_backbone(ModelConfig(arch="vit_tiny_patch16_224", embed_dim=32, depths=[1], num_heads=2), 32, 0.1)
    assert vit.family == "timm" and vit.embed_dim == 32
    pooled, tokens = vit.forward_features(torch.randn(B, 3, 32, 32))
    assert pooled.shape == (B, 32) and tokens.shape == (B, 4, 32)  # [CLS] dropped from the tokens
    _, tokens = vit.forward_features(torch.randn(B, 3, 16, 16))
    assert tokens.shape == (B, 1, 32)
    cnn = build_backbone(ModelConfig(arch="mobilenetv3_small_050"), 32, 0.0).eval()
    pooled, tokens = cnn.forward_features(torch.randn(B, 3, 32, 32))
    assert pooled.shape == (B, cnn.embed_dim) and tokens.shape == (B, 1, cnn.token_dim)
    with pytest.raises(ValueError, match="window_size"):
        build_backbone(ModelConfig(arch="mobilenetv3_small_050", window_size=7), 32, 0.0)


# ----------------------------------------------------------------------------- ViT math


def test_vit_matches_timm_forward_at_the_build_size(tiny_vit):
    x = torch.randn(B, 3, 32, 32, dtype=torch.float64)
    reference = tiny_vit.model.forward_head(tiny_vit.model.forward_features(x), pre_logits=True)
    torch.testing.assert_close(tiny_vit(x), reference)


@pytest.mark.parametrize("size", [32, 16])
def test_last_selfattention_and_last_block_by_hand(tiny_vit, size):
    x = torch.randn(B, 3, size, size, dtype=torch.float64)
    last = tiny_vit.model.blocks[-1]
    captured = {}
    hook = last.register_forward_hook(lambda mod, inp, out: captured.update(inp=inp[0], out=out))
    tiny_vit.forward_features(x)  # the fused-attention training path
    hook.remove()
    z, out = captured["inp"], captured["out"]  # (B, 1+N, D)

    heads = 2
    n_tokens, dim = z.shape[1], z.shape[2]
    d_head = dim // heads
    h = ln(z, last.norm1)
    qkv = h @ last.attn.qkv.weight.T + last.attn.qkv.bias  # (B, T, 3D), laid out [q | k | v], heads inside
    q, k, v = qkv[..., :dim], qkv[..., dim:2 * dim], qkv[..., 2 * dim:]
    expected = torch.empty(B, heads, n_tokens, n_tokens, dtype=torch.float64)
    mixed = torch.empty(B, n_tokens, dim, dtype=torch.float64)
    for head in range(heads):
        cols = slice(head * d_head, (head + 1) * d_head)
        scores = q[..., cols] @ k[..., cols].transpose(1, 2) / math.sqrt(d_head)
        weights = torch.exp(scores - scores.max(-1, keepdim=True).values)
        weights = weights / weights.sum(-1, keepdim=True)
        expected[:, head] = weights
        mixed[..., cols] = weights @ v[..., cols]

    attn = tiny_vit.get_last_selfattention(x)
    side = size // 4
    assert attn.shape == (B, heads, 1 + side * side, 1 + side * side)
    torch.testing.assert_close(attn, expected)
    torch.testing.assert_close(attn.sum(-1), torch.ones(B, heads, n_tokens, dtype=torch.float64))

    y = z + mixed @ last.attn.proj.weight.T + last.attn.proj.bias
    hidden = gelu(ln(y, last.norm2) @ last.mlp.fc1.weight.T + last.mlp.fc1.bias)
    y = y + hidden @ last.mlp.fc2.weight.T + last.mlp.fc2.bias
    torch.testing.assert_close(out, y)


def test_intermediate_layers_are_normed_block_outputs(tiny_vit):
    x = torch.randn(B, 3, 16, 16, dtype=torch.float64)
    outs = []
    hooks = [blk.register_forward_hook(lambda mod, inp, out: outs.append(out)) for blk in tiny_vit.model.blocks]
    pooled, tokens = tiny_vit.forward_features(x)
    for h in hooks:
        h.remove()
    layers = tiny_vit.get_intermediate_layers(x, n=2)
    assert len(layers) == 2 and layers[0].shape == (B, 1 + 16, 32)
    for got, block_out in zip(layers, outs):
        torch.testing.assert_close(got, ln(block_out, tiny_vit.model.norm))
    torch.testing.assert_close(layers[-1][:, 0], pooled)
    torch.testing.assert_close(layers[-1][:, 1:], tokens)
    with pytest.raises(ValueError):
        tiny_vit.get_intermediate_layers(x, n=3)


def _cubic_weights(t, a=-0.75):
    """Keys' cubic convolution weights of the taps at distances 1+t, t, 1-t, 2-t."""

    def near(d):
        return (a + 2) * d**3 - (a + 3) * d**2 + 1

    def far(d):
        return a * d**3 - 5 * a * d**2 + 8 * a * d - 4 * a

    return [far(1 + t), near(t), near(1 - t), far(2 - t)]


def _bicubic_by_hand(grid, out_h, out_w):
    """DINO's resize of a (D, h0, w0) grid: scale (out + 0.1) / in, half-pixel centres, edge clamping."""
    _, in_h, in_w = grid.shape

    def resample_1d(values, n_in, n_out, axis):
        scale = (n_out + 0.1) / n_in
        rows = []
        for i in range(n_out):
            src = (i + 0.5) / scale - 0.5
            i0 = math.floor(src)
            weights = _cubic_weights(src - i0)
            acc = 0
            for tap, w in zip(range(i0 - 1, i0 + 3), weights):
                acc = acc + w * values.select(axis, min(max(tap, 0), n_in - 1))
            rows.append(acc)
        return torch.stack(rows, dim=axis)

    return resample_1d(resample_1d(grid, in_h, out_h, 1), in_w, out_w, 2)


@pytest.mark.parametrize(
    "patch, build, crop",
    [(4, 32, 16), (4, 32, 48), (16, 224, 96)],  # down, up, and the paper's 224 -> 96 (14x14 -> 6x6)
)
def test_local_crop_tokens_use_dino_bicubic_position_embeddings(patch, build, crop):
    torch.manual_seed(0)
    cfg = ModelConfig(arch="vit_small", patch_size=patch, embed_dim=32, depths=[1], num_heads=2)
    vit = build_backbone(cfg, build, 0.0).double().eval()
    x = torch.randn(1, 3, crop, crop, dtype=torch.float64)
    g, g0, dim = crop // patch, build // patch, 32

    # patch embedding by hand: non-overlapping p x p patches, flattened as (C, p, p), times the conv kernel
    patches = x.reshape(1, 3, g, patch, g, patch).permute(0, 2, 4, 1, 3, 5).reshape(1, g * g, 3 * patch * patch)
    proj = vit.model.patch_embed.proj
    embedded = patches @ proj.weight.reshape(dim, -1).T + proj.bias

    pos = vit.model.pos_embed.detach()[0]  # (1 + g0*g0, D)
    patch_pos = _bicubic_by_hand(pos[1:].T.reshape(dim, g0, g0), g, g).reshape(dim, g * g).T
    tokens = vit.prepare_tokens(x)[0]
    torch.testing.assert_close(tokens[0], vit.model.cls_token[0, 0] + pos[0])
    torch.testing.assert_close(tokens[1:], embedded[0] + patch_pos)


# ----------------------------------------------------------------------------- ViT sizes


@pytest.mark.parametrize(
    "patch, global_size, local_size",
    [(8, 32, 16), (5, 40, 20), (16, 224, 96)],  # Figure 5's patch sizes; the paper's crop sizes
)
def test_vit_patch_sizes_and_paper_crops(patch, global_size, local_size):
    cfg = ModelConfig(arch="vit_small", patch_size=patch, embed_dim=32, depths=[1], num_heads=2)
    assert input_multiple(cfg) == patch
    vit = build_backbone(cfg, global_size, 0.1).eval()
    for size in (global_size, local_size):
        pooled, tokens = vit.forward_features(torch.randn(1, 3, size, size))
        assert pooled.shape == (1, 32) and tokens.shape == (1, (size // patch) ** 2, 32)
        assert vit.get_last_selfattention(torch.randn(1, 3, size, size)).shape[-1] == 1 + (size // patch) ** 2
    with pytest.raises(ValueError, match="patch size"):
        vit(torch.randn(1, 3, global_size + 1, global_size + 1))


def test_vit_small_is_dino_vit_s16():
    """21-22M parameters (paper Table 1: 21M), equal to the closed-form count; DINO init and structure."""
    torch.manual_seed(0)
    vit = build_backbone(ModelConfig(arch="vit_small", patch_size=16), 224, 0.1)
    d, depth, hidden, n = 384, 12, 4 * 384, (224 // 16) ** 2
    per_block = 2 * d + (3 * d * d + 3 * d) + (d * d + d) + 2 * d + (d * hidden + hidden) + (hidden * d + d)
    closed_form = (3 * 16 * 16 * d + d) + d + (1 + n) * d + depth * per_block + 2 * d
    count = sum(p.numel() for p in vit.parameters())
    assert count == closed_form
    assert 21e6 <= count <= 22e6

    m = vit.model
    assert len(m.blocks) == 12 and m.blocks[0].attn.num_heads == 6 and m.blocks[0].attn.qkv.bias is not None
    norms = [mod for mod in m.modules() if isinstance(mod, torch.nn.LayerNorm)]
    assert len(norms) == 2 * 12 + 1 and all(mod.eps == 1e-6 for mod in norms)
    # stochastic depth: block i drops with linspace(0, 0.1, 12)[i]
    rates = [getattr(blk.drop_path1, "drop_prob", 0.0) for blk in m.blocks]
    assert rates == pytest.approx(torch.linspace(0, 0.1, 12).tolist(), abs=1e-7)
    # DINO init: trunc-normal(0.02) for [CLS], pos_embed and every Linear weight, zero biases
    assert 0.017 < m.cls_token.std().item() < 0.023
    assert 0.0195 < m.pos_embed.std().item() < 0.0205
    for mod in m.modules():
        if isinstance(mod, torch.nn.Linear):
            assert 0.019 < mod.weight.std().item() < 0.021
            assert torch.all(mod.bias == 0)


@pytest.mark.parametrize("arch, expansion", [("resnet18", 1), ("resnet50", 4)])
def test_resnet_shrinks_by_width_and_depth(arch, expansion):
    """model.embed_dim is the first stage's width (doubled per stage), model.depths the blocks per stage."""
    cfg = ModelConfig(arch=arch, small_stem=True, embed_dim=8, depths=[1, 2, 1, 1])
    backbone = build_backbone(cfg, 32, 0.0)
    stages = [backbone.model.layer1, backbone.model.layer2, backbone.model.layer3, backbone.model.layer4]
    assert [len(stage) for stage in stages] == [1, 2, 1, 1]
    for i, stage in enumerate(stages):  # every block of stage i outputs 8 * 2**i channels (x4 for bottlenecks)
        assert {block.conv1.in_channels for block in stage[1:]} <= {8 * 2**i * expansion}
        last_conv = stage[-1].conv3 if expansion == 4 else stage[-1].conv2
        assert last_conv.out_channels == 8 * 2**i * expansion
    assert backbone.model.conv1.out_channels == 64  # the stem keeps its width (timm's plain stem)
    pooled, tokens = backbone.forward_features(torch.randn(2, 3, 32, 32))
    assert backbone.embed_dim == 64 * expansion
    assert pooled.shape == (2, 64 * expansion) and tokens.shape == (2, 4 * 4, 64 * expansion)
