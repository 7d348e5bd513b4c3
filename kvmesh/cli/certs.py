"""`kvmesh certs dev DIR`: a development CA and one key and certificate per mesh process, for the
mutual TLS of kvmesh/tls.py (`kvmesh up --tls-dir DIR` hands them out). Each certificate serves as
server and client (a service is both), for localhost, loopback and every --host."""

from __future__ import annotations

import datetime
import ipaddress
import os
from pathlib import Path

import typer
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from rich.console import Console
from rich.table import Table

from kvmesh.tls import CA

NAMES = ("gateway", "router", "kvindex", "planner", "worker", "rest", "redis", "client")
LOCAL_NAMES = ("localhost", "127.0.0.1", "::1")

app = typer.Typer(no_args_is_help=True, help="Certificates for mutual TLS between the mesh's processes.")
console = Console()


@app.command()
def dev(
    directory: Path = typer.Argument(..., help="where to write ca.crt, ca.key and <name>.crt/.key"),
    host: list[str] = typer.Option([], help="an address or DNS name peers dial, besides localhost (repeatable)"),
    days: int = typer.Option(365, min=1, help="validity of the CA and the certificates"),
    force: bool = typer.Option(False, help="overwrite the files of an earlier run"),
) -> None:
    """A dev CA and a key + certificate for each of: gateway, router, kvindex, planner, worker,
    rest, redis, client. Keys are readable by their owner only."""
    try:
        written = write_dev_certs(directory, host, days, force)
    except FileExistsError as e:
        console.print(f"[red]{e}[/]")
        raise typer.Exit(1) from None
    except ValueError as e:
        raise typer.BadParameter(str(e), param_hint="--host") from None
    table = Table("file", "for")
    for path, what in written:
        table.add_row(str(path), what)
    console.print(table)
    console.print(f"valid {days} days for {', '.join([*LOCAL_NAMES, *host])}; `kvmesh up --tls-dir {directory}`")


def write_dev_certs(directory: Path, hosts: list[str], days: int, force: bool) -> list[tuple[Path, str]]:
    """Writes the CA and every name's key and certificate; returns (file, what it is for)."""
    sans = [_san(h) for h in dict.fromkeys([*LOCAL_NAMES, *hosts])]
    targets = [directory / f"{n}.{ext}" for n in (CA, *NAMES) for ext in ("crt", "key")]
    existing = [p.name for p in targets if p.exists()]
    if existing and not force:
        raise FileExistsError(f"{directory} already holds {', '.join(existing)}: pass --force to replace them")
    directory.mkdir(parents=True, exist_ok=True)
    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "kvmesh dev CA")])
    ca_cert = (
        _builder(ca_name, ca_name, ca_key.public_key(), now, days)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(_key_usage(ca=True), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    written = _write(directory, CA, ca_key, ca_cert, "the CA every process trusts")
    authority = x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key())
    usage = x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH])
    for name in NAMES:
        key = ec.generate_private_key(ec.SECP256R1())
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"kvmesh {name}")])
        cert = (
            _builder(subject, ca_name, key.public_key(), now, days)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(_key_usage(ca=False), critical=True)
            .add_extension(usage, critical=False)
            .add_extension(x509.SubjectAlternativeName(sans), critical=False)
            .add_extension(authority, critical=False)
            .sign(ca_key, hashes.SHA256())
        )
        written += _write(directory, name, key, cert, f"{name}: server and client")
    return written


def _san(host: str) -> x509.GeneralName:
    try:
        return x509.IPAddress(ipaddress.ip_address(host))
    except ValueError:
        if not host or any(c.isspace() or c in "/:@" for c in host):
            raise ValueError(f"{host!r} is neither an IP address nor a DNS name") from None
        return x509.DNSName(host)


def _builder(subject: x509.Name, issuer: x509.Name, public_key, now: datetime.datetime, days: int):
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))  # a peer whose clock is a little behind
        .not_valid_after(now + datetime.timedelta(days=days))
    )


def _key_usage(ca: bool) -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=not ca, content_commitment=False, key_encipherment=False, data_encipherment=False,
        key_agreement=False, key_cert_sign=ca, crl_sign=ca, encipher_only=False, decipher_only=False,
    )  # fmt: skip


def _write(directory: Path, name: str, key, cert: x509.Certificate, what: str) -> list[tuple[Path, str]]:
    key_path, cert_path = directory / f"{name}.key", directory / f"{name}.crt"
    pem_key = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    key_path.unlink(missing_ok=True)  # a replaced key is created afresh, never left with older modes
    descriptor = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(descriptor, "wb") as out:
        out.write(pem_key)
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return [(cert_path, what), (key_path, f"{name}'s private key (owner only)")]
