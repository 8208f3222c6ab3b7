"""Exponentially weighted estimates that SLO admission is built from: a mean, and a line fitted by least squares."""

from __future__ import annotations

import math

# Weight of the past in each fit, per new sample (the last ~50 samples count).
DECAY = 0.98
EWMA_ALPHA = 0.1


class Ewma:
    def __init__(self, alpha: float = EWMA_ALPHA) -> None:
        self.alpha = alpha
        self.value: float | None = None

    def add(self, sample: float) -> None:
        self.value = sample if self.value is None else self.value + self.alpha * (sample - self.value)


class LinearFit:
    """y = a + b x by exponentially weighted least squares (O(1) per sample), b >= 0. Without spread in x (one
    batch size seen, one prompt length) there is no slope, and `predict` never answers more than was measured (see
    there); None before any sample."""

    def __init__(self, min_spread: float, decay: float = DECAY, reach: float = math.inf, *,
                 cold_first: bool = False) -> None:
        """`reach`: how far past the largest x measured the slope is trusted, as a multiple of it (beyond, the
        prediction stays at that point's). `cold_first`: the first sample stands only until a second one comes (it
        carries one-time costs: an engine's first pass after start)."""
        self.min_spread = min_spread
        self.decay = decay
        self.reach = reach
        self.cold_first = cold_first
        self.added = 0
        self.top = 0.0
        self.w = self.x = self.y = self.xx = self.xy = 0.0

    def add(self, x: float, y: float) -> None:
        self.added += 1
        if self.cold_first and self.added == 2:
            self.top = 0.0
            self.w = self.x = self.y = self.xx = self.xy = 0.0
        d = self.decay
        self.top = max(self.top, x)
        self.w, self.x, self.y = d * self.w + 1, d * self.x + x, d * self.y + y
        self.xx, self.xy = d * self.xx + x * x, d * self.xy + x * y

    @property
    def samples(self) -> float:
        return self.w

    def predict(self, x: float) -> float | None:
        if self.w == 0:
            return None
        x = min(x, self.top * self.reach)
        mx, my = self.x / self.w, self.y / self.w
        var = self.xx / self.w - mx * mx
        if var >= self.min_spread ** 2:
            slope = (self.xy / self.w - mx * my) / var
            if slope > 0:
                return max(0.0, my + slope * (x - mx))
        # No slope: the measured mean at or above the measured x (a lower bound, y growing with x), in proportion
        # below it (an upper bound on the throughput measured, with no fixed part: a lower bound again).
        return my if x >= mx or mx <= 0 else my * max(0.0, x) / mx
