"""Feature extraction: eval mode, dataset order, dtypes, mode restored, usable by autograd afterwards."""

import pytest
import torch
from torch import nn
from torch.utils.data import Dataset

from dinolab.eval.features import extract_features


class TensorImages(Dataset):
    def __init__(self, n=10, size=8, seed=0):
        g = torch.Generator().manual_seed(seed)
        self.images = torch.randn(n, 3, size, size, generator=g)
        self.targets = [i % 3 for i in range(n)]

    def __len__(self):
        return len(self.targets)

    def __getitem__(self, i):
        return self.images[i], self.targets[i]


class TinyBackbone(nn.Module):
    """(B, 3, 8, 8) -> (B, 5), with dropout and batch norm so that train and eval mode differ."""

    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(nn.Flatten(), nn.Linear(3 * 8 * 8, 5), nn.BatchNorm1d(5), nn.Dropout(0.5))
        self.embed_dim = 5
        self.modes_seen = []

    def forward(self, x):
        self.modes_seen.append(self.training)
        return self.net(x)


@pytest.mark.parametrize("start_training", [True, False])
def test_features_are_eval_mode_outputs_in_order(start_training):
    torch.manual_seed(0)
    backbone, data = TinyBackbone(), TensorImages()
    backbone.net[2].running_mean.fill_(0.3)  # make eval-mode batch norm differ from batch statistics
    backbone.train(start_training)
    feats, labels = extract_features(backbone, data, batch_size=3)  # 10 images: batches 3, 3, 3, 1

    assert backbone.training is start_training
    assert all(m.training is start_training for m in backbone.modules())
    assert backbone.modes_seen == [False] * 4
    assert feats.dtype == torch.float32 and feats.shape == (10, 5) and feats.device.type == "cpu"
    assert labels.dtype == torch.long and labels.tolist() == data.targets
    assert not feats.requires_grad

    # Independent reference: eval mode is a fixed per-image function, so one big batch gives the same rows.
    backbone.eval()
    with torch.no_grad():
        expected = backbone.net(data.images)
    torch.testing.assert_close(feats, expected)
    # Running statistics were not updated by the extraction (no train-mode forward).
    assert torch.allclose(backbone.net[2].running_mean, torch.full((5,), 0.3))


def test_features_feed_autograd():
    feats, labels = extract_features(TinyBackbone(), TensorImages(n=4), batch_size=2)
    probe = nn.Linear(5, 3)
    nn.functional.cross_entropy(probe(feats), labels).backward()  # would fail on inference-mode tensors
    assert probe.weight.grad is not None


def test_mode_restored_when_forward_fails():
    class Broken(TinyBackbone):
        def forward(self, x):
            raise RuntimeError("boom")

    backbone = Broken().train()
    with pytest.raises(RuntimeError, match="boom"):
        extract_features(backbone, TensorImages(n=2))
    assert backbone.training


def test_autocast_flag_is_ignored_on_cpu():
    backbone, data = TinyBackbone().eval(), TensorImages(n=4)
    a, _ = extract_features(backbone, data, batch_size=4, autocast=True)
    b, _ = extract_features(backbone, data, batch_size=4)
    assert a.dtype == torch.float32
    torch.testing.assert_close(a, b)


def test_invalid_inputs():
    with pytest.raises(ValueError, match="empty"):
        extract_features(TinyBackbone(), TensorImages(n=0))
    with pytest.raises(ValueError, match="batch_size"):
        extract_features(TinyBackbone(), TensorImages(n=2), batch_size=0)
    with pytest.raises(ValueError, match="device"):
        extract_features(TinyBackbone(), TensorImages(n=2), device="meta")
    with pytest.raises(ValueError, match=r"\(B, D\)"):
        extract_features(nn.Identity(), TensorImages(n=2))
