"""DINOHead: the MLP -> l2 bottleneck -> weight-normalised prototypes, recomputed by hand."""

import math

import pytest
import torch

from dinolab.models.head import DINOHead

IN, OUT, HIDDEN, BOTTLENECK = 8, 16, 12, 6


def gelu(x):
    return 0.5 * x * (1.0 + torch.erf(x / math.sqrt(2.0)))


def by_hand(head: DINOHead, x: torch.Tensor) -> torch.Tensor:
    """Paper section 3.1 / Appendix C, written out from the parameters."""
    linears = [m for m in head.mlp if isinstance(m, torch.nn.Linear)]
    z = x
    for i, lin in enumerate(linears):
        z = z @ lin.weight.T + lin.bias
        if i < len(linears) - 1:
            z = gelu(z)
    if head.predictor is not None:
        p1, p2 = [m for m in head.predictor if isinstance(m, torch.nn.Linear)]
        z = gelu(z @ p1.weight.T + p1.bias) @ p2.weight.T + p2.bias
    u = torch.stack([row / torch.sqrt((row**2).sum()) for row in z])  # unit rows
    g, v = head.last_layer.weight_g, head.last_layer.weight_v
    w = torch.stack([g[k, 0] * v[k] / torch.sqrt((v[k] ** 2).sum()) for k in range(v.shape[0])])
    return u @ w.T


@pytest.mark.parametrize("nlayers", [1, 2, 3])
@pytest.mark.parametrize("predictor", [False, True])
def test_output_equals_hand_computation(nlayers, predictor):
    torch.manual_seed(0)
    head = DINOHead(IN, OUT, HIDDEN, BOTTLENECK, nlayers=nlayers, predictor=predictor).double()
    with torch.no_grad():  # non-unit gains so g enters the check
        head.last_layer.weight_g.uniform_(0.5, 2.0)
    x = torch.randn(5, IN, dtype=torch.float64)
    y = head(x)
    assert y.shape == (5, OUT)
    torch.testing.assert_close(y, by_hand(head, x))


@pytest.mark.parametrize("nlayers", [1, 2, 3, 4])
def test_mlp_structure(nlayers):
    head = DINOHead(IN, OUT, HIDDEN, BOTTLENECK, nlayers=nlayers)
    linears = [m for m in head.mlp if isinstance(m, torch.nn.Linear)]
    assert len(linears) == nlayers
    assert sum(isinstance(m, torch.nn.GELU) for m in head.mlp) == nlayers - 1
    assert not any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in head.modules())
    assert linears[0].in_features == IN and linears[-1].out_features == BOTTLENECK
    assert head.last_layer.weight_v.shape == (OUT, BOTTLENECK) and head.last_layer.weight_g.shape == (OUT, 1)


def test_parameter_names_and_init():
    torch.manual_seed(0)
    head = DINOHead(256, 64, hidden_dim=512, bottleneck_dim=128)
    names = dict(head.named_parameters())
    assert "last_layer.weight_g" in names and "last_layer.weight_v" in names
    assert not any(n.startswith("last_layer.bias") for n in names)
    assert torch.all(head.last_layer.weight_g == 1)
    for m in head.mlp:
        if isinstance(m, torch.nn.Linear):
            assert 0.019 < m.weight.std().item() < 0.021 and torch.all(m.bias == 0)


@pytest.mark.parametrize("norm_last_layer", [True, False])
def test_gain_frozen_or_trained(norm_last_layer):
    torch.manual_seed(0)
    head = DINOHead(IN, OUT, HIDDEN, BOTTLENECK, norm_last_layer=norm_last_layer)
    g = head.last_layer.weight_g
    assert g.requires_grad is (not norm_last_layer)
    head(torch.randn(4, IN)).pow(2).sum().backward()
    assert (g.grad is None) is norm_last_layer
    assert head.last_layer.weight_v.grad is not None
    if norm_last_layer:  # frozen unit gains: every prototype row has unit norm
        norms = head.last_layer.weight.norm(dim=1)
        torch.testing.assert_close(norms, torch.ones(OUT))


def test_weight_norm_gradient_is_orthogonal_to_v():
    """For W = g v / ||v||: dL/dv = (g / ||v||) (I - v v^T / ||v||^2) dL/dW, hence <dL/dv, v> = 0 per row."""
    torch.manual_seed(0)
    head = DINOHead(IN, OUT, HIDDEN, BOTTLENECK, norm_last_layer=False).double()
    with torch.no_grad():
        head.last_layer.weight_g.uniform_(0.5, 2.0)
    x = torch.randn(7, IN, dtype=torch.float64)
    target = torch.randn(7, OUT, dtype=torch.float64)
    (head(x) * target).sum().backward()
    v, g = head.last_layer.weight_v, head.last_layer.weight_g
    grad_v = v.grad
    torch.testing.assert_close((grad_v * v).sum(1), torch.zeros(OUT, dtype=torch.float64), atol=1e-12, rtol=0)

    # closed form from dL/dW, where W is taken as an independent leaf
    with torch.no_grad():
        u = torch.nn.functional.normalize(head.mlp(x), dim=-1)
    grad_w = target.T @ u  # d/dW of sum(target * (u W^T))
    vn = v.detach().norm(dim=1, keepdim=True)
    v_hat = v.detach() / vn
    expected = g.detach() / vn * (grad_w - (grad_w * v_hat).sum(1, keepdim=True) * v_hat)
    torch.testing.assert_close(grad_v, expected)
    expected_g = (grad_w * v_hat).sum(1, keepdim=True)  # dL/dg = <dL/dW, v/||v||>
    torch.testing.assert_close(g.grad, expected_g)


