"""Prometheus's text format read as figures: one scrape's samples, summed counters and gauges,
histograms merged over their label sets, and the difference of two scrapes (a counter's or a
histogram's change over the interval between them). Pure: text in, numbers out."""

from __future__ import annotations

import math
from dataclasses import dataclass

from prometheus_client.parser import text_string_to_metric_families

Labels = frozenset[tuple[str, str]]


@dataclass
class Histogram:
    buckets: dict[float, float]  # upper bound → cumulative count
    total: float
    count: float

    def minus(self, before: Histogram | None) -> Histogram:
        """What was observed since `before`; all of it when the process restarted in between
        (its counts went down), as Prometheus's rate() reads a reset."""
        if before is None or self.count < before.count:
            return self
        return Histogram(
            {le: n - before.buckets.get(le, 0.0) for le, n in self.buckets.items()},
            self.total - before.total,
            self.count - before.count,
        )

    def quantile(self, q: float) -> float:
        """Prometheus's histogram_quantile: linear within the bucket the rank falls in; NaN when empty."""
        if self.count <= 0:
            return math.nan
        rank, lower, below = q * self.count, 0.0, 0.0
        for le in sorted(self.buckets):
            cumulative = self.buckets[le]
            if cumulative >= rank:
                if math.isinf(le):
                    return lower
                inside = cumulative - below
                return lower + (le - lower) * ((rank - below) / inside if inside else 0.0)
            lower, below = le, cumulative
        return lower

    def share_within(self, threshold: float) -> float:
        """The share of observations at most `threshold`, linear within its bucket (the inverse of
        quantile); NaN without observations."""
        if self.count <= 0:
            return math.nan
        lower, below = 0.0, 0.0
        for le in sorted(self.buckets):
            cumulative = self.buckets[le]
            if threshold < le:
                if math.isinf(le):
                    return below / self.count
                return (below + (cumulative - below) * (threshold - lower) / (le - lower)) / self.count
            lower, below = le, cumulative
        return below / self.count

    @property
    def mean(self) -> float:
        return self.total / self.count if self.count > 0 else math.nan


@dataclass(frozen=True)
class Scrape:
    samples: dict[str, dict[Labels, float]]  # sample name (as exposed: `_total`, `_bucket`…) → labels → value

    @classmethod
    def parse(cls, text: str) -> Scrape:
        samples: dict[str, dict[Labels, float]] = {}
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                samples.setdefault(sample.name, {})[frozenset(sample.labels.items())] = sample.value
        return cls(samples)

    def values(self, name: str) -> dict[Labels, float]:
        """A counter's or gauge's samples; a counter may be exposed with `_total` (prometheus_client)
        or without (Triton's custom metrics)."""
        return self.samples.get(f"{name}_total") or self.samples.get(name) or {}

    def total(self, name: str) -> float | None:
        """The sum over every label set; None when the metric is not exposed."""
        found = self.values(name)
        return sum(found.values()) if found else None

    def by_label(self, name: str, label: str) -> dict[str, float]:
        """The sum for each value of one label."""
        sums: dict[str, float] = {}
        for labels, value in self.values(name).items():
            key = dict(labels).get(label, "")
            sums[key] = sums.get(key, 0.0) + value
        return sums

    def histogram(self, name: str) -> Histogram | None:
        """Merged over every label set but `le`; None when not exposed."""
        buckets = self.samples.get(f"{name}_bucket")
        if not buckets:
            return None
        merged = Histogram({}, sum(self.samples.get(f"{name}_sum", {}).values()), 0.0)
        for labels, value in buckets.items():
            le = float(dict(labels)["le"])
            merged.buckets[le] = merged.buckets.get(le, 0.0) + value
        merged.count = sum(self.samples.get(f"{name}_count", {}).values())
        return merged


def increase(now: float | None, before: float | None) -> float | None:
    """A counter's change between two scrapes: None unless both have it; all of `now` after a reset."""
    if now is None or before is None:
        return None
    return now if now < before else now - before
