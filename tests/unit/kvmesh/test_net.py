from kvmesh.net import free_ports


def test_free_ports_are_distinct_and_never_an_avoided_one():
    # Ports just released are the kernel's to hand out again (a few of 300 come back here): the
    # mesh's services may not have bound theirs yet when a worker picks ports for its Triton.
    released = free_ports(300)
    picked = free_ports(300, avoid=set(released))
    assert len(set(picked)) == 300
    assert not set(picked) & set(released)
