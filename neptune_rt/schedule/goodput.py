"""Statistical side of the goodput model (Pollux, OSDI'21): the gradient noise scale from per-rank squared
gradient norms against the squared norm of their weighted average, statistical efficiency (with heavy-ball
momentum's larger critical batch), and learning-rate rescaling rules. Pure; tested in
tests/schedule/test_goodput.py (noise scale of a linear regression with known noise, efficiency against a simulated
SGD step, momentum's critical batch against the exact noisy quadratic model).
"""
from __future__ import annotations

import math
from typing import Any, Sequence

__all__ = ["NoiseScale", "critical_batch", "efficiency", "lr_scale", "LR_RULES"]

LR_RULES = ("adascale", "sqrt", "linear")


# Largest factor momentum may give the critical batch: 1 / (1 - m) is checked up to m = 0.9 (the exact noisy
# quadratic model at condition number 1000, and this project's goodput benchmark); beyond that the same model
# shows the gain falling (6.3x at m = 0.95), so larger momenta get 10x, not 20x or 100x.
MAX_MOMENTUM_FACTOR = 10.0


def critical_batch(noise_scale: float, momentum: float = 0.0) -> float:
    """The batch beyond which larger batches lose per-sample progress: the noise scale phi for plain SGD
    (McCandlish et al. 2018), phi / (1 - m) under heavy-ball momentum m (the factor at most
    MAX_MOMENTUM_FACTOR).

    A small batch is noise-limited: its best learning rate grows linearly with the batch, and momentum adds
    nothing there (it only rescales the effective learning rate eta / (1 - m)). A large batch is
    curvature-limited: plain SGD's learning rate is capped by the sharpest direction, while momentum's
    effective step may be about 1 / (1 - m) times larger at the same stability. So progress keeps growing with
    the batch that much further (the noisy quadratic model of Zhang et al., NeurIPS 2019: momentum leaves
    small batches unchanged and extends perfect scaling to larger ones). This is a heuristic, not a derivation.
    Exact in that model (benchmarks/nqm_momentum.py), the factor is 12.3 at m = 0.9 and condition number 1000,
    but only 6.3 at m = 0.95 (past heavy ball's best momentum for that conditioning) and 1.6 at m = 0.9 with
    condition number 100. On the goodput benchmark (m = 0.9, phi = 150-250) the measured per-sample efficiency
    of B = 1024 against 64 is 0.83; phi alone predicts 0.18-0.25, phi / (1 - m) 0.62-0.73 (docs/schedule.md)."""
    if not 0.0 <= momentum < 1.0:
        raise ValueError(f"momentum must be in [0, 1), got {momentum}")
    return max(noise_scale, 0.0) * min(1.0 / (1.0 - momentum), MAX_MOMENTUM_FACTOR)


def efficiency(noise_scale: float, batch: float, base_batch: float, rule: str = "adascale",
               momentum: float = 0.0) -> float:
    """Statistical efficiency of `batch` relative to `base_batch`: expected training progress per sample, with
    the learning rate scaled by `rule` from one that is right for `base_batch`.

    From the quadratic model of one SGD step (McCandlish et al. 2018, sec. 2.2), with lr eta on a batch of B:
    progress eta |G|^2 - eta^2/2 (G^T H G)(1 + phi/B) (phi the noise scale, H taken isotropic so phi is also
    the curvature-weighted one). Relative to the lr that is optimal at B0, a lr multiplier s at B gives
    progress per step s (2 - s/r) times that at B0, where r = (phi + B0) B / ((phi + B) B0) is the ratio of
    the optimal learning rates (the AdaScale gain). Per sample, with k = B/B0:
        E(B) = (s/k) (2 - s/r)
    adascale (s = r): E = r/k = (phi + B0)/(phi + B), Pollux's efficiency (the largest any rule reaches);
    sqrt (s = sqrt(k)) and linear (s = k) fall short of it, and a rule whose lr passes 2r diverges: E <= 0,
    clipped to 0. Exactly 1 at B = B0 for every rule.

    With heavy-ball `momentum` m the critical batch phi / (1 - m) (`critical_batch`) takes phi's place in these
    formulas, r included. That is an empirical substitution (Pollux's form at the critical batch), not a result
    of the one-step model, which is plain SGD's and underrates large batches under momentum. The applied AdaScale
    multiplier stays the gain at phi (`lr_scale`), smaller than this r. So under momentum "the learning rate
    the rule gives" and "the most any rule reaches" hold only within the substitution. AdaScale was measured in
    23 runs beside fixed batches under it, sqrt in one (docs/schedule.md, "Measured (2026-12-03)")."""
    phi = critical_batch(noise_scale, momentum)
    if batch == base_batch:
        return 1.0
    gain = (phi + base_batch) * batch / ((phi + batch) * base_batch)
    if rule == "adascale":
        return gain * base_batch / batch
    s = lr_scale(rule, phi, batch, base_batch)
    return max(s * base_batch / batch * (2.0 - s / gain), 0.0)


