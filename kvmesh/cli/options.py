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


def setting(settings: type[BaseSettings], name: str, help: str | None = None, **bounds: Any) -> Any:
    """The typer option for `settings.<name>`; `help` where the flag means more than the field
    says (which service a port is for), `bounds` (min, max) where the flag allows less than the
    field (a port `kvmesh up` hands to other services cannot be 0, "any free port")."""
    field = settings.model_fields[name]
    for constraint in field.metadata:
        if type(constraint) not in BOUNDS:
            raise TypeError(f"{settings.__name__}.{name}: no flag bound for {constraint!r}")
        option, attribute = BOUNDS[type(constraint)]
        bounds.setdefault(option, getattr(constraint, attribute))
    return typer.Option(default(settings, name), help=help or field.description, **bounds)
