"""Certificates for the mutual-TLS tests: the mesh's CA and another CA, whose certificates the mesh
must refuse (`kvmesh certs dev` each)."""

from __future__ import annotations

from pathlib import Path

from kvmesh.cli.certs import write_dev_certs


def ours_and_another_ca(tmp_path_factory) -> tuple[Path, Path]:
    ours, theirs = tmp_path_factory.mktemp("certs"), tmp_path_factory.mktemp("other-ca")
    write_dev_certs(ours, [], 1, force=False)
    write_dev_certs(theirs, [], 1, force=False)
    return ours, theirs
