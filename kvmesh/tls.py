"""Mutual TLS on the mesh's gRPC hops, from a process's --tls-cert/--tls-key/--tls-ca: each server
asks every caller for a certificate signed by the CA and each client shows its own, so a peer
without one (or with one from another CA) is refused before any RPC runs."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import grpc

CA = "ca"  # `kvmesh certs dev` writes <dir>/ca.crt, and <dir>/<name>.crt and .key for each name


class TlsSettings(Protocol):
    tls_cert: Path | None
    tls_key: Path | None
    tls_ca: Path | None


@dataclass(frozen=True)
class MutualTls:
    cert: Path
    key: Path
    ca: Path

    @classmethod
    def of(cls, settings: TlsSettings) -> MutualTls | None:
        """None when TLS is off (the settings check that the three files come together)."""
        if settings.tls_cert is None or settings.tls_key is None or settings.tls_ca is None:
            return None
        return cls(settings.tls_cert, settings.tls_key, settings.tls_ca)

    @classmethod
    def in_dir(cls, directory: Path, name: str) -> MutualTls:
        """`name`'s files in a `kvmesh certs dev` directory."""
        return cls(directory / f"{name}.crt", directory / f"{name}.key", directory / f"{CA}.crt")

    def flags(self, prefix: str = "--") -> list[str]:
        """The flags handing these files to a kvmesh service (or, with prefix "-", the REST front)."""
        return [f"{prefix}tls-cert={self.cert}", f"{prefix}tls-key={self.key}", f"{prefix}tls-ca={self.ca}"]

    def redis_options(self) -> dict[str, str]:
        """redis-py's options to show this certificate to a Redis over TLS and check Redis's."""
        return {"ssl_certfile": str(self.cert), "ssl_keyfile": str(self.key), "ssl_ca_certs": str(self.ca)}

    def server_credentials(self) -> grpc.ServerCredentials:
        return grpc.ssl_server_credentials(
            [(self.key.read_bytes(), self.cert.read_bytes())],
            root_certificates=self.ca.read_bytes(),
            require_client_auth=True,
        )

    def channel_credentials(self) -> grpc.ChannelCredentials:
        """Also what tritonclient takes (`creds=`) to reach a Triton started with this CA."""
        return grpc.ssl_channel_credentials(
            root_certificates=self.ca.read_bytes(),
            private_key=self.key.read_bytes(),
            certificate_chain=self.cert.read_bytes(),
        )


def blocking_channel(address: str, tls: MutualTls | None = None) -> grpc.Channel:
    """A synchronous channel (command-line tools, tests), with the client certificate when TLS is on."""
    return grpc.secure_channel(address, tls.channel_credentials()) if tls else grpc.insecure_channel(address)
