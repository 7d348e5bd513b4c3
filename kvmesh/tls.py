"""TLS from a process's --tls-cert/--tls-key/--tls-ca.

MutualTls: the mesh's gRPC hops; each server asks every caller for a certificate signed by the CA
and each client shows its own, so a peer without one (or with one from another CA) is refused
before any RPC runs.

FrontTls: the gateway's client-facing ports (OpenAI HTTP through uvicorn, gRPC). A client needs a
certificate only when asked to (`require_client_cert`). The certificate and key are re-read when
their files change or after SIGHUP (`install_sighup`), for new handshakes; connections already
open keep the certificate they began with. A pair that does not load (a key that does not match,
a file half written) is logged and the previous one kept."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import ssl
import weakref
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import grpc

if TYPE_CHECKING:
    import uvicorn

log = logging.getLogger(__name__)

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

    def client_ssl_context(self) -> ssl.SSLContext:
        """For an HTTPS client (httpx's verify=) of a front that asks for a certificate of the mesh's
        CA (the gateway's HTTP port with --tls-ca and auth off): trusts the CA and shows this one."""
        context = trusting(self.ca)
        context.load_cert_chain(self.cert, self.key)
        return context

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


# Every FrontTls made, so that one SIGHUP handler reaches them all.
_FRONTS: weakref.WeakSet[FrontTls] = weakref.WeakSet()


@dataclass(eq=False)
class FrontTls:
    cert: Path
    key: Path
    ca: Path | None = None
    require_client_cert: bool = False
    _generation: int = field(default=0, init=False)  # SIGHUPs seen: each consumer reloads when it moved
    _sighup: asyncio.Event = field(default_factory=asyncio.Event, init=False)

    def __post_init__(self) -> None:
        if self.require_client_cert and self.ca is None:
            raise ValueError("tls: requiring a client certificate needs --tls-ca, the CA that signs them")
        _FRONTS.add(self)

    @classmethod
    def of(cls, settings: TlsSettings, api_keys: bool) -> FrontTls | None:
        """None without --tls-cert/--tls-key. With --tls-ca as well, clients must show a certificate
        of that CA unless API keys (`api_keys`) identify them instead."""
        if settings.tls_cert is None or settings.tls_key is None:
            return None
        return cls(settings.tls_cert, settings.tls_key, settings.tls_ca, settings.tls_ca is not None and not api_keys)

    def grpc_credentials(self) -> grpc.ServerCredentials:
        """For grpc_server.serve(credentials=...). gRPC asks the fetcher at every new connection:
        it answers None (keep the certificate) unless the files or SIGHUP say otherwise."""
        loaded = _Loaded.now(self)
        initial = self._grpc_configuration(_read_pair(self.cert, self.key))

        def fetch() -> grpc.ServerCertificateConfiguration | None:
            pair = loaded.refresh(self)
            return self._grpc_configuration(pair) if pair else None

        return grpc.dynamic_ssl_server_credentials(
            initial, fetch, require_client_authentication=self.require_client_cert
        )

    def uvicorn_kwargs(self) -> dict[str, Any]:
        """For uvicorn.Config(...): uvicorn builds its SSLContext from these when it starts serving."""
        return {
            "ssl_certfile": str(self.cert),
            "ssl_keyfile": str(self.key),
            "ssl_cert_reqs": ssl.CERT_REQUIRED if self.require_client_cert else ssl.CERT_NONE,
            "ssl_ca_certs": str(self.ca) if self.require_client_cert else None,
        }

    async def watch(self, config: uvicorn.Config, poll_s: float = 1.0) -> None:
        """Runs until cancelled: loads a changed certificate into the SSLContext uvicorn built from
        uvicorn_kwargs() (config.ssl, there once the server started), at once after SIGHUP and
        within `poll_s` of a file change. Later handshakes use it; loading happens on the loop,
        where uvicorn makes its connections."""
        loaded = _Loaded.now(self)
        while True:
            self._sighup.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._sighup.wait(), poll_s)
            context: ssl.SSLContext | None = getattr(config, "ssl", None)
            if context is None:  # not started yet: it will load the files as they are then
                loaded = _Loaded.now(self)
                continue
            pair = loaded.refresh(self)
            if pair:
                _load_into(context, pair)
                log.info("front TLS: %s reloaded for new HTTPS connections", self.cert)

    def reload(self) -> None:
        """What SIGHUP does: every consumer re-reads the files, changed or not."""
        self._generation += 1
        self._sighup.set()

    def _grpc_configuration(self, pair: tuple[bytes, bytes]) -> grpc.ServerCertificateConfiguration:
        cert, key = pair
        roots = self.ca.read_bytes() if self.require_client_cert and self.ca else None
        return grpc.ssl_server_certificate_configuration([(key, cert)], root_certificates=roots)


def install_sighup() -> None:
    """On the running loop: SIGHUP reloads every FrontTls. Refuses to replace a SIGHUP handler
    someone else installed (a second call on the same loop is a no-op)."""
    global _sighup_loop
    loop = asyncio.get_running_loop()
    if _sighup_loop is not None and _sighup_loop() is loop:
        return
    current = signal.getsignal(signal.SIGHUP)
    if current not in (signal.SIG_DFL, signal.SIG_IGN, None):
        raise RuntimeError(f"SIGHUP already has a handler ({current!r}); front TLS would replace it")
    loop.add_signal_handler(signal.SIGHUP, _reload_all)
    _sighup_loop = weakref.ref(loop)


def uninstall_sighup() -> None:
    """Undoes install_sighup on the running loop (SIGHUP's default again)."""
    global _sighup_loop
    loop = asyncio.get_running_loop()
    if _sighup_loop is not None and _sighup_loop() is loop:
        loop.remove_signal_handler(signal.SIGHUP)
        _sighup_loop = None


_sighup_loop: weakref.ref[asyncio.AbstractEventLoop] | None = None


def _reload_all() -> None:
    log.info("SIGHUP: reloading the front's TLS certificates")
    for front in list(_FRONTS):
        front.reload()


Stamp = tuple[tuple[int, int, int], tuple[int, int, int]]


@dataclass
class _Loaded:
    """What one consumer (gRPC's fetcher, uvicorn's context) has loaded: the files' identity and
    the SIGHUP count at that time."""

    stamp: Stamp
    generation: int
    failed: Stamp | None = None  # a pair that would not load, logged once

    @classmethod
    def now(cls, front: FrontTls) -> _Loaded:
        return cls(_stamp(front), front._generation)

    def refresh(self, front: FrontTls) -> tuple[bytes, bytes] | None:
        """The new (cert, key) when the files changed or SIGHUP came since the last load, else None."""
        stamp = _stamp(front)
        if stamp == self.stamp and front._generation == self.generation:
            return None
        try:
            pair = _read_pair(front.cert, front.key)
        except (OSError, ssl.SSLError) as e:
            if stamp != self.failed:
                log.warning("front TLS: keeping the current certificate: %s / %s do not load: %s",
                            front.cert, front.key, e)  # fmt: skip
                self.failed = stamp
            return None
        self.stamp, self.generation, self.failed = stamp, front._generation, None
        return pair


def _stamp(front: FrontTls) -> Stamp:
    """Changes when a file is rewritten or replaced (a new inode, as certificate tools rename)."""

    def one(path: Path) -> tuple[int, int, int]:
        try:
            st = path.stat()
        except OSError:  # being replaced: try again at the next look
            return (0, 0, 0)
        return (st.st_ino, st.st_mtime_ns, st.st_size)

    return one(front.cert), one(front.key)


def _read_pair(cert: Path, key: Path) -> tuple[bytes, bytes]:
    """The files' bytes, once each, checked to be a certificate and its key (ssl.SSLError if not)."""
    pair = cert.read_bytes(), key.read_bytes()
    _load_into(ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER), pair)
    return pair


def _load_into(context: ssl.SSLContext, pair: tuple[bytes, bytes]) -> None:
    """load_cert_chain takes only paths: these exact bytes go through an in-memory file, never the
    disk, and a pair already checked cannot fail half way on the live context (which would leave it
    without a certificate)."""
    descriptor = os.memfd_create("kvmesh-front-tls")
    try:
        os.write(descriptor, pair[0] + b"\n" + pair[1])
        context.load_cert_chain(f"/proc/self/fd/{descriptor}")
    finally:
        os.close(descriptor)


def trusting(ca: Path) -> ssl.SSLContext:
    """For an HTTPS client of a front (httpx's verify=): trusts the certificates `ca` signed."""
    return ssl.create_default_context(cafile=str(ca))
