"""Per-rank compute-time model t(b) = a + c b, fitted online from (local batch, compute seconds) pairs by
exponentially forgotten least squares, robust to outliers (Huber weights on a running residual scale) and
quick to follow a real change (a run of same-signed outliers resets the fit). Pure; tested in
tests/schedule/test_throughput.py.
"""
from __future__ import annotations

import math
from typing import Any

__all__ = ["LinearTimeModel"]


class LinearTimeModel:
    """t(b) = a + c b for one rank.

    decay: weight kept by old observations per new one (0.9: an effective window of ~10 steps).
    huber_k: residuals beyond k times the running residual scale get weight k*scale/|r| (outliers: a page
        fault, a GC pause, a noisy neighbour for one step).
    reset_after: this many consecutive outliers of the same sign mean the rank really changed speed: the fit
        restarts from the recent observations.
    """

    def __init__(self, decay: float = 0.9, huber_k: float = 3.0, reset_after: int = 4):
        if not 0.0 < decay < 1.0:
            raise ValueError(f"decay must be in (0, 1), got {decay}")
        self.decay, self.huber_k, self.reset_after = decay, huber_k, reset_after
        self._s = [0.0] * 5  # weighted sums: w, w b, w b^2, w t, w b t
        self.scale = 0.0     # running mean absolute residual (seconds)
        self.count = 0
        self._streak: list[tuple[float, float]] = []  # recent same-signed outliers
        self._streak_sign = 0
        self.a, self.c = 0.0, 0.0
        self.sizes = (math.inf, 0.0)  # smallest and largest batch seen since the last reset

    # -- fitting ------------------------------------------------------------------------------------------
    def _add(self, b: float, t: float, w: float) -> None:
        self.sizes = (min(self.sizes[0], b), max(self.sizes[1], b))
        d = self.decay
        s = self._s
        for k, v in enumerate((w, w * b, w * b * b, w * t, w * b * t)):
            s[k] = d * s[k] + v
        self._solve()

    def _batch_moments(self) -> tuple[float, float]:
        """Weighted mean and variance of the batch sizes the fit still remembers (needs weight > 0)."""
        sw, sb, sbb = self._s[0], self._s[1], self._s[2]
        mean_b = sb / sw
        return mean_b, sbb / sw - mean_b * mean_b

    def _solve(self) -> None:
        sw, _, _, st, sbt = self._s
        if sw <= 0:
            return
        mean_b, var_b = self._batch_moments()
        mean_t = st / sw
        # Only a spread of batch sizes identifies the intercept; with (nearly) one size, keep the previous
        # intercept (0 at first: time proportional to the batch) and fit the slope through the mean.
        if var_b > 1e-6 * max(mean_b * mean_b, 1.0):
            c = (sbt / sw - mean_b * mean_t) / var_b
            a = mean_t - c * mean_b
        else:
            a = min(self.a, mean_t)
            c = (mean_t - a) / mean_b if mean_b > 0 else self.c
        if c <= 0 or a < 0:  # noise can tilt a narrow fit: fall back to a line through the mean and 0
            a, c = 0.0, mean_t / mean_b if mean_b > 0 else self.c
        self.a, self.c = a, max(c, 1e-12)

    def observe(self, b: float, t: float) -> bool:
        """Adds one step's (local batch, compute seconds); returns True if the model was reset."""
        if b <= 0 or not math.isfinite(t) or t < 0:
            return False
        if self.count == 0:
            self._add(b, t, 1.0)
            self.scale = 0.1 * t
            self.count = 1
            return False
        r = t - self.predict(b)
        limit = self.huber_k * max(self.scale, 0.02 * self.predict(b), 1e-6)
        self.count += 1
        if abs(r) <= limit:
            self._streak, self._streak_sign = [], 0
            self._add(b, t, 1.0)
            self.scale = 0.9 * self.scale + 0.1 * abs(r)
            return False
        sign = 1 if r > 0 else -1
        if sign != self._streak_sign:
            self._streak, self._streak_sign = [], sign
        self._streak.append((b, t))
        if len(self._streak) >= self.reset_after:
            recent = self._streak
            self._s, self.a, self.c, self.sizes = [0.0] * 5, 0.0, 0.0, (math.inf, 0.0)
            for rb, rt in recent:
                self._add(rb, rt, 1.0)
            self.scale = 0.1 * sum(rt for _, rt in recent) / len(recent)
            self._streak, self._streak_sign = [], 0
            return True
        self._add(b, t, limit / abs(r))
        return False

    def predict(self, b: float) -> float:
        return self.a + self.c * b

    @property
    def ready(self) -> bool:
        return self.count > 0

    @property
    def identified(self) -> bool:
        """Whether batch sizes 20% apart were seen (else the intercept a is a guess)."""
        return self.sizes[1] >= 1.2 * self.sizes[0]

    @property
    def intercept_unknown(self) -> bool:
        """Whether another batch size should be tried: not identified since the last reset, or the fit fell back
        to a line through 0 (a = 0: its sizes contradicted a line with a positive intercept, as a load burst at
        one of them does) and the weighted spread of the sizes it still remembers is under 5% of their mean,
        so the intercept stays 0 for good unless another size is seen."""
        if not self.identified:
            return True
        if self.a > 0 or self._s[0] <= 0:
            return False
        mean_b, var_b = self._batch_moments()
        return var_b < (0.05 * mean_b) ** 2

    # -- checkpointing --------------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {"s": list(self._s), "scale": self.scale, "count": self.count, "a": self.a, "c": self.c,
                "streak": [list(x) for x in self._streak], "streak_sign": self._streak_sign,
                "sizes": [self.sizes[0] if math.isfinite(self.sizes[0]) else -1.0, self.sizes[1]]}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._s = [float(v) for v in state["s"]]
        self.scale, self.count = float(state["scale"]), int(state["count"])
        self.a, self.c = float(state["a"]), float(state["c"])
        self._streak = [(float(b), float(t)) for b, t in state["streak"]]
        self._streak_sign = int(state["streak_sign"])
        lo, hi = state["sizes"]
        self.sizes = (math.inf if lo < 0 else float(lo), float(hi))
