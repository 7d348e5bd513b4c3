"""The gateway's cross-field rules: bad config fails at start naming the flags."""

from __future__ import annotations

import pytest

from services.gateway.config import GatewaySettings


@pytest.mark.parametrize(("interval_ms", "stall_timeout_s"), [(60_000, 30), (15_000, 30), (500, 1)])
def test_a_whole_answer_interval_the_stall_timeout_would_cut_is_refused_naming_both(interval_ms, stall_timeout_s):
    with pytest.raises(ValueError, match="--whole-answer-interval-ms .* under half of --stall-timeout-s"):
        GatewaySettings(whole_answer_interval_ms=interval_ms, stall_timeout_s=stall_timeout_s)


def test_a_whole_answer_interval_well_within_the_stall_timeout_is_kept():
    settings = GatewaySettings(whole_answer_interval_ms=14_000, stall_timeout_s=30)
    assert (settings.whole_answer_interval_ms, settings.stall_timeout_s) == (14_000, 30)
