"""Noise scale on a linear-regression task with known noise: per-sample gradients x (x.d - eps) with
x ~ N(0, I_d), eps ~ N(0, s^2) at offset d = w - w* have |G|^2 = |d|^2 and tr(Sigma) = d (|d|^2 + s^2) + |d|^2
(Gaussian fourth moments), so phi is known exactly. Ranks with unequal batches; the smoothed estimate must be
within 15% of the truth. Also efficiency and the learning-rate rules."""
import math

import numpy as np
import pytest

from neptune_rt.schedule.goodput import NoiseScale, efficiency, lr_scale


def regression_step(rng, d, delta, sigma, batches):
    grads = []
    for b in batches:
        x = rng.standard_normal((b, d))
        eps = rng.normal(0.0, sigma, size=b)
        grads.append((x * (x @ delta - eps)[:, None]).mean(axis=0))
    total = sum(batches)
    avg = sum(b / total * g for b, g in zip(batches, grads))
    return [float(g @ g) for g in grads], float(avg @ avg)


@pytest.mark.parametrize("batches,sigma", [([8, 8, 16, 32], 1.0), ([3, 40, 7, 12, 5], 3.0), ([64, 64], 0.5)])
def test_noise_scale_matches_linear_regression_truth(batches, sigma):
    rng = np.random.default_rng(0)
    d = 20
    delta = rng.standard_normal(d) * 0.3
    g2 = float(delta @ delta)
    truth = (d * (g2 + sigma ** 2) + g2) / g2
    est = NoiseScale(decay=0.99)
    for _ in range(600):
        norms, avg = regression_step(rng, d, delta, sigma, batches)
        est.observe(norms, batches, avg)
    assert abs(est.value / truth - 1) < 0.15, f"phi {est.value:.1f} vs truth {truth:.1f}"
    assert abs(est.grad_sq / g2 - 1) < 0.15


def test_single_step_estimator_is_unbiased():
    # the mean of many raw one-step estimates converges to the truth (no smoothing involved)
    rng = np.random.default_rng(1)
    d, sigma, batches = 10, 1.0, [4, 12, 20]
    delta = np.full(d, 0.5)
    g2 = float(delta @ delta)
    trace = d * (g2 + sigma ** 2) + g2
    s_sum = g_sum = 0.0
    for _ in range(4000):
        norms, avg = regression_step(rng, d, delta, sigma, batches)
        s, g = NoiseScale.estimate(norms, batches, avg)
        s_sum, g_sum = s_sum + s, g_sum + g
    assert s_sum / 4000 == pytest.approx(trace, rel=0.05)
    assert g_sum / 4000 == pytest.approx(g2, rel=0.05)


def test_efficiency_and_lr_rules():
    assert efficiency(100.0, 64, 64) == 1.0
    assert efficiency(100.0, 256, 64) == pytest.approx(164 / 356)
    assert lr_scale("linear", 100.0, 256, 64) == 4.0
    assert lr_scale("sqrt", 100.0, 256, 64) == 2.0
    # AdaScale gain = (S/B0 + G2) / (S/B + G2) with phi = S/G2
    S, G2 = 100.0, 1.0
    assert lr_scale("adascale", S / G2, 256, 64) == pytest.approx((S / 64 + G2) / (S / 256 + G2))
    assert 1.0 <= lr_scale("adascale", 1e9, 256, 64) <= 4.0 + 1e-9
    assert lr_scale("adascale", 0.0, 256, 64) == pytest.approx(1.0)
    with pytest.raises(ValueError, match="cosine"):
        lr_scale("cosine", 1.0, 2, 1)
    assert math.isclose(NoiseScale().value, 0.0)
