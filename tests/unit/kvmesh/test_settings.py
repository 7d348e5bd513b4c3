"""The settings every process shares: the address it binds and the one it advertises (a wildcard
needs the latter); TLS's three files together or none, each a real file, and kvmesh.tls turning
them into credentials (None when TLS is off)."""

import pytest

from kvmesh.settings import CommonSettings, load
from kvmesh.tls import MutualTls
from tests.support.certs import ours_and_another_ca


@pytest.fixture(scope="module")
def certs(tmp_path_factory):
    return ours_and_another_ca(tmp_path_factory)[0]


def flags(directory, name="router") -> list[str]:
    return MutualTls.in_dir(directory, name).flags()


def test_the_three_files_make_mutual_tls(certs):
    settings = load(CommonSettings, flags(certs))
    assert MutualTls.of(settings) == MutualTls.in_dir(certs, "router")
    assert MutualTls.of(settings).server_credentials() is not None


def test_without_them_tls_is_off():
    assert MutualTls.of(load(CommonSettings, [])) is None


@pytest.mark.parametrize("dropped", [0, 1, 2])
def test_one_file_missing_is_refused_naming_it(certs, dropped):
    given = flags(certs)
    missing = given.pop(dropped).split("=")[0]
    with pytest.raises(SystemExit, match=f"missing {missing}"):
        load(CommonSettings, given)


def test_a_file_that_is_not_there_is_refused(certs):
    given = [*flags(certs)[:2], f"--tls-ca={certs / 'nope.crt'}"]
    with pytest.raises(SystemExit, match="tls_ca: .*nope.crt is not a file"):
        load(CommonSettings, given)


def test_the_advertised_address_defaults_to_the_bound_one():
    settings = load(CommonSettings, ["--host", "10.213.47.11"])
    assert (settings.advertise_host, settings.local_host) == ("10.213.47.11", "10.213.47.11")


@pytest.mark.parametrize("wildcard", ["0.0.0.0", "::"])
def test_a_wildcard_host_needs_an_advertised_address_and_binds_one_address_things_there(wildcard):
    with pytest.raises(SystemExit, match="advertise_host: --host .* listens on every interface"):
        load(CommonSettings, ["--host", wildcard])
    settings = load(CommonSettings, ["--host", wildcard, "--advertise-host", "10.213.47.11"])
    assert (settings.advertise_host, settings.local_host) == ("10.213.47.11", "10.213.47.11")


def test_an_advertised_wildcard_is_refused():
    with pytest.raises(SystemExit, match="advertise_host: 0.0.0.0 is a wildcard"):
        load(CommonSettings, ["--advertise-host", "0.0.0.0"])


@pytest.mark.parametrize(
    "flags, enabled",
    [
        ([], False),  # loopback: a developer's machine
        (["--host", "::1"], False),
        (["--host", "10.1.2.3"], True),  # reachable from elsewhere: keys by default
        (["--host", "0.0.0.0", "--advertise-host", "10.1.2.3"], True),
        (["--auth", "on"], True),
        (["--host", "10.1.2.3", "--auth", "off"], False),
    ],
)
def test_auth_is_on_by_default_off_loopback(flags, enabled):
    assert load(CommonSettings, flags).auth_enabled is enabled


def test_an_unknown_auth_mode_is_refused():
    with pytest.raises(SystemExit, match="auth"):
        load(CommonSettings, ["--auth", "maybe"])