def lr_scale(rule: str, noise_scale: float, batch: float, base_batch: float) -> float:
    """Learning-rate multiplier at `batch` for a schedule tuned at `base_batch`.
    adascale: the AdaScale gain r = (S/B0 + |G|^2) / (S/B + |G|^2) = (phi + B0) B / ((phi + B) B0), between 1
    and B/B0; sqrt: sqrt(B/B0); linear: B/B0."""
    ratio = batch / base_batch
    if rule == "adascale":
        phi = max(noise_scale, 0.0)
        return (phi + base_batch) * ratio / (phi + batch)
    if rule == "sqrt":
        return math.sqrt(ratio)
    if rule == "linear":
        return ratio
    raise ValueError(f"unknown learning-rate rule {rule!r} (use one of {', '.join(LR_RULES)})")


class NoiseScale:
    """Smoothed estimate of the gradient noise scale phi = tr(Sigma) / |G|^2 (per-sample covariance trace
    over the squared true gradient).

    Each step gives, for rank i with b_i samples, |g_i|^2 (its local mean gradient, before the all-reduce)
    and |g|^2 of the weighted average g = sum_i (b_i/B) g_i, over n ranks:
        E[sum_i (b_i/B) |g_i|^2] = |G|^2 + S n / B,     E[|g|^2] = |G|^2 + S / B,
    so S_hat = (sum_i b_i |g_i|^2 - B |g|^2) / (n - 1) and G2_hat = |g|^2 - S_hat / B are unbiased. (Any
    weights summing to 1 would be unbiased; weighting by b_i keeps a rank with a tiny share, whose norm is the
    noisiest, from dominating the variance.) Both are
    smoothed separately (exponential moving averages) and phi is their ratio, as in McCandlish et al.: the
    ratio of two unbiased averages, not an average of noisy ratios.
    """

    def __init__(self, decay: float = 0.95):
        if not 0.0 < decay < 1.0:
            raise ValueError(f"decay must be in (0, 1), got {decay}")
        self.decay = decay
        self.s_avg = 0.0
        self.g2_avg = 0.0
        self.weight = 0.0  # bias correction of the EWMA (Adam-style), so early values are not pulled to 0
        self.count = 0

    @staticmethod
    def estimate(local_sq_norms: Sequence[float], local_batches: Sequence[int],
                 avg_sq_norm: float) -> tuple[float, float]:
        """One step's unbiased (S, |G|^2) from per-rank squared norms and the average's squared norm."""
        pairs = [(float(n), int(b)) for n, b in zip(local_sq_norms, local_batches) if b > 0]
        if len(pairs) < 2:
            raise ValueError("the noise scale needs at least two ranks with samples")
        total = sum(b for _, b in pairs)
        s = (sum(b * n for n, b in pairs) - total * avg_sq_norm) / (len(pairs) - 1)
        return s, avg_sq_norm - s / total

    def observe(self, local_sq_norms: Sequence[float], local_batches: Sequence[int], avg_sq_norm: float) -> None:
        s, g2 = self.estimate(local_sq_norms, local_batches, avg_sq_norm)
        if not (math.isfinite(s) and math.isfinite(g2)):
            return
        d = self.decay
        self.s_avg = d * self.s_avg + (1 - d) * s
        self.g2_avg = d * self.g2_avg + (1 - d) * g2
        self.weight = d * self.weight + (1 - d)
        self.count += 1

    @property
    def trace(self) -> float:
        return self.s_avg / self.weight if self.weight > 0 else 0.0

    @property
    def grad_sq(self) -> float:
        return self.g2_avg / self.weight if self.weight > 0 else 0.0

    @property
    def value(self) -> float:
        """phi (samples); 0 before the first observation. A non-positive |G|^2 estimate (pure noise so
        far) gives a very large phi: large batches are then fully efficient."""
        if self.weight <= 0:
            return 0.0
        s, g2 = max(self.trace, 0.0), self.grad_sq
        return s / g2 if g2 > 1e-30 else (1e12 if s > 0 else 0.0)

    def state_dict(self) -> dict[str, Any]:
        return {"s_avg": self.s_avg, "g2_avg": self.g2_avg, "weight": self.weight, "count": self.count}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.s_avg, self.g2_avg = float(state["s_avg"]), float(state["g2_avg"])
        self.weight, self.count = float(state["weight"]), int(state["count"])
