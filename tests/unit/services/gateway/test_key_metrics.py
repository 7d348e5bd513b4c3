"""Per-key counters keep at most `max_keys` key labels; later keys count as "other"."""

from __future__ import annotations

import pytest
from prometheus_client import REGISTRY

from services.gateway.key_metrics import KeyMetrics


def value(metric: str, **labels) -> float:
    return REGISTRY.get_sample_value(metric, labels) or 0.0


def test_the_first_max_keys_names_keep_their_label_and_the_rest_are_other():
    before = value("kvmesh_gateway_key_requests_total", key="other", status="200")
    metrics = KeyMetrics(max_keys=2)
    for name in ("km-a", "km-b", "km-c", "km-a", "km-d", "km-b"):
        metrics.request(name, "200")
    assert value("kvmesh_gateway_key_requests_total", key="km-a", status="200") == 2
    assert value("kvmesh_gateway_key_requests_total", key="km-b", status="200") == 2
    assert value("kvmesh_gateway_key_requests_total", key="other", status="200") - before == 2
    for name in ("km-c", "km-d"):
        assert REGISTRY.get_sample_value("kvmesh_gateway_key_requests_total", {"key": name, "status": "200"}) is None


def test_tokens_by_kind():
    metrics = KeyMetrics(max_keys=1)
    metrics.tokens("kt-a", prompt=10, cached=4, completion=7)
    metrics.tokens("kt-a", prompt=1, cached=0, completion=2)
    got = {
        kind: value("kvmesh_gateway_key_tokens_total", key="kt-a", kind=kind)
        for kind in ("prompt", "cached", "completion")
    }
    assert got == {"prompt": 11, "cached": 4, "completion": 9}


def test_zero_keys_labels_every_key_other_and_a_negative_bound_is_refused():
    before = value("kvmesh_gateway_key_requests_total", key="other", status="429")
    KeyMetrics(max_keys=0).request("kz-a", "429")
    assert value("kvmesh_gateway_key_requests_total", key="other", status="429") - before == 1
    with pytest.raises(ValueError, match="max_keys"):
        KeyMetrics(max_keys=-1)
