"""Builds the REST front (services/rest/main.go + grpc-gateway handlers generated from protos/)
into build/bin/kvmesh-rest, and renders the OpenAPI 3 document of it.

    python scripts/build_rest.py            # the binary (setup does this)
    python scripts/build_rest.py --openapi  # also rewrite protos/openapi/kvmesh.v1.openapi.json

Everything comes from Debian (see docs/versions.md): Go 1.19 in GOPATH mode with the
packaged grpc-gateway 1.6.4, protoc-gen-go 1.3 and grpc-go; no module proxy is needed.
Swagger 2 from protoc-gen-swagger is merged into one document and converted to OpenAPI 3 with
npm's swagger2openapi.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PROTOS = ROOT / "protos"
BUILD = ROOT / "build" / "rest"
BINARY = ROOT / "build" / "bin" / "kvmesh-rest"
OPENAPI = PROTOS / "openapi" / "kvmesh.v1.openapi.json"
GOCODE = Path("/usr/share/gocode")
TOOLS = ["go", "protoc", "protoc-gen-go", "protoc-gen-grpc-gateway", "protoc-gen-swagger"]
# protoc 3.21's well-known types name APIv2 Go packages; the APIv1 stack here wants these.
WKT_GO_PACKAGES = {"wrappers": "github.com/golang/protobuf/ptypes/wrappers"}
DEBIAN_PACKAGES = (
    "golang-go protobuf-compiler golang-grpc-gateway golang-github-grpc-ecosystem-grpc-gateway-dev "
    "golang-goprotobuf-dev protoc-gen-go-1-3 golang-google-grpc-dev golang-google-genproto-dev"
)


def missing_tools() -> list[str]:
    return [t for t in TOOLS if shutil.which(t) is None]


def kvmesh_protos() -> list[Path]:
    return sorted((PROTOS / "kvmesh" / "v1").glob("*.proto"))


def _go_mappings() -> str:
    """Our protos carry no go_package (the Python stubs would change with it): map them here."""
    return ",".join(f"M{p.relative_to(PROTOS)}=kvmesh/v1" for p in kvmesh_protos())


def _patched_wkt(include: Path) -> None:
    system = Path("/usr/include/google/protobuf")
    for name, package in WKT_GO_PACKAGES.items():
        text = (system / f"{name}.proto").read_text()
        option = f'option go_package = "{package}";'
        lines = [option if ln.startswith("option go_package") else ln for ln in text.splitlines()]
        (include / "google" / "protobuf").mkdir(parents=True, exist_ok=True)
        (include / "google" / "protobuf" / f"{name}.proto").write_text("\n".join(lines) + "\n")


def _protoc(include: Path, *outputs: str) -> None:
    files = [str(p.relative_to(PROTOS)) for p in kvmesh_protos()]
    subprocess.run(["protoc", f"-I{include}", f"-I{PROTOS}", *outputs, *files], check=True, cwd=PROTOS)


def build_binary() -> Path:
    gopath = BUILD / "gopath"
    shutil.rmtree(gopath / "src" / "kvmesh", ignore_errors=True)
    (gopath / "src" / "kvmesh" / "rest").mkdir(parents=True)
    include = BUILD / "include"
    _patched_wkt(include)
    m = _go_mappings()
    _protoc(
        include,
        f"--go_out=plugins=grpc,paths=import,{m}:{gopath / 'src'}",
        f"--grpc-gateway_out=logtostderr=true,paths=import,{m}:{gopath / 'src'}",
    )
    shutil.copy(ROOT / "services" / "rest" / "main.go", gopath / "src" / "kvmesh" / "rest" / "main.go")
    env = {
        **os.environ,
        "GO111MODULE": "off",
        "GOPROXY": "off",
        "GOFLAGS": "",
        "GOPATH": f"{gopath}:{GOCODE}",
        "GOCACHE": str(BUILD / "gocache"),
        "CGO_ENABLED": "0",
    }
    BINARY.parent.mkdir(parents=True, exist_ok=True)
    subprocess.run(["go", "build", "-o", str(BINARY), "kvmesh/rest"], check=True, env=env, cwd=gopath)
    return BINARY


def render_openapi(out: Path) -> Path:
    """protoc-gen-swagger writes one Swagger 2 file per proto: merge them, convert to OpenAPI 3."""
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        include = work / "include"
        _patched_wkt(include)
        (work / "swagger").mkdir()
        _protoc(include, f"--swagger_out=logtostderr=true:{work / 'swagger'}")
        merged = merge_swagger([json.loads(p.read_text()) for p in sorted((work / "swagger").rglob("*.json"))])
        (work / "merged.json").write_text(json.dumps(merged, indent=2, sort_keys=True))
        converter = ROOT / "node_modules" / ".bin" / "swagger2openapi"
        subprocess.run([str(converter), "--outfile", str(work / "openapi.json"), str(work / "merged.json")], check=True)
        document = json.loads((work / "openapi.json").read_text())
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(document, indent=2, sort_keys=True) + "\n")
    return out


def merge_swagger(documents: list[dict]) -> dict:
    merged = {
        "swagger": "2.0",
        "info": {"title": "kvmesh REST API", "version": "v1", "description": "grpc-gateway over kvmesh.v1"},
        "consumes": ["application/json"],
        "produces": ["application/json"],
        "paths": {},
        "definitions": {},
    }
    for document in documents:
        for path, operations in document.get("paths", {}).items():
            merged["paths"].setdefault(path, {}).update(operations)
        merged["definitions"].update(document.get("definitions", {}))
    return merged


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--openapi", action="store_true", help=f"also rewrite {OPENAPI.relative_to(ROOT)}")
    args = parser.parse_args()
    if missing := missing_tools():
        print(f"REST front not built: {', '.join(missing)} missing (apt-get install {DEBIAN_PACKAGES})")
        return 1
    print(f"built {build_binary().relative_to(ROOT)}")
    if args.openapi:
        print(f"wrote {render_openapi(OPENAPI).relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
