"""The traces the benchmarks replay by default ship with the repository, whole, and parse."""

from __future__ import annotations

import pytest

from bench.common import AZURE_CODE_TRACE, MOONCAKE_TRACE
from kvmesh.replay import traces


@pytest.mark.parametrize(
    ("path", "requests", "shares_prefixes"), [(MOONCAKE_TRACE, 3993, True), (AZURE_CODE_TRACE, 8819, False)]
)
def test_a_shipped_trace_loads(path, requests, shares_prefixes):
    loaded = traces.load(path)
    assert len(loaded) == requests
    arrivals = [r.arrival_s for r in loaded]
    assert arrivals == sorted(arrivals) and arrivals[0] == 0
    assert all(r.input_length > 0 and r.output_length > 0 for r in loaded)
    assert all(bool(r.hash_ids) == shares_prefixes for r in loaded)
