"""`kvmesh gateway|router|worker ...`: run one service in this process.

Each command execs `python -m services.<name>`, passing the remaining arguments through: the
service parses them with its own Settings class.
"""

from __future__ import annotations

import os
import sys

import typer

SERVICES = {
    "gateway": "the front door: gRPC Inference/Models and OpenAI-compatible HTTP",
    "router": "picks the worker for each request",
    "worker": "one Triton server running an engine, registered in Redis",
    "kvindex": "keeps the global KV block index in Redis from the engines' KV events",
    "planner": "sizes the prefill and decode pools against TTFT/ITL targets",
}


def exec_service(name: str, args: list[str]) -> None:
    os.execv(sys.executable, [sys.executable, "-m", f"services.{name}", *args])


def add_commands(app: typer.Typer) -> None:
    for name, help_text in SERVICES.items():

        def command(ctx: typer.Context, _name: str = name) -> None:
            exec_service(_name, list(ctx.args))

        app.command(
            name,
            help=f"Run the {name}: {help_text}. Options: `kvmesh {name} --help`.",
            context_settings={"allow_extra_args": True, "ignore_unknown_options": True, "help_option_names": []},
        )(command)
