"""The planner's choices: each name the settings accept has exactly one factory, and a name that
is not one of them stops the planner at start with a message naming the field."""

from typing import get_args

import pytest

from kvmesh.settings import load
from services.planner import forecast
from services.planner.config import ConnectorName, PlannerSettings
from services.planner.connectors import factory
from services.planner.forecast import ForecasterName


def test_every_choice_has_one_factory():
    assert set(get_args(ForecasterName)) == set(forecast.FORECASTERS)
    assert set(get_args(ConnectorName)) == set(factory.CONNECTORS)


@pytest.mark.parametrize("field", ["forecaster", "connector"])
def test_an_unknown_choice_fails_naming_the_field(field):
    required = ["--profile", "p.json", "--gateway-metrics", '["http://127.0.0.1:1/metrics"]']
    with pytest.raises(SystemExit, match=rf"invalid configuration: {field}: "):
        load(PlannerSettings, [*required, f"--{field}", "nope"])


def test_smoothing_a_forecaster_that_does_not_smooth_fails_naming_the_field():
    required = ["--profile", "p.json", "--gateway-metrics", '["http://127.0.0.1:1/metrics"]']
    with pytest.raises(SystemExit, match="invalid configuration: .*forecast_smooth: the arima forecaster does not"):
        load(PlannerSettings, [*required, "--forecaster", "arima", "--forecast-smooth", "2"])
