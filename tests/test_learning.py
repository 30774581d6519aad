"""The collapses the paper explains (section 5.3, Figure 7) really happen on the embedded data,
and the collapse function sees them: without centering the teacher entropy falls to 0; without
sharpening (a teacher temperature well above 0.07) it rises to ln K; the default run is not flagged.

Slow: these train the demo configuration (experiments/demo.yaml) on 512 images for real: 3 epochs
for the default run, 8 with a momentum-0.9 teacher for the collapses. (The demo's k-NN gain over random init is measured across seeds by the demo
grid and reported in the README; it is below the 10 points the issue asks for.)
"""

import math

import pytest

from dinolab.config import load_experiment
from dinolab.eval.collapse import detect_collapse
from dinolab.track.reporter import MemoryReporter
from dinolab.train.loop import train

pytestmark = pytest.mark.slow

FAST = ["train.progress=false", "train.threads=1", "eval.linear=false", "data.synthetic_train=512", "data.synthetic_test=128"]
# The collapse runs: 8 epochs x 8 steps with a faster teacher (momentum 0.9), so a collapse that
# takes the demo's slower teacher longer to reach is complete within the test.
COLLAPSE = ["train.epochs=8", "eval.knn_every=8", "dino.momentum=0.9"]


def _run(repo_root, tmp_path, name, overrides):
    cfg = load_experiment(repo_root / "experiments/demo.yaml", FAST + overrides)
    rep = MemoryReporter()
    result = train(cfg, rep, workdir=tmp_path / name, resume=False)
    return cfg, result


def test_default_run_is_not_flagged_collapsed(repo_root, tmp_path):
    cfg, result = _run(repo_root, tmp_path, "default", ["train.epochs=3", "eval.knn_every=3"])
    collapsed, reason = detect_collapse(result.history, out_dim=cfg.dino.out_dim, num_classes=result.num_classes)
    assert not collapsed, reason
    assert 0.5 < result.history["teacher_entropy"][-1] < math.log(cfg.dino.out_dim) - 0.1


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
