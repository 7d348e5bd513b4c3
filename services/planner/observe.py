"""What the planner measures each interval, from the gateways' Prometheus metrics: requests
arriving per second (the demand; under overload the finished ones are capped by the capacity
that falls short), prompt length of arrivals, output length of finished requests, TTFT and ITL
at the targets' percentile and their histograms (the share within a target), requests in flight.
Counters and histograms are differenced between scrapes, so each observation covers one interval
only."""

from __future__ import annotations

import math
import ssl
import time
from dataclasses import dataclass

import httpx

from kvmesh.metrics_text import Histogram, Scrape
from kvmesh.tls import MutualTls

HISTOGRAMS = {
    "kvmesh_gateway_prompt_length_tokens": "isl",
    "kvmesh_gateway_output_length_tokens": "osl",
    "kvmesh_gateway_ttft_seconds": "ttft",
    "kvmesh_gateway_itl_seconds": "itl",
}


@dataclass(frozen=True)
class Observation:
    interval_s: float
    requests_per_s: float
    isl_mean: float
    isl_p: float
    osl_mean: float
    osl_p: float
    ttft_p_ms: float | None  # None: no request started in the interval
    itl_p_ms: float | None
    in_flight: float
    ttft: Histogram | None = None  # the interval's, for the share within the target
    itl: Histogram | None = None


class MetricsUnavailable(Exception):
    """No gateway answered: the planner holds its last decision."""


def scrape(
    url: str, timeout_s: float = 2.0, verify: ssl.SSLContext | bool = True
) -> tuple[dict[str, Histogram], float]:
    """The gateway's histograms by short name, and its in-flight gauge. `verify`: for an https URL,
    what to trust and the certificate to show (kvmesh.tls.MutualTls.client_ssl_context)."""
    text = httpx.get(url, timeout=timeout_s, verify=verify).raise_for_status().text
    scraped = Scrape.parse(text)
    histograms = {short: h for name, short in HISTOGRAMS.items() if (h := scraped.histogram(name)) is not None}
    in_flight = scraped.total("kvmesh_gateway_in_flight") or 0.0
    return histograms, in_flight


class GatewayMetrics:
    def __init__(self, urls: list[str], percentile: float, tls: MutualTls | None = None):
        """`tls`: the planner's certificate, shown to gateways that serve HTTPS with the mesh's CA."""
        self.urls = urls
        self.percentile = percentile
        self.tls = tls
        self._last: dict[str, tuple[dict[str, Histogram], float]] = {}

    def observe(self) -> Observation:
        now = time.monotonic()
        merged: dict[str, Histogram] = {}
        in_flight, elapsed, answered, errors = 0.0, 0.0, 0, []
        for url in self.urls:
            try:
                # Read at each scrape: a certificate renewed on disk is the one shown.
                histograms, flight = scrape(url, verify=self.tls.client_ssl_context() if self.tls else True)
            except (httpx.HTTPError, ValueError) as e:
                errors.append(f"{url}: {e}")
                continue
            answered += 1
            before, then = self._last.get(url, ({}, now))
            self._last[url] = (histograms, now)
            elapsed = max(elapsed, now - then)
            in_flight += flight
            for name, h in histograms.items():
                delta = h.minus(before.get(name))
                if name in merged:
                    m = merged[name]
                    merged[name] = Histogram(
                        {le: m.buckets.get(le, 0) + n for le, n in delta.buckets.items()},
                        m.total + delta.total,
                        m.count + delta.count,
                    )
                else:
                    merged[name] = delta
        if not answered:
            raise MetricsUnavailable(f"no gateway metrics: {'; '.join(errors)}")
        if elapsed <= 0:
            raise MetricsUnavailable("first scrape: nothing to compare with yet")
        q = self.percentile / 100.0
        isl, osl = merged.get("isl"), merged.get("osl")
        ttft, itl = merged.get("ttft"), merged.get("itl")
        arrived = isl.count if isl else 0.0
        return Observation(
            interval_s=elapsed,
            requests_per_s=arrived / elapsed,
            isl_mean=_or0(isl.mean if isl else math.nan),
            isl_p=_or0(isl.quantile(q) if isl else math.nan),
            osl_mean=_or0(osl.mean if osl else math.nan),
            osl_p=_or0(osl.quantile(q) if osl else math.nan),
            ttft_p_ms=_ms(ttft.quantile(q)) if ttft and ttft.count > 0 else None,
            itl_p_ms=_ms(itl.quantile(q)) if itl and itl.count > 0 else None,
            in_flight=in_flight,
            ttft=ttft if ttft and ttft.count > 0 else None,
            itl=itl if itl and itl.count > 0 else None,
        )


def _or0(x: float) -> float:
    return 0.0 if math.isnan(x) else x


def _ms(seconds: float) -> float:
    return seconds * 1000.0
