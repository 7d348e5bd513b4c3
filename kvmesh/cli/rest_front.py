"""The REST front's binary (built by scripts/build_rest.py from Debian's Go and grpc-gateway) and
the OpenAPI document it serves at /openapi.json."""

from __future__ import annotations

import shutil
from pathlib import Path

from kvmesh.tls import MutualTls

ROOT = Path(__file__).resolve().parents[2]
BINARY = ROOT / "build" / "bin" / "kvmesh-rest"
OPENAPI = ROOT / "protos" / "openapi" / "kvmesh.v1.openapi.json"


def unavailable_reason() -> str | None:
    """Why REST cannot start here, or None."""
    if BINARY.exists():
        return None
    if shutil.which("go") is None:
        return "Go is not installed (`make setup` installs it from Debian)"
    return f"{BINARY.relative_to(ROOT)} is not built (`.venv/bin/python scripts/build_rest.py`)"


def argv(
    listen: str,
    gateway: str,
    router: str,
    kvindex: str,
    planner: str = "",
    tls: MutualTls | None = None,
    expose_internal: bool = False,
) -> list[str]:
    """With `tls`, the front dials the services with that client certificate and serves HTTPS with
    it. `expose_internal`: the router's, kvindex's and planner's routes too (else they answer 404)."""
    return [
        str(BINARY),
        f"--listen={listen}",
        f"--gateway={gateway}",
        f"--router={router}",
        f"--kvindex={kvindex}",
        f"--planner={planner}",
        f"--openapi={OPENAPI}",
        *(tls.flags(prefix="-") if tls else []),
        *(["-expose-internal"] if expose_internal else []),
    ]