def test_last_layer_matches_torch_weight_norm():
    torch.manual_seed(0)
    head = DINOHead(IN, OUT, HIDDEN, BOTTLENECK)
    reference = torch.nn.utils.parametrizations.weight_norm(torch.nn.Linear(BOTTLENECK, OUT, bias=False))
    with torch.no_grad():
        reference.parametrizations.weight.original0.copy_(head.last_layer.weight_g)
        reference.parametrizations.weight.original1.copy_(head.last_layer.weight_v)
    u = torch.nn.functional.normalize(torch.randn(3, BOTTLENECK), dim=-1)
    torch.testing.assert_close(head.last_layer(u), reference(u))


def test_predictor_present_only_when_asked():
    student = DINOHead(IN, OUT, HIDDEN, BOTTLENECK, predictor=True)
    teacher = DINOHead(IN, OUT, HIDDEN, BOTTLENECK, predictor=False)
    student_names = {n for n, _ in student.named_parameters()}
    teacher_names = {n for n, _ in teacher.named_parameters()}
    extra = student_names - teacher_names
    assert extra == {"predictor.0.weight", "predictor.0.bias", "predictor.2.weight", "predictor.2.bias"}
    assert teacher_names < student_names
    assert student.predictor[0].in_features == BOTTLENECK and student.predictor[2].out_features == BOTTLENECK
    assert student.predictor[0].out_features == HIDDEN


def test_invalid_arguments():
    with pytest.raises(ValueError, match="nlayers"):
        DINOHead(IN, OUT, nlayers=0)
    with pytest.raises(ValueError, match="out_dim"):
        DINOHead(IN, 0)


def batch_standardise_by_hand(z: torch.Tensor, bn: torch.nn.BatchNorm1d) -> torch.Tensor:
    """Training-mode BatchNorm1d per column j: (z_ij - mean_j) / sqrt(biased var_j + eps) * gamma_j + beta_j."""
    cols = []
    for j in range(z.shape[1]):
        col = z[:, j]
        mean = sum(col) / len(col)
        var = sum((c - mean) ** 2 for c in col) / len(col)
        cols.append((col - mean) / torch.sqrt(var + bn.eps) * bn.weight[j] + bn.bias[j])
    return torch.stack(cols, dim=1)


@pytest.mark.parametrize("nlayers", [2, 3])
def test_bn_head_equals_hand_computation(nlayers):
    """use_bn (the reference's use_bn_in_head): Linear -> BatchNorm1d over the batch -> GELU per hidden layer."""
    torch.manual_seed(0)
    head = DINOHead(IN, OUT, HIDDEN, BOTTLENECK, nlayers=nlayers, use_bn=True).double()
    bns = [m for m in head.mlp if isinstance(m, torch.nn.BatchNorm1d)]
    linears = [m for m in head.mlp if isinstance(m, torch.nn.Linear)]
    assert len(bns) == nlayers - 1 and len(linears) == nlayers
    with torch.no_grad():  # non-trivial affine parameters so gamma and beta enter the check
        for bn in bns:
            bn.weight.uniform_(0.5, 2.0)
            bn.bias.uniform_(-0.5, 0.5)
    x = torch.randn(7, IN, dtype=torch.float64)
    z = x
    for i, lin in enumerate(linears):
        z = z @ lin.weight.T + lin.bias
        if i < len(linears) - 1:
            z = gelu(batch_standardise_by_hand(z, bns[i]))
    u = z / z.norm(dim=1, keepdim=True)
    torch.testing.assert_close(head(x), u @ head.last_layer.weight.T)
    # A constant shift of the input batch is removed by the first BatchNorm: the head's output cannot
    # follow it (what keeps a BN head from answering every image with the batch average).
    torch.testing.assert_close(head(x + 3.0), head(x))


def test_bn_head_in_a_trial_config(tiny_config):
    from dinolab.train.setup import build_networks

    cfg = tiny_config("dino.use_bn_in_head=true")
    student, teacher = build_networks(cfg)
    for net in (student, teacher):
        assert sum(isinstance(m, torch.nn.BatchNorm1d) for m in net.head.modules()) == cfg.dino.head_layers - 1


def test_batchnorms_are_synchronised_only_across_several_cuda_workers():
    """The training set-up's sync_batchnorms: SyncBatchNorm for world_size > 1 on CUDA (conversion itself needs no GPU),
    the module untouched on one worker or on CPU workers."""
    from dinolab.train.setup import sync_batchnorms

    def head():
        return DINOHead(IN, OUT, HIDDEN, BOTTLENECK, nlayers=3, use_bn=True)

    def kinds(m):
        return [type(x).__name__ for x in m.modules() if isinstance(x, torch.nn.modules.batchnorm._BatchNorm)]

    assert kinds(sync_batchnorms(head(), 2, torch.device("cuda"))) == ["SyncBatchNorm"] * 2
    for world, device in ((1, "cuda"), (2, "cpu"), (1, "cpu")):
        assert kinds(sync_batchnorms(head(), world, torch.device(device))) == ["BatchNorm1d"] * 2
