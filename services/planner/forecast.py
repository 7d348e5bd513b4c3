"""Forecasters of the next interval's value of a series (a pool's need, in workers). Chosen by name
(`FORECASTERS`, the one registration list); the statistical ones fall back to a moving average
while the history is too short to fit."""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal, Protocol

import numpy as np

# Beside the registry below, so the pure core imports no settings (config.py takes it from here).
ForecasterName = Literal["constant", "moving-average", "peak", "bursts", "holt-winters", "arima"]


class Forecaster(Protocol):
    def predict(self, history: Sequence[float]) -> float: ...


@dataclass(frozen=True)
class Constant:
    """The next interval looks like the last one."""

    def predict(self, history: Sequence[float]) -> float:
        return float(history[-1]) if len(history) else 0.0


@dataclass(frozen=True)
class MovingAverage:
    window: int = 6

    def predict(self, history: Sequence[float]) -> float:
        tail = history[-self.window :]
        return float(np.mean(tail)) if len(tail) else 0.0


def smoothed(history: Sequence[float], smooth: int) -> np.ndarray:
    """Each value averaged with its `smooth` - 1 predecessors (fewer at the start)."""
    sums = np.concatenate(([0.0], np.cumsum(np.asarray(history, dtype=float))))
    end = np.arange(1, len(history) + 1)
    start = np.maximum(end - smooth, 0)
    return (sums[end] - sums[start]) / (end - start)


@dataclass(frozen=True)
class Peak:
    """The next interval may be as busy as the busiest of the last `window`: for loads that come
    in bursts shorter than a worker takes to start, capacity is held between them. With `smooth`
    > 1 each interval is averaged with its predecessors first: short intervals see a burst early,
    and a one-interval spike of a handful of requests does not ask for workers of its own."""

    window: int = 30
    smooth: int = 1

    def predict(self, history: Sequence[float]) -> float:
        tail = smoothed(history, self.smooth)[-self.window :]
        return float(tail.max()) if len(tail) else 0.0


@dataclass(frozen=True)
class Bursts:
    """For loads that come in bursts with silences longer than any useful window: the peak of the
    last `window` intervals, each averaged with its `smooth` - 1 predecessors (a burst's queue
    spreads over the intervals after it, so one 2-s spike does not need its own workers), and never
    less than the `quantile` of the busy intervals' smoothed values over the whole history. Between
    bursts that holds what bursts here usually need: a worker takes longer to start than a burst
    takes to miss its targets, so capacity must be there when the next one arrives, and a plain
    peak either lets it go in the silence or holds the largest burst's through it."""

    window: int = 30
    smooth: int = 2
    quantile: float = 0.9

    def predict(self, history: Sequence[float]) -> float:
        if not len(history):
            return 0.0
        values = smoothed(history, self.smooth)
        busy = values[values > 0]
        floor = float(np.quantile(busy, self.quantile)) if len(busy) else 0.0
        return max(float(values[-self.window :].max()), floor)


@dataclass(frozen=True)
class HoltWinters:
    """Additive trend, plus an additive season of `season` intervals when given."""

    season: int = 0

    def predict(self, history: Sequence[float]) -> float:
        if len(history) < max(6, 2 * self.season + 2):
            return MovingAverage().predict(history)
        from statsmodels.tsa.holtwinters import ExponentialSmoothing  # slow import, only when fitted

        series = np.asarray(history, dtype=float)
        if np.ptp(series) == 0:
            return float(series[-1])
        seasonal = "add" if self.season else None
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # convergence chatter on short, flat series
            fit = ExponentialSmoothing(
                series, trend="add", seasonal=seasonal, seasonal_periods=self.season or None,
                initialization_method="estimated",
            ).fit()  # fmt: skip
        return max(float(fit.forecast(1)[0]), 0.0)


@dataclass(frozen=True)
class Arima:
    order: tuple[int, int, int] = (1, 1, 1)

    def predict(self, history: Sequence[float]) -> float:
        if len(history) < 8:
            return MovingAverage().predict(history)
        from statsmodels.tsa.arima.model import ARIMA

        series = np.asarray(history, dtype=float)
        if np.ptp(series) == 0:
            return float(series[-1])
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            fit = ARIMA(series, order=self.order).fit()
        return max(float(fit.forecast(1)[0]), 0.0)


FORECASTERS: dict[ForecasterName, type[Forecaster]] = {
    "constant": Constant,
    "moving-average": MovingAverage,
    "peak": Peak,
    "bursts": Bursts,
    "holt-winters": HoltWinters,
    "arima": Arima,
}


# The forecasters that look back over a window of intervals, and those that smooth it.
WINDOWED = ("moving-average", "peak", "bursts")
SMOOTHED = ("peak", "bursts")


def make(name: ForecasterName, window: int | None = None, smooth: int | None = None, **options) -> Forecaster:
    if name not in FORECASTERS:
        raise ValueError(f"forecaster {name!r}: one of {', '.join(FORECASTERS)}")
    if window is not None and name in WINDOWED:
        options["window"] = window
    if smooth is not None:
        if name not in SMOOTHED:
            raise ValueError(f"forecaster {name!r} does not smooth; only {', '.join(SMOOTHED)} do")
        options["smooth"] = smooth
    return FORECASTERS[name](**options)
