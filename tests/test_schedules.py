"""Schedules against closed forms and hand-computed values (DINO utils.cosine_scheduler semantics)."""

import math

import numpy as np
import pytest

from dinolab.train.schedules import cosine_schedule, lr_base, teacher_temp_schedule


def test_cosine_without_warmup_hand_values():
    # T = 4 steps from 1 to 0: 0.5 (1 + cos(pi i / 4)), i = 0..3
    got = cosine_schedule(1.0, 0.0, epochs=2, steps_per_epoch=2)
    hand = [1.0, 0.5 * (1 + math.sqrt(0.5)), 0.5, 0.5 * (1 - math.sqrt(0.5))]
    assert np.allclose(got, hand, atol=1e-12)


def test_cosine_with_warmup_closed_form():
    base, final, start = 2e-3, 1e-6, 1e-4
    epochs, steps, warm = 7, 3, 2
    got = cosine_schedule(base, final, epochs, steps, warmup_epochs=warm, start_warmup_value=start)
    assert got.shape == (epochs * steps,)
    n_warm = warm * steps  # 6 warm-up steps, end point included
    for i in (0, 1, 3, 5):
        assert got[i] == pytest.approx(start + (base - start) * i / (n_warm - 1), rel=1e-12)
    assert got[n_warm - 1] == pytest.approx(base)  # inclusive linspace: the last warm-up step is at base
    t_total = epochs * steps - n_warm  # 15 cosine steps
    for i in (0, 1, 7, 14):
        assert got[n_warm + i] == pytest.approx(final + 0.5 * (base - final) * (1 + math.cos(math.pi * i / t_total)), rel=1e-12)
    assert got[n_warm] == pytest.approx(base)
    assert got[-1] > final  # close to, not exactly, final


def test_cosine_momentum_rises_to_one():
    got = cosine_schedule(0.996, 1.0, epochs=3, steps_per_epoch=5)
    assert got[0] == pytest.approx(0.996)
    assert np.all(np.diff(got) > 0) and got[-1] < 1.0


def test_cosine_all_warmup_and_errors():
    got = cosine_schedule(1.0, 0.0, epochs=2, steps_per_epoch=2, warmup_epochs=2)
    assert np.allclose(got, [0.0, 1 / 3, 2 / 3, 1.0])
    with pytest.raises(ValueError):
        cosine_schedule(1.0, 0.0, epochs=2, steps_per_epoch=2, warmup_epochs=3)
    with pytest.raises(ValueError):
        cosine_schedule(1.0, 0.0, epochs=0, steps_per_epoch=2)


def test_teacher_temp_schedule_hand_values():
    assert np.allclose(teacher_temp_schedule(0.04, 0.07, 3, 5), [0.04, 0.055, 0.07, 0.07, 0.07])
    assert np.allclose(teacher_temp_schedule(0.04, 0.04, 0, 3), [0.04, 0.04, 0.04])
    paper = teacher_temp_schedule(0.04, 0.07, 30, 100)  # paper: 0.04 -> 0.07 over 30 epochs
    assert paper.shape == (100,)
    assert paper[10] == pytest.approx(0.04 + 0.03 * 10 / 29)
    assert paper[29] == pytest.approx(0.07) and paper[99] == pytest.approx(0.07)
    with pytest.raises(ValueError):
        teacher_temp_schedule(0.04, 0.07, 6, 5)


def test_linear_scaling_rule():
    assert lr_base(0.0005, 1024) == pytest.approx(0.002)
    assert lr_base(0.0005, 64) == pytest.approx(0.000125)
    with pytest.raises(ValueError):
        lr_base(0.0005, 0)
