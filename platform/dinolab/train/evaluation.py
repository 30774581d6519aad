"""What the loop measures of the teacher's backbone (main process only), on a fixed bank of train / test images:
weighted k-NN at random init and every ``eval.knn_every`` epochs; at the end the last-block [CLS] attention
(the paper's Figures 1/3/4, and its Jaccard with the object masks) and the linear probe on the last k-NN's
frozen features (shared/reference/dino_reference.md section 9)."""

from __future__ import annotations

from typing import Optional

import numpy as np
import torch
from torch import nn

from dinolab.config.schema import ExperimentConfig
from dinolab.track import contract
from dinolab.track.reporter import Reporter


class _SubsetView(torch.utils.data.Dataset):
    """The first ``n`` items of a seeded permutation of a dataset (a fixed evaluation bank)."""

    def __init__(self, dataset, n: Optional[int], seed: int) -> None:
        self.dataset = dataset
        order = np.random.default_rng(seed).permutation(len(dataset)) if n and n < len(dataset) else np.arange(len(dataset))
        self.indices = order[: n or len(dataset)].tolist()

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i):
        return self.dataset[self.indices[i]]


def build_eval_sets(cfg: ExperimentConfig):
    from dinolab.data.datasets import build_dataset
    from dinolab.data.multicrop import eval_transform

    tf = eval_transform(cfg.eval_image_size)
    train = _SubsetView(build_dataset(cfg.data, "train", transform=tf), cfg.eval.max_train_images, seed=0)
    test = _SubsetView(build_dataset(cfg.data, "test", transform=tf), cfg.eval.max_test_images, seed=1)
    return train, test


def evaluate_knn(backbone: nn.Module, eval_sets, cfg: ExperimentConfig, device, num_classes: int):
    """Weighted k-NN top-1 (%) of a backbone's pooled features, and the features themselves."""
    from dinolab.eval.features import extract_features
    from dinolab.eval.knn import weighted_knn

    train_set, test_set = eval_sets
    tr_f, tr_y = extract_features(backbone, train_set, batch_size=256, device=device)
    te_f, te_y = extract_features(backbone, test_set, batch_size=256, device=device)
    top1 = weighted_knn(tr_f, tr_y, te_f, te_y, k=cfg.eval.knn_k, temperature=cfg.eval.knn_temperature, num_classes=num_classes)
    return float(top1), (tr_f, tr_y, te_f, te_y)


class Evaluator:
    """The evaluations of one run; keeps the last k-NN's features for the linear probe."""

    def __init__(self, cfg: ExperimentConfig, device: torch.device, num_classes: int) -> None:
        self.cfg, self.device, self.num_classes = cfg, device, num_classes
        self.sets = build_eval_sets(cfg)
        self.features = None  # (train features, labels, test features, labels) of the last k-NN

    def knn(self, backbone: nn.Module) -> float:
        top1, self.features = evaluate_knn(backbone, self.sets, self.cfg, self.device, self.num_classes)
        return top1

    def at_random_init(self, backbone: nn.Module) -> dict[str, float]:
        """k-NN (and attention) of the untrained network: the baseline every trained number is read against."""
        top1, _ = evaluate_knn(backbone, self.sets, self.cfg, self.device, self.num_classes)
        out = {contract.KNN_TOP1_RANDOM_INIT: top1}
        if backbone.supports_attention:
            from dinolab.eval.attention import evaluate_attention

            attention, _ = evaluate_attention(backbone, self.sets[1])
            out.update({contract.random_init_key(k): v for k, v in attention.items()})
        return out

    def at_end(self, backbone: nn.Module, reporter: Reporter, step: int) -> dict[str, float]:
        """Attention maps (their figure logged at ``step``) and the linear probe on the last k-NN's features."""
        out: dict[str, float] = {}
        if backbone.supports_attention:
            from dinolab.eval.attention import evaluate_attention

            attention, figure = evaluate_attention(backbone, self.sets[1])
            out.update(attention)
            reporter.log_image(figure, contract.ATTENTION_IMAGE, step=step)
        if self.cfg.eval.linear:
            from dinolab.eval.linear import linear_probe

            if self.features is None:  # resumed after the last epoch's k-NN
                self.knn(backbone)
            e = self.cfg.eval
            probe = linear_probe(*self.features, self.num_classes, lrs=e.linear_lrs, epochs=e.linear_epochs,
                                 val_fraction=e.val_fraction, seed=self.cfg.train.seed)
            out.update({contract.LINEAR_TOP1: float(probe["top1"]), contract.LINEAR_VAL_TOP1: float(probe["val_top1"])})
        return out
