"""Bad input, generated: schemathesis cases from the REST front's OpenAPI document and a hypothesis
suite of OpenAI request bodies, against a mesh of simulated workers (`kvmesh up --engine sim`).

    .venv/bin/python -m bench.fuzz [--rest-per-operation 500] [--openai-per-endpoint 2500]

Prints the number of cases, the answers by status, the findings (5xx for a client's request,
error bodies not in the front's error shape, malformed 200s), service crashes/tracebacks, and
whether the mesh still serves afterwards. The defaults make about 11,000 cases (operations
without parameters have only a few distinct ones).
"""

from __future__ import annotations

import argparse
import shutil
import time

from bench.common import RESULTS, save
from kvmesh.cli import rest_front
from kvmesh.cli.local_mesh import LocalMesh
from tests.support import fuzz


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rest-per-operation", type=int, default=500)
    parser.add_argument("--openai-per-endpoint", type=int, default=2500)
    args = parser.parse_args()
    logs = RESULTS / "fuzz-logs"  # kept: a traceback in them is a finding to read
    shutil.rmtree(logs, ignore_errors=True)
    mesh = LocalMesh.start(logs, extra_args=fuzz.SIM_MESH_ARGS)
    admin = fuzz.key_headers(mesh.admin_key)
    try:
        start = time.monotonic()
        rest = fuzz.fuzz_rest(mesh.rest, rest_front.OPENAPI, args.rest_per_operation, admin)
        openai = fuzz.fuzz_openai(mesh.http, mesh.model, args.openai_per_endpoint, admin)
        elapsed = time.monotonic() - start
        healthy = fuzz.healthy(mesh.http, mesh.rest, mesh.model, admin)
        crashes = fuzz.crashes(mesh.log_dir)
    finally:
        mesh.stop()
    save(
        "fuzz",
        {
            "cases": rest.cases + openai.cases,
            "rest_cases": rest.cases,
            "openai_cases": openai.cases,
            "seconds": round(elapsed, 1),
            "findings": rest.findings + openai.findings,
            "router_503_no_live_worker": rest.router_no_worker,
            "crashes": crashes,
            "healthy_afterwards": healthy,
            "statuses": {f"{op} {status}": n for (op, status), n in sorted((rest.statuses + openai.statuses).items())},
        },
    )


if __name__ == "__main__":
    main()
