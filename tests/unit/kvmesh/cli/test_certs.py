"""`kvmesh certs dev`: every certificate chains to the CA, names localhost, loopback and each --host,
serves as server and client; keys are the owner's alone; an earlier run is kept unless --force."""

import ipaddress
import stat

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID
from typer.testing import CliRunner

from kvmesh.cli.app import app
from kvmesh.cli.certs import NAMES


def certs(directory, *args):
    return CliRunner().invoke(app, ["certs", "dev", str(directory), *args], env={"COLUMNS": "300"})


@pytest.fixture(scope="module")
def made(tmp_path_factory):
    directory = tmp_path_factory.mktemp("certs")
    result = certs(directory, "--host", "10.20.0.5", "--host", "node1.example", "--days", "30")
    assert result.exit_code == 0, result.output
    return directory


def load(directory, name) -> x509.Certificate:
    return x509.load_pem_x509_certificate((directory / f"{name}.crt").read_bytes())


@pytest.mark.parametrize("name", NAMES)
def test_each_certificate_chains_to_the_ca_for_server_and_client_use(made, name):
    ca, cert = load(made, "ca"), load(made, name)
    cert.verify_directly_issued_by(ca)  # raises if the signature or the issuer does not match
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    assert not cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    usage = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert set(usage) == {ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH}
    assert (cert.not_valid_after_utc - cert.not_valid_before_utc).days == 30


@pytest.mark.parametrize("name", NAMES)
def test_each_certificate_names_loopback_and_every_host(made, name):
    sans = load(made, name).extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert set(sans.get_values_for_type(x509.DNSName)) == {"localhost", "node1.example"}
    addresses = set(map(ipaddress.ip_address, ["127.0.0.1", "::1", "10.20.0.5"]))
    assert set(sans.get_values_for_type(x509.IPAddress)) == addresses


@pytest.mark.parametrize("name", ["ca", *NAMES])
def test_keys_are_readable_by_their_owner_only_and_match_their_certificate(made, name):
    path = made / f"{name}.key"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    assert key.public_key() == load(made, name).public_key()


def test_an_earlier_run_is_kept_unless_forced(tmp_path):
    assert certs(tmp_path).exit_code == 0
    ca = (tmp_path / "ca.crt").read_bytes()
    refused = certs(tmp_path)
    assert refused.exit_code == 1 and "--force" in refused.output
    assert (tmp_path / "ca.crt").read_bytes() == ca
    assert certs(tmp_path, "--force").exit_code == 0
    assert (tmp_path / "ca.crt").read_bytes() != ca
    assert stat.S_IMODE((tmp_path / "ca.key").stat().st_mode) == 0o600


def test_a_host_that_is_no_name_is_refused(tmp_path):
    result = certs(tmp_path, "--host", "http://10.0.0.1")
    assert result.exit_code != 0 and "neither an IP address nor a DNS name" in result.output
    assert not list(tmp_path.iterdir())
