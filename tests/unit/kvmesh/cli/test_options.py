"""`kvmesh up`'s flags take their defaults, bounds and help from the services' Settings classes."""

import pytest
from typer.testing import CliRunner

from kvmesh.cli.app import app
from kvmesh.cli.options import setting
from services.gateway.config import GatewaySettings
from services.planner.config import PlannerSettings
from services.router.config import RouterSettings


def test_an_option_carries_the_fields_default_bounds_and_help():
    option = setting(RouterSettings, "disagg_threshold_tokens")
    field = RouterSettings.model_fields["disagg_threshold_tokens"]
    assert (option.default, option.min, option.max, option.help) == (field.default, 0, None, field.description)
    assert setting(GatewaySettings, "http_port", help="HTTP").help == "HTTP"


def test_a_constraint_no_flag_can_carry_fails_loudly():
    with pytest.raises(TypeError, match="interval_s"):
        setting(PlannerSettings, "interval_s")  # gt=0


def test_up_help_shows_the_services_defaults():
    shown = " ".join(CliRunner().invoke(app, ["up", "--help"], env={"COLUMNS": "200"}).output.split())
    for flag, default in [("--http-port", GatewaySettings.model_fields["http_port"].default),
                          ("--router-port", RouterSettings.model_fields["port"].default),
                          ("--policy", RouterSettings.model_fields["policy"].default)]:  # fmt: skip
        assert flag in shown and f"[default: {default}]" in shown


def test_a_flag_may_allow_less_than_its_field():
    assert RouterSettings.model_fields["port"].metadata[0].ge == 0  # the router alone takes any free port
    assert setting(RouterSettings, "port", min=1).min == 1


def test_up_refuses_port_0_which_it_would_hand_on_to_other_services():
    refused = CliRunner().invoke(app, ["up", "--router-port", "0"])
    assert refused.exit_code == 2 and "router-port" in refused.output


@pytest.mark.parametrize("host", ["0.0.0.0", "::"])
def test_up_refuses_a_wildcard_host_which_its_services_would_dial(host):
    refused = CliRunner().invoke(app, ["up", "--host", host], env={"COLUMNS": "200"})
    assert refused.exit_code == 2 and "every interface" in refused.output and "--advertise-host" in refused.output


def test_up_refuses_a_redis_password_that_cannot_go_into_redis_conf():
    env = {"COLUMNS": "200", "KVMESH_REDIS_PASSWORD": "a\nrequirepass b", "REDIS_URL": None}  # its own Redis
    refused = CliRunner().invoke(app, ["up"], env=env)
    assert refused.exit_code == 2 and "KVMESH_REDIS_PASSWORD" in refused.output and "line break" in refused.output
