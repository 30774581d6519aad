"""The README's diagnostics (scripts/contrastive_control.py, scripts/view_agreement.py): their math against
hand-computed cases and explicit loops, and their runs on a tiny configuration."""

import importlib.util
import math
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F


def _load(repo_root, name):
    spec = importlib.util.spec_from_file_location(name, repo_root / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def view_agreement(repo_root):
    return _load(repo_root, "view_agreement")


def test_view_agreement_hand_computed(view_agreement):
    # Two images, 2-d outputs. View a: rows (1, 0), (3, 2) -> mean (2, 1), centred (-1, -1), (1, 1).
    # View b: rows (0, 1), (2, 1) -> mean (1, 1), centred (-1, 0), (1, 0).
    # cos((-1, -1), (-1, 0)) = cos((1, 1), (1, 0)) = 1 / sqrt(2).
    a = torch.tensor([[1.0, 0.0], [3.0, 2.0]])
    b = torch.tensor([[0.0, 1.0], [2.0, 1.0]])
    assert view_agreement.view_agreement(a, b) == pytest.approx(1 / math.sqrt(2), abs=1e-6)


def test_view_agreement_extremes(view_agreement):
    g = torch.Generator().manual_seed(0)
    a = torch.randn(512, 64, generator=g)
    assert view_agreement.view_agreement(a, a + 5.0) == pytest.approx(1.0, abs=1e-5)  # a shared offset is centred away
    assert view_agreement.view_agreement(a, -a) == pytest.approx(-1.0, abs=1e-5)
    assert abs(view_agreement.view_agreement(a, torch.randn(512, 64, generator=g))) < 0.05  # unrelated views


def test_switch_off_zeroes_the_named_operations(view_agreement):
    from dinolab.data.fast_multicrop import BatchedPhotometric

    p = BatchedPhotometric(32, 16, 2)
    view_agreement.switch_off(p, ["jitter", "blur"])
    assert p.jitter_p == 0.0 and set(p.blur_p.values()) == {0.0}
    assert p.gray_p > 0 and max(p.solarize_p.values()) > 0


def test_simclr_loss_matches_explicit_loops(repo_root):
    control = _load(repo_root, "contrastive_control")
    g = torch.Generator().manual_seed(1)
    a = F.normalize(torch.randn(5, 8, generator=g), dim=1)
    b = F.normalize(torch.randn(5, 8, generator=g), dim=1)
    t = 0.2
    total = 0.0
    for i in range(5):  # row i of a against every row of b, and row i of b against every row of a
        for x, y in ((a, b), (b, a)):
            sims = [float(x[i] @ y[j]) / t for j in range(5)]
            total += -(sims[i] - math.log(sum(math.exp(s) for s in sims)))
    assert control.simclr_loss(a, b, t).item() == pytest.approx(total / 10, rel=1e-5)


def test_measure_at_init_on_a_tiny_run(view_agreement, tiny_config):
    cfg = tiny_config("eval.linear=false")
    m = view_agreement.measure_at_init(cfg, ["jitter"], batches=2)
    assert set(m) == {"pooled", "logits", "pooled_shuffled", "knn_top1_random_init"}
    assert all(-1.0 <= m[k] <= 1.0 for k in ("pooled", "logits", "pooled_shuffled"))
    assert 0.0 <= m["knn_top1_random_init"] <= 100.0


@pytest.mark.parametrize("override, named", [("dino.no_such_key=1", "dino.no_such_key"),
                                             ("data.augment=reference", "data.augment")])
def test_bad_input_is_one_line_and_exit_2(repo_root, tiny_experiment, override, named):
    proc = subprocess.run([sys.executable, str(repo_root / "scripts/view_agreement.py"), str(tiny_experiment),
                           "--set", override], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and named in lines[0]


def test_trace_prints_every_step_and_undoes_its_patches(view_agreement, tiny_config, capsys):
    import dinolab.data.fast_multicrop as fast
    import dinolab.train.step as step_module

    objective, factory = step_module.objective, fast.fast_multicrop
    cfg = tiny_config("eval.linear=false")
    view_agreement.trace(cfg, ["jitter"])
    assert step_module.objective is objective and fast.fast_multicrop is factory
    rows = [line for line in capsys.readouterr().out.splitlines() if line.startswith("step")]
    assert len(rows) == cfg.train.epochs * cfg.train.steps_per_epoch
    assert "teacher entropy" in rows[0] and "student spread" in rows[0]
