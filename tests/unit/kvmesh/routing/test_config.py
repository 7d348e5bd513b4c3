"""kvmesh/routing/config.py: a router's config crosses Router.Session whole, and a bad one fails."""

import pytest
from pydantic import ValidationError

from kvmesh.routing.config import RoutingConfig
from kvmesh.routing.framework.plugins import SchedulingProfileSpec
from services.router.config import RouterSettings


def test_a_routers_config_crosses_the_wire_whole():
    custom = SchedulingProfileSpec(
        scorers={"kv_overlap": 2.0}, picker="softmax", params={"softmax": {"temperature": 0.5}}
    )
    settings = RouterSettings(policy="mine", policies={"mine": custom}, disagg_threshold_tokens=9, request_lease_s=30)
    config = settings.routing()
    assert RoutingConfig.of_proto(config.to_proto()) == config
    assert config.policies["mine"] == custom and config.disagg_threshold_tokens == 9


def test_a_config_naming_an_unknown_policy_or_plugin_fails():
    with pytest.raises(ValidationError, match="'nope' is not one of"):
        RoutingConfig(policy="nope")
    with pytest.raises(ValidationError, match="unknown picker 'best'"):
        RoutingConfig(policy="p", policies={"p": SchedulingProfileSpec(picker="best")})
