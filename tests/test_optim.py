"""Parameter groups, per-parameter clipping and last-layer freezing against hand computation."""

import math

import pytest
import torch
from torch import nn

from dinolab.train.optim import build_optimizer, cancel_last_layer_gradients, clip_gradients, param_groups


class _Head(nn.Module):
    def __init__(self):
        super().__init__()
        self.mlp = nn.Linear(3, 4)
        self.last_layer = nn.Module()
        self.last_layer.weight_g = nn.Parameter(torch.ones(5, 1))  # (K, 1) gain, as DINO's weight-norm layer
        self.last_layer.weight_v = nn.Parameter(torch.randn(5, 4))


class _Tiny(nn.Module):
    def __init__(self):
        super().__init__()
        self.cls_token = nn.Parameter(torch.zeros(1, 1, 3))
        self.pos_embed = nn.Parameter(torch.zeros(1, 2, 3))
        self.norm = nn.LayerNorm(3)
        self.head = _Head()
        self.frozen = nn.Linear(3, 3)
        self.frozen.requires_grad_(False)


def test_param_groups_follow_dino_rule():
    model = _Tiny()
    groups = param_groups(model)
    assert len(groups) == 2 and groups[1]["weight_decay"] == 0.0 and "weight_decay" not in groups[0]
    names = {id(p): n for n, p in model.named_parameters()}
    regularized = sorted(names[id(p)] for p in groups[0]["params"])
    not_regularized = sorted(names[id(p)] for p in groups[1]["params"])
    assert regularized == sorted(
        ["cls_token", "pos_embed", "head.mlp.weight", "head.last_layer.weight_g", "head.last_layer.weight_v"]
    )
    assert not_regularized == sorted(["norm.weight", "norm.bias", "head.mlp.bias"])
    # frozen parameters are in neither group; every trainable one is in exactly one
    assert len(regularized) + len(not_regularized) == sum(p.requires_grad for p in model.parameters())
    torch.optim.AdamW(groups)  # a valid optimizer spec


def _two_param_model(g1, g2):
    model = nn.Module()
    model.a = nn.Parameter(torch.zeros(2))
    model.b = nn.Parameter(torch.zeros(2))
    model.c = nn.Parameter(torch.zeros(2))  # no gradient: skipped
    model.a.grad = torch.tensor(g1)
    model.b.grad = torch.tensor(g2)
    return model


def test_clip_is_per_parameter_not_global():
    model = _two_param_model([3.0, 4.0], [0.6, 0.8])  # norms 5 and 1
    norms = clip_gradients(model, 3.0)
    assert norms == pytest.approx([5.0, 1.0])
    factor = 3.0 / (5.0 + 1e-6)
    assert model.a.grad.tolist() == pytest.approx([3.0 * factor, 4.0 * factor])  # clipped to norm ~3
    assert model.b.grad.tolist() == pytest.approx([0.6, 0.8])  # under the threshold: untouched
    assert model.c.grad is None

    # a global-norm clip (torch's clip_grad_norm_) scales both by 3 / sqrt(26): a different result
    other = _two_param_model([3.0, 4.0], [0.6, 0.8])
    torch.nn.utils.clip_grad_norm_([other.a, other.b], 3.0)
    assert other.b.grad.tolist() == pytest.approx([0.6 * 3 / math.sqrt(26), 0.8 * 3 / math.sqrt(26)], rel=1e-5)
    assert not torch.allclose(other.b.grad, model.b.grad)


def test_clip_zero_is_off():
    model = _two_param_model([3.0, 4.0], [0.6, 0.8])
    assert clip_gradients(model, 0.0) == pytest.approx([5.0, 1.0])
    assert model.a.grad.tolist() == [3.0, 4.0]
    with pytest.raises(ValueError):
        clip_gradients(model, -1.0)


def test_cancel_last_layer_only_during_freeze_epochs():
    model = _Tiny()
    for p in model.parameters():
        if p.requires_grad:
            p.grad = torch.ones_like(p)
    cancel_last_layer_gradients(model, epoch=1, freeze_last_layer=1)
    assert model.head.last_layer.weight_v.grad is not None
    cancel_last_layer_gradients(model, epoch=0, freeze_last_layer=1)
    assert model.head.last_layer.weight_v.grad is None and model.head.last_layer.weight_g.grad is None
    assert model.head.mlp.weight.grad is not None and model.cls_token.grad is not None

    # AdamW skips parameters without a gradient: no update and no weight decay
    frozen_before = model.head.last_layer.weight_v.detach().clone()
    trained_before = model.head.mlp.weight.detach().clone()
    groups = param_groups(model)
    groups[0]["weight_decay"] = 0.5
    torch.optim.AdamW(groups, lr=0.1).step()
    assert torch.equal(model.head.last_layer.weight_v, frozen_before)
    assert not torch.equal(model.head.mlp.weight, trained_before)


def test_the_fused_adamw_makes_the_reference_update():
    """build_optimizer's AdamW (fused kernel) against AdamW's update written out: decoupled decay, bias-corrected moments."""
    torch.manual_seed(0)
    w, b = torch.randn(5, 3, requires_grad=True), torch.randn(3, requires_grad=True)
    opt = build_optimizer("adamw", [{"params": [w]}, {"params": [b], "weight_decay": 0.0}])
    for group, wd in zip(opt.param_groups, (0.04, 0.0)):
        group["lr"], group["weight_decay"] = 0.01, wd
    w0, b0 = w.detach().clone(), b.detach().clone()
    m = {id(w): torch.zeros_like(w0), id(b): torch.zeros_like(b0)}
    v = {id(w): torch.zeros_like(w0), id(b): torch.zeros_like(b0)}
    expected = {id(w): w0.clone(), id(b): b0.clone()}
    beta1, beta2, eps = 0.9, 0.999, 1e-8
    for t in range(1, 4):
        grads = {id(w): torch.randn(5, 3), id(b): torch.randn(3)}
        w.grad, b.grad = grads[id(w)].clone(), grads[id(b)].clone()
        opt.step()
        for p, wd in ((w, 0.04), (b, 0.0)):
            k, g = id(p), grads[id(p)]
            expected[k] = expected[k] * (1 - 0.01 * wd)
            m[k] = beta1 * m[k] + (1 - beta1) * g
            v[k] = beta2 * v[k] + (1 - beta2) * g * g
            m_hat, v_hat = m[k] / (1 - beta1**t), v[k] / (1 - beta2**t)
            expected[k] = expected[k] - 0.01 * m_hat / (v_hat.sqrt() + eps)
    assert torch.allclose(w.detach(), expected[id(w)], atol=1e-6) and torch.allclose(b.detach(), expected[id(b)], atol=1e-6)
    with pytest.raises(ValueError, match="train.optimizer"):
        build_optimizer("lamb", [{"params": [w]}])
