"""Issue 2's learning target and the collapses the paper explains (section 5.3, Figure 7), on the embedded data.

- experiments/demo.yaml as written, trained for real with seeds 0, 1, 2: its final k-NN top-1 beats the same
  network at random init by at least 10 points on average and by more than 3 times the std over the seeds,
  and the collapse function flags none of the three runs.
- Without centering the teacher entropy falls to 0; without sharpening (a teacher temperature well above
  0.07) it rises to ln K; the collapse function sees both. These train the demo on 512 images for 8 epochs, with 2 local crops.

Slow: the learning runs are the demo's full 90 steps each.
"""

import math
import statistics

import pytest

from dinolab.config import load_experiment
from dinolab.eval.collapse import detect_collapse
from dinolab.track.reporter import MemoryReporter
from dinolab.train.loop import train

pytestmark = pytest.mark.slow

# Runtime fields only (no effect on what is trained): no progress bar, 2 threads, no linear probe.
RUNTIME = ["train.progress=false", "train.threads=2", "eval.linear=false"]
FAST = RUNTIME + ["data.synthetic_train=512", "data.synthetic_test=128"]
# The collapse runs: 8 epochs x 8 steps of the demo with 2 local crops instead of 6 (its teacher momentum
# is 0.9, so the collapse is complete well within them: without centering the entropy is 0.0002 by the
# third epoch; 41-47 s a run against 59-62 s with 6 local crops, measured 2026-11-28). Not fewer epochs: in
# 5 the KL is still above the collapse rule's 0.05 at the third-last epoch.
COLLAPSE = ["train.epochs=8", "eval.knn_every=8", "crops.local_number=2"]


def _run(repo_root, tmp_path, name, overrides):
    cfg = load_experiment(repo_root / "experiments/demo.yaml", FAST + overrides)
    rep = MemoryReporter()
    result = train(cfg, rep, workdir=tmp_path / name, resume=False)
    return cfg, result


def test_demo_learns_shape_across_three_seeds(repo_root, tmp_path):
    """The demo, as written (only runtime fields and the k-NN cadence overridden: neither changes training),
    raises k-NN above random init by >= 10 points on average over seeds 0-2, and by > 3 std; none collapsed."""
    path = repo_root / "experiments/demo.yaml"
    epochs = load_experiment(path).train.epochs
    gains = []
    for seed in (0, 1, 2):
        cfg = load_experiment(path, RUNTIME + [f"eval.knn_every={epochs}", f"train.seed={seed}"])
        result = train(cfg, MemoryReporter(), workdir=tmp_path / f"seed{seed}", resume=False)
        gains.append(result.history["knn_top1"][-1] - result.final["knn_top1_random_init"])
        collapsed, reason = detect_collapse(result.history, out_dim=cfg.dino.out_dim, num_classes=result.num_classes)
        assert not collapsed, f"seed {seed}: {reason}"
        assert 0.5 < result.history["teacher_entropy"][-1] < math.log(cfg.dino.out_dim) - 0.1
    mean, std = statistics.mean(gains), statistics.stdev(gains)
    assert mean >= 10.0 and mean > 3 * std, f"k-NN gains over random init {gains}: mean {mean:.2f}, std {std:.2f}"


def test_no_centering_collapses_to_one_dimension(repo_root, tmp_path):
    cfg, result = _run(repo_root, tmp_path, "nocenter", COLLAPSE + ["dino.centering=none"])
    assert result.history["teacher_entropy"][-1] < 0.1
    collapsed, reason = detect_collapse(result.history, out_dim=cfg.dino.out_dim, num_classes=result.num_classes)
    assert collapsed and "no centering" in reason


def test_no_sharpening_collapses_to_uniform(repo_root, tmp_path):
    overrides = ["dino.teacher_temp=0.5", "dino.warmup_teacher_temp=0.5"]
    cfg, result = _run(repo_root, tmp_path, "nosharpen", COLLAPSE + overrides)
    assert result.history["teacher_entropy"][-1] > math.log(cfg.dino.out_dim) - 0.1
    collapsed, reason = detect_collapse(result.history, out_dim=cfg.dino.out_dim, num_classes=result.num_classes)
    assert collapsed and "uniform" in reason
