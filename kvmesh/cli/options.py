"""A `kvmesh up` flag that sets a service's setting takes its default, bounds and help from that
service's Settings class (services/<name>/config.py), so that the two cannot disagree."""

from __future__ import annotations

from typing import Any

import annotated_types
import typer
from pydantic_settings import BaseSettings

BOUNDS = {annotated_types.Ge: ("min", "ge"), annotated_types.Le: ("max", "le")}


def default(settings: type[BaseSettings], name: str) -> Any:
    return settings.model_fields[name].get_default(call_default_factory=True)


def setting(settings: type[BaseSettings], name: str, help: str | None = None) -> Any:
    """The typer option for `settings.<name>`; `help` where the flag means more than the field
    says (which service a port is for)."""
    field = settings.model_fields[name]
    bounds = {}
    for constraint in field.metadata:
        if type(constraint) not in BOUNDS:
            raise TypeError(f"{settings.__name__}.{name}: no flag bound for {constraint!r}")
        option, attribute = BOUNDS[type(constraint)]
        bounds[option] = getattr(constraint, attribute)
    return typer.Option(default(settings, name), help=help or field.description, **bounds)
