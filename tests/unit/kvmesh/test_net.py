import pytest

from kvmesh.net import free_ports, hostport, interface_of, is_loopback


def test_free_ports_are_distinct_and_never_an_avoided_one():
    # Ports just released are the kernel's to hand out again (a few of 300 come back here): the
    # mesh's services may not have bound theirs yet when a worker picks ports for its Triton.
    released = free_ports(300)
    picked = free_ports(300, avoid=set(released))
    assert len(set(picked)) == 300
    assert not set(picked) & set(released)


@pytest.mark.parametrize(
    "host, loopback", [("127.0.0.1", True), ("127.0.0.2", True), ("::1", True), ("localhost", True),
                       ("10.213.47.11", False), ("fd00::2", False), ("worker-1.kvmesh", False)],
)  # fmt: skip
def test_loopback_is_told_by_address(host, loopback):
    assert is_loopback(host) is loopback


def test_an_ipv6_address_is_bracketed_before_its_port():
    assert (hostport("10.0.0.1", 80), hostport("::1", 80), hostport("[::1]", 80)) == ("10.0.0.1:80", "[::1]:80",
                                                                                         "[::1]:80")  # fmt: skip


def test_the_interface_of_an_address_is_the_one_holding_it():
    assert interface_of("127.0.0.1") == "lo"
    assert interface_of("10.213.47.254") is None  # on no interface of the test's host
