"""`kvmesh up` as the tests and benchmarks start it (kvmesh/cli/local_mesh.py): it stops everything
on SIGINT even when its launcher ran it with SIGINT ignored, as a shell does for `kvmesh up &` in a
script (Python then installs no KeyboardInterrupt handler); and a mesh started in a directory that
holds an earlier mesh's logs reads only its own (the benchmarks reuse their directories and count
events in the logs, and must not count an earlier run's).
One mesh for both."""

import signal

import psutil

from kvmesh.cli.local_mesh import LocalMesh


def test_sigint_stops_a_mesh_started_with_sigint_ignored_and_its_logs_are_its_own(tmp_path):
    stale = "prefill: 1 → 5: started w-pstale0 (an earlier run)"
    (tmp_path / "gateway.log").write_text(stale + "\n")
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)  # the child inherits it
    try:
        mesh = LocalMesh.start(tmp_path, extra_args=("--engine", "sim"), ready_timeout_s=300)
    finally:
        signal.signal(signal.SIGINT, previous)
    gateway_log = mesh.log("gateway")
    assert gateway_log and stale not in gateway_log
    services = psutil.Process(mesh.process.pid).children(recursive=True)
    assert any("services.worker" in " ".join(p.cmdline()) for p in services)
    assert mesh.stop(timeout_s=60) == 0, mesh.log("up")
    left = [p for p in services if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
    assert not left, [p.cmdline() for p in left]
