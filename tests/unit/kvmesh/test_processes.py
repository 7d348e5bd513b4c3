"""kvmesh.processes.terminate: SIGTERM first, SIGKILL only for a process that outlives the grace."""

import signal
import subprocess
import sys

from kvmesh.processes import terminate


def test_a_process_that_stops_on_sigterm_is_not_killed():
    process = subprocess.Popen(["sleep", "30"])
    terminate(process, grace_s=10)
    assert process.returncode == -signal.SIGTERM


def test_a_process_that_ignores_sigterm_is_killed_after_the_grace():
    ignores = (
        "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); print('ready', flush=True); time.sleep(30)"
    )
    process = subprocess.Popen([sys.executable, "-c", ignores], stdout=subprocess.PIPE, text=True)
    assert process.stdout.readline() == "ready\n"  # its handler is in place
    terminate(process, grace_s=0.2)
    assert process.returncode == -signal.SIGKILL


def test_a_process_already_gone_is_left_alone():
    process = subprocess.Popen(["true"])
    process.wait()
    terminate(process, grace_s=1)
    assert process.returncode == 0
