"""The Trainer's learning-rate schedule (neptune_rt/train/lr_schedule.py) against closed forms."""
import math

import pytest

from neptune_rt.train.lr_schedule import lr_factor


def test_warmup_rises_linearly_to_the_peak():
    assert [lr_factor(s, 100, 4, "cosine") for s in range(4)] == [0.25, 0.5, 0.75, 1.0]


@pytest.mark.parametrize("step", [4, 30, 52, 77, 100])
def test_cosine_after_warmup(step):
    progress = (step - 4) / 96
    assert lr_factor(step, 100, 4, "cosine") == pytest.approx(0.5 * (1 + math.cos(math.pi * progress)), abs=1e-12)


def test_linear_decays_to_zero_and_stays_there():
    assert lr_factor(10, 110, 10, "linear") == 1.0
    assert lr_factor(60, 110, 10, "linear") == pytest.approx(0.5)
    assert lr_factor(110, 110, 10, "linear") == 0.0
    assert lr_factor(500, 110, 10, "linear") == 0.0  # past the end: clamped, never negative


def test_constant_and_degenerate_totals():
    assert lr_factor(50, 100, 0, "constant") == 1.0
    assert lr_factor(3, 2, 5, "cosine") == pytest.approx(4 / 5)  # still warming up
    assert lr_factor(7, 2, 5, "cosine") == 1.0  # warm-up longer than the run: no decay phase


def test_unknown_schedule_names_the_choices():
    with pytest.raises(ValueError, match="cosine, linear, constant"):
        lr_factor(0, 10, 0, "step")
