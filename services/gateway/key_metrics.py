"""Requests and tokens per API key, as Prometheus counters whose `key` label stays bounded: the first
`max_keys` key names this process sees keep their own label, every later one counts as "other"
(names come from clients' keys, and each label value is a time series for good)."""

from __future__ import annotations

from prometheus_client import Counter

OTHER = "other"
KEY_REQUESTS = Counter("kvmesh_gateway_key_requests", "Requests by API key name and outcome", ["key", "status"])
KEY_TOKENS = Counter("kvmesh_gateway_key_tokens", "Tokens by API key name and kind", ["key", "kind"])


class KeyMetrics:
    def __init__(self, max_keys: int = 100):
        if max_keys < 0:
            raise ValueError(f"max_keys: must be ≥ 0, not {max_keys}")
        self.max_keys = max_keys
        self._labelled: set[str] = set()
        self._children: dict[tuple, object] = {}  # labels() costs µs a call; each request makes four

    def label(self, name: str) -> str:
        if name in self._labelled:
            return name
        if len(self._labelled) < self.max_keys:
            self._labelled.add(name)
            return name
        return OTHER

    def request(self, name: str, status: str) -> None:
        self._child(KEY_REQUESTS, self.label(name), status).inc()

    def tokens(self, name: str, prompt: int, cached: int, completion: int) -> None:
        label = self.label(name)
        for kind, count in (("prompt", prompt), ("cached", cached), ("completion", completion)):
            if count:
                self._child(KEY_TOKENS, label, kind).inc(count)

    def _child(self, counter: Counter, *labels: str):
        child = self._children.get((counter, *labels))
        if child is None:
            child = self._children[(counter, *labels)] = counter.labels(*labels)
        return child
